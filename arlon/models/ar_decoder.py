"""The AR transformer's inference path: `ARTransformer.forward_embeddings` with a KV cache, the
same arithmetic in fewer operations.

At batch 2 (a video and its null prompt) a code's step reads the AR's 20 MB of weights and does
little arithmetic with them: its time goes to memory traffic and to the dispatch of each small
operation (docs/RESULTS.md, "AR: sampling speed"). `ARDecoder` drops the operations that do no
arithmetic the model needs: the rotary tables are built once for every position (the model builds
them at each call), and the sign of rotate-half is folded into them and q and k turn together.
Every matmul, norm and attention (`cached_attention`) keeps the model's shapes and kernels, so the
results are bitwise the model's: `ARSampler(fast=False)` is the reference path, and both draw the
same codes (tested, and checked by `arlon bench` on every run).

    decoder = ARDecoder(ar)
    logits = decoder(x, cache, cache.length)        # x (B, N, C) at positions start.. -> (B, K)
    logits = decoder(x, cache, cache.length, every=True)                              # (B, N, K)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arlon.models.ar_transformer import ARTransformer, KVCache, cached_attention
from arlon.models.layers import rope_tables


class ARDecoder:
    """Inference-only forward of an `ARTransformer`, on its weights (transposed views)."""

    def __init__(self, model: ARTransformer):
        cfg = model.config
        self.model = model
        self.heads, self.head_dim = cfg.num_heads, model.head_dim
        with torch.no_grad():
            self.layers = [
                (
                    block.attn_norm,
                    block.attn.qkv.weight.t(),
                    block.attn.proj.weight.t(),
                    block.mlp_norm,
                    block.mlp.gate.weight.t(),
                    block.mlp.up.weight.t(),
                    block.mlp.down.weight.t(),
                )
                for block in model.blocks
            ]
            positions = torch.arange(model.context_length, device=model.bos.device)
            cos, sin = rope_tables(positions, self.head_dim, cfg.rope_theta)
            # x * cos + rotate_half(x) * sin, with rotate_half's sign folded into sin
            self.half = self.head_dim // 2
            self.cos = cos.to(model.bos.dtype)
            self.sin = torch.cat([-sin[:, : self.half], sin[:, self.half :]], 1).to(self.cos.dtype)

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,
        cache: KVCache,
        start: int,
        every: bool = False,
        by_level: bool = False,
    ) -> torch.Tensor:
        """Embeddings `(B, N, C)` at positions `start..start+N-1`, appended to `cache` (whose
        `length` must be `start`) -> the logits of the last position `(B, K)`, or of every
        position `(B, N, K)` (`by_level`: a by-level head's, `sum(levels)` of them, see `FSQHead`)."""
        self.model.check_positions(cache, start, x.shape[1])
        b, n, c = x.shape
        h, d, half = self.heads, self.head_dim, self.half
        end = start + n
        cos, sin = self.cos[start:end, None, None], self.sin[start:end, None, None]
        for layer, (norm1, qkv_w, proj_w, norm2, gate_w, up_w, down_w) in enumerate(self.layers):
            qkv = (norm1(x) @ qkv_w).view(b, n, 3, h, d)
            qk = qkv[:, :, :2]  # (B, N, 2, H, D)
            qk = qk * cos + qk.roll(half, -1) * sin
            cache.keys[layer, :, :, start:end] = qk[:, :, 1].transpose(1, 2)
            cache.values[layer, :, :, start:end] = qkv[:, :, 2].transpose(1, 2)
            out = cached_attention(qk[:, :, 0].transpose(1, 2), cache, layer, start)
            x = x + out.transpose(1, 2).reshape(b, n, c) @ proj_w
            hidden = norm2(x)
            x = x + (F.silu(hidden @ gate_w) * (hidden @ up_w)) @ down_w
        cache.length = end
        if not every:  # as the model's forward with `last`: the head on the last position only
            return self.model.logits(x[:, -1:], by_level, decoding=True)[:, 0]
        return self.model.logits(x, by_level, decoding=True)

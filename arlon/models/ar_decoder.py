"""The AR transformer's inference path: the arithmetic of `ARTransformer.forward_embeddings` with a
KV cache, in fewer operations.

At batch 2 (a video and its null prompt) a code's step reads the AR's 20 MB of weights and does
little arithmetic with them: its time goes to memory traffic and to the dispatch of each small
operation (docs/RESULTS.md, "AR: sampling speed"). `ARDecoder` cuts the operations: SwiGLU's gate
and up are one matmul; RMSNorm is six element-wise operations with its weight pre-scaled; the
residual additions ride on the matmuls (`addmm`); attention's 1/sqrt(head_dim) rides on the query
weights; the rotary tables are built once, the sign of rotate-half folded into them; and only the
last position goes through the output head. It writes
into the same `KVCache` as the model: `ARSampler(fast=False)` is the reference path, and both draw
the same codes (tested, and checked by `arlon bench` on every run).

    decoder = ARDecoder(ar)
    logits = decoder(x, cache, cache.length)        # x (B, N, C) at positions start.. -> (B, K)
"""

from __future__ import annotations

import torch

from arlon.models.ar_transformer import ARTransformer, KVCache
from arlon.models.layers import rope_tables


def _scaled_queries(qkv: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The fused projection `(3C, C)` with its query rows times attention's 1 / sqrt(head_dim):
    exact when head_dim is a power of 4 (64: times 1/8), as scaling the scores after would be."""
    scale = torch.ones(qkv.shape[0], 1, dtype=qkv.dtype, device=qkv.device)
    scale[: qkv.shape[0] // 3] = head_dim**-0.5
    return qkv * scale


class ARDecoder:
    """Inference-only forward of an `ARTransformer` (its weights are shared, not copied, except the
    fused projections)."""

    def __init__(self, model: ARTransformer):
        cfg = model.config
        self.model = model
        self.heads, self.head_dim = cfg.num_heads, model.head_dim
        self.norm_eps = cfg.hidden_size * cfg.norm_eps
        root = cfg.hidden_size**0.5
        with torch.no_grad():
            self.layers = [
                (
                    block.attn_norm.weight * root,
                    _scaled_queries(block.attn.qkv.weight, self.head_dim).t(),  # (C, 3C)
                    block.attn.proj.weight.t(),
                    block.mlp_norm.weight * root,
                    torch.cat([block.mlp.gate.weight, block.mlp.up.weight]).t().contiguous(),
                    block.mlp.down.weight.t(),
                )
                for block in model.blocks
            ]
            self.norm_out = model.norm_out.weight * root
            self.head = model.head.weight.t()
            self.inner = model.blocks[0].mlp.down.weight.shape[1]
            positions = torch.arange(model.context_length, device=model.bos.device)
            cos, sin = rope_tables(positions, self.head_dim, cfg.rope_theta)
            # x * cos + rotate_half(x) * sin, with rotate_half's sign folded into sin
            self.half = self.head_dim // 2
            self.cos = cos.to(model.bos.dtype)
            self.sin = torch.cat([-sin[:, : self.half], sin[:, self.half :]], 1).to(cos.dtype)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, as x * rsqrt(sum(x^2) + C * eps) * (weight *
        sqrt(C)) (`weight` comes scaled)."""
        return x * x.square().sum(-1, keepdim=True).add_(self.norm_eps).rsqrt_() * weight

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        """Embeddings `(B, N, C)` at positions `start..start+N-1`, appended to `cache` (whose
        `length` is `start`) -> the logits of the last position `(B, K)`."""
        b, n, c = x.shape
        h, d, half = self.heads, self.head_dim, self.half
        end = start + n
        cos, sin = self.cos[start:end], self.sin[start:end]  # (N, D)
        mask = None
        if n > 1:  # query i sits at position start + i and sees every key up to there
            mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(start)
        x = x.reshape(b * n, c)
        for layer, (norm1, qkv_w, proj_w, norm2, gate_up_w, down_w) in enumerate(self.layers):
            qkv = (self._norm(x, norm1) @ qkv_w).view(b, n, 3, h, d)
            qk = qkv[:, :, :2]  # (B, N, 2, H, D)
            rotated = qk.roll(half, -1)  # rotate-half, its sign folded into `sin`
            qk = qk * cos[:, None, None] + rotated * sin[:, None, None]
            keys, values = cache.keys[layer], cache.values[layer]  # (B, H, capacity, D)
            keys[:, :, start:end] = qk[:, :, 1].transpose(1, 2)
            values[:, :, start:end] = qkv[:, :, 2].transpose(1, 2)
            q = qk[:, :, 0].transpose(1, 2)  # (B, H, N, D)
            k, v = keys[:, :, :end], values[:, :, :end]
            if n == 1:  # (B, H, 1, D): laid out as (B, C) already
                out = ((q @ k.transpose(2, 3)).softmax(-1) @ v).view(b, c)
            else:  # the queries come scaled by 1 / sqrt(D): scale 1 here
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, scale=1.0
                )
                out = out.transpose(1, 2).reshape(b * n, c)
            x = torch.addmm(x, out, proj_w)
            gate, up = (self._norm(x, norm2) @ gate_up_w).split(self.inner, dim=-1)
            x = torch.addmm(x, torch.nn.functional.silu(gate).mul_(up), down_w)
        cache.length = end
        return self._norm(x.view(b, n, c)[:, -1], self.norm_out) @ self.head

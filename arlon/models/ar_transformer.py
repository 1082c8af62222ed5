"""The autoregressive transformer: fine VQ codes of a whole video, one token frame after another.

A Llama-style causal decoder (pre-RMSNorm, rotary positions, SwiGLU; attention by
`scaled_dot_product_attention` in training, `cached_attention` over the KV cache in generation)
over one sequence per video window:

    [text prefix: P projected text states] [BOS] [frame 0: h*w codes] [frame 1: h*w codes] ...

A token frame is the fine VQ-VAE's code grid for r_t latent frames, flattened in (h, w) raster order,
so the whole sequence is the paper's (t, h, w) raster of codes. Every code token also gets a learned
embedding of its (h, w) cell and of its phase in the VQ-VAE's window (the VQ-VAE codes windows of
`code_window` token frames independently, so a code depends on where in its window it sits).

The prefix always has `max_text_tokens` positions: text states are truncated or padded with a learned
pad vector, so positions never depend on the batch, and the null prompt of classifier-free guidance is
the prefix of pads alone. There is no EOS: a video ends at the length the user asks for.

Training windows hold up to `max_frames` token frames; generation keeps at most that many in its
context and slides (`arlon.models.ar_sampler`), so a video has no length limit and the KV cache, sized
once, never grows.

    ar = ar_transformer("shapes-tiny")
    logits = ar(text_states, text_mask, codes)      # codes (B, t, h, w) -> logits (B, t*h*w, K)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from arlon.errors import ArlonError
from arlon.models.fsq import FSQEmbedding, FSQHead
from arlon.models.layers import apply_rope, rope_tables
from arlon.utils import settings_for

# ------------------------------------------------------------------------------------------------
# The KV cache
# ------------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Keys and values of every layer, allocated once: `(layers, B, heads, capacity, head_dim)`;
    the first `length` positions are filled."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions (their keys and values depend on nothing after them)."""
        if not 0 <= length <= self.length:
            raise ArlonError(f"cannot keep {length} positions of a cache that holds {self.length}")
        self.length = length

    def slide(self, start: int, drop: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Drop the `drop` positions from `start` on: the positions after them move `drop` places
        earlier, their keys turned back by as many rotary positions (`cos`, `sin` `(head_dim,)` of
        position -drop), in float32, the values unchanged: queries then see the moved keys at the
        distances a refill would put them at."""
        if not 0 <= start <= start + drop <= self.length:
            raise ArlonError(f"cannot drop {drop} positions from {start} of {self.length}")
        kept, end = slice(start + drop, self.length), self.length - drop
        for keys, values in zip(self.keys, self.values, strict=True):  # a layer at a time
            keys[:, :, start:end] = apply_rope(keys[:, :, kept].float(), cos, sin)
            values[:, :, start:end] = values[:, :, kept].clone()
        self.length = end


def cached_attention(q: torch.Tensor, cache: KVCache, layer: int, start: int) -> torch.Tensor:
    """Queries `(B, H, N, D)` at positions `start..start+N-1` over layer `layer`'s cached keys and
    values (theirs written already) -> `(B, H, N, D)`.

    In bfloat16 every query attends over the whole cache, the positions after its own masked, in
    plain matmuls and a float32 softmax: a query's arithmetic is then the same whether it comes
    alone or with others, so a forward of many positions gives each the logits one position at a
    time would, bitwise, and Jacobi decoding draws the codes of one-by-one decoding
    (`scaled_dot_product_attention`'s kernel changes with the number of queries; so do the matmuls
    where the CPU has no bf16 instructions of its own and oneDNN emulates them). In float32 a
    matmul of one or two rows rounds apart from one of many anyway (the projections' too), so
    there the fused kernel, about twice as fast, attends over the filled positions."""
    keys, values = cache.keys[layer], cache.values[layer]  # (B, H, capacity, D)
    b, h, n, d = q.shape
    if q.dtype != torch.bfloat16:
        # query i sits at position start + i and sees every key up to there
        end = start + n
        mask = None if n == 1 else torch.ones(n, end, dtype=torch.bool, device=q.device).tril(start)
        return F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], mask)
    hidden = _hidden_keys(n, start, keys.shape[2], q.dtype, q.device)  # (N, capacity): 0 or -inf
    scores = torch.baddbmm(  # (B * H, N, capacity), the mask added in the matmul
        hidden.expand(b * h, -1, -1),
        q.flatten(0, 1),
        keys.flatten(0, 1).transpose(-1, -2),
        alpha=d**-0.5,
    )
    weights = scores.softmax(-1, dtype=torch.float32).to(values.dtype)
    return (weights @ values.flatten(0, 1)).view(b, h, n, d)


@functools.lru_cache(maxsize=4)  # a forward's layers share it
def _hidden_keys(
    n: int, start: int, length: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """`(N, length)`: -inf where query i, at position start + i, must not see key j (j after it)."""
    return torch.full((n, length), -torch.inf, dtype=dtype, device=device).triu_(start + 1)


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, heads, N, head_dim)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            cache.keys[layer, :, :, start : start + n] = k
            cache.values[layer, :, :, start : start + n] = v
            out = cached_attention(q, cache, layer, start)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)


class SwiGLU(nn.Module):
    """Shazeer 2020 (arxiv.org/abs/2002.05202), with Llama's hidden width of 8/3 of the model's."""

    def __init__(self, hidden_size: int):
        super().__init__()
        inner = 32 * math.ceil(8 * hidden_size / 3 / 32)
        self.gate = nn.Linear(hidden_size, inner, bias=False)
        self.up = nn.Linear(hidden_size, inner, bias=False)
        self.down = nn.Linear(inner, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.attn = Attention(hidden_size, num_heads)
        self.mlp_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.mlp = SwiGLU(hidden_size)
        self.dropout = nn.Dropout(dropout)  # on each residual branch, in training only

    def forward(self, x, cos, sin, cache, layer):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


# ------------------------------------------------------------------------------------------------
# The AR transformer
# ------------------------------------------------------------------------------------------------


class ARTransformer(ModelMixin, ConfigMixin):
    """Next-code prediction over `[text prefix][BOS][token frames]`.

    `codebook_size` K and the token grid `frame_height` x `frame_width` come from the fine VQ-VAE;
    `text_dim` from the text encoder; `max_frames` is the context (and training window) in token
    frames; `dropout` is on each block's residual branches, in training only. With `code_levels`,
    the levels of an FSQ codebook, codes are embedded and predicted dimension by dimension
    (`FSQEmbedding`, `FSQHead`) instead of as K unrelated symbols; `code_head` "levels+joint" adds a
    logit per code to the head's.
    """

    _no_split_modules = ["DecoderBlock"]  # FSDP wrapping units (read by accelerate)

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 1024,
        frame_height: int = 8,
        frame_width: int = 8,
        code_window: int = 9,
        text_dim: int = 384,
        max_text_tokens: int = 32,
        max_frames: int = 6,
        hidden_size: int = 256,
        num_layers: int = 6,
        num_heads: int = 4,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        code_levels: list[int] | None = None,
        code_head: str = "levels",
    ):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ArlonError(f"dropout must lie in [0, 1), got {dropout}")
        if code_levels is not None and math.prod(code_levels) != codebook_size:
            raise ArlonError(
                f"code_levels {list(code_levels)} multiply to {math.prod(code_levels)}, "
                f"not the codebook size {codebook_size}"
            )
        if code_head not in ("levels", "levels+joint"):
            raise ArlonError(f"code_head is 'levels' or 'levels+joint', got {code_head!r}")
        if code_head != "levels" and code_levels is None:
            raise ArlonError(f"code_head {code_head!r} needs code_levels, an FSQ codebook's levels")
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ArlonError(
                f"hidden_size {hidden_size} must split into {num_heads} heads of even width"
            )
        self.codebook_size = codebook_size
        self.tokens_per_frame = frame_height * frame_width
        self.head_dim = hidden_size // num_heads
        self.text_embedder = nn.Linear(text_dim, hidden_size)
        self.text_pad = nn.Parameter(torch.zeros(hidden_size))
        self.bos = nn.Parameter(torch.zeros(hidden_size))
        if code_levels is None:
            self.code_embedder = nn.Embedding(codebook_size, hidden_size)
        else:
            self.code_embedder = FSQEmbedding(list(code_levels), hidden_size)
        self.cell_embedder = nn.Embedding(self.tokens_per_frame, hidden_size)
        self.phase_embedder = nn.Embedding(code_window, hidden_size)
        self.blocks = nn.ModuleList(
            DecoderBlock(hidden_size, num_heads, norm_eps, dropout) for _ in range(num_layers)
        )
        self.norm_out = nn.RMSNorm(hidden_size, eps=norm_eps)
        if code_levels is None:
            self.head = nn.Linear(hidden_size, codebook_size, bias=False)
        else:
            self.head = FSQHead(hidden_size, list(code_levels), joint=code_head == "levels+joint")
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding | FSQEmbedding):
            nn.init.normal_(module.weight, std=0.02)

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def prefix_length(self) -> int:
        """Text positions plus BOS: where the first code sits."""
        return self.config.max_text_tokens + 1

    @property
    def context_length(self) -> int:
        return self.prefix_length + self.config.max_frames * self.tokens_per_frame

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for the whole context (what generation holds in memory)."""
        cfg = self.config
        shape = (cfg.num_layers, batch_size, cfg.num_heads, self.context_length, self.head_dim)
        p = self.bos
        return KVCache(
            torch.zeros(shape, dtype=p.dtype, device=p.device),
            torch.zeros(shape, dtype=p.dtype, device=p.device),
        )

    def slide_cache(self, cache: KVCache, frames: int) -> None:
        """Drop the `frames` oldest token frames from a cache whose context holds them (after the
        prefix) and move the later ones up, without recomputing them: their keys and values keep
        what they saw of the dropped frames (what a refill recomputes from the kept frames alone;
        `ARSampling.window`)."""
        drop = frames * self.tokens_per_frame
        position = torch.tensor([-drop], device=self.bos.device)
        cos, sin = rope_tables(position, self.head_dim, self.config.rope_theta)
        cache.slide(self.prefix_length, drop, cos[0], sin[0])

    # -- embeddings -------------------------------------------------------------------------------

    def embed_prefix(self, states: torch.Tensor | None, mask: torch.Tensor | None, batch_size=1):
        """Text states `(B, L, text_dim)` and mask `(B, L)` (None: the null prompt) -> the prefix
        `(B, max_text_tokens + 1, C)`, BOS included."""
        p = self.config.max_text_tokens
        pad = self.text_pad.expand(batch_size if states is None else states.shape[0], p, -1)
        if states is None:
            prefix = pad
        else:
            if states.ndim != 3 or states.shape[-1] != self.config.text_dim:
                raise ArlonError(
                    f"expected text states (B, L, {self.config.text_dim}), got {tuple(states.shape)}"
                )
            states, mask = states[:, :p], mask[:, :p]
            text = self.text_embedder(states.to(pad.dtype))  # (B, L', C)
            text = torch.where(mask[..., None], text, pad[:, : text.shape[1]])
            prefix = torch.cat([text, pad[:, text.shape[1] :]], dim=1)  # (B, P, C)
        bos = self.bos.expand(prefix.shape[0], 1, -1)
        return torch.cat([prefix, bos], dim=1)  # (B, P + 1, C)

    def embed_codes(self, codes: torch.Tensor, first_cell: int, first_frame: torch.Tensor | int):
        """Codes `(B, N)` that start at cell `first_cell` of token frame `first_frame` (its index in
        the whole video, `(B,)` or an int) -> `(B, N, C)`."""
        b, n = codes.shape
        if isinstance(first_frame, int) and first_cell + n <= self.tokens_per_frame:
            # a run inside one token frame (decoding): the tables' rows sliced, not gathered
            cells = self.cell_embedder.weight[first_cell : first_cell + n]
            phase = self.phase_embedder.weight[first_frame % self.config.code_window]
            return self.code_embedder(codes) + cells + phase
        offset = torch.arange(n, device=codes.device) + first_cell  # (N,)
        cells = offset % self.tokens_per_frame
        frames = torch.as_tensor(first_frame, device=codes.device).view(-1, 1) + (
            offset // self.tokens_per_frame
        )  # (B or 1, N)
        phases = frames % self.config.code_window
        return self.code_embedder(codes) + self.cell_embedder(cells) + self.phase_embedder(phases)

    # -- forward ----------------------------------------------------------------------------------

    def forward_embeddings(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        by_level: bool = False,
        last: bool = False,
    ) -> torch.Tensor:
        """Embeddings `(B, N, C)` at positions `start..start+N-1` -> logits `(B, N, K)`
        (`by_level`: a by-level head's `(B, N, sum(levels))`, see `FSQHead`); `last`: the last
        position's alone, `(B, K)`, the head run on it only (a refill's 128 positions through a
        4,096-code head cost more than a code's step).

        With a cache, its `length` must equal `start`: the keys and values are appended to it.
        """
        self.check_positions(cache, start, x.shape[1])
        x = self.hidden_states(x, cache, start)
        if last:
            return self.logits(x[:, -1:], by_level, decoding=cache is not None)[:, 0]
        return self.logits(x, by_level, decoding=cache is not None)

    def check_positions(self, cache: KVCache | None, start: int, count: int) -> None:
        """A clear error for `count` positions from `start` that a forward cannot take: past the
        context, or not where `cache` ends."""
        if cache is not None and cache.length != start:
            raise ArlonError(f"the KV cache holds {cache.length} positions, not {start}")
        if start + count > self.context_length:
            raise ArlonError(
                f"{start + count} positions exceed the context of {self.context_length}"
            )

    def hidden_states(
        self, x: torch.Tensor, cache: KVCache | None = None, start: int = 0
    ) -> torch.Tensor:
        """Embeddings `(B, N, C)` at positions `start..start+N-1` -> the last block's outputs
        `(B, N, C)`, the keys and values appended to `cache`."""
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        cos, sin = rope_tables(positions, self.head_dim, self.config.rope_theta)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return x

    def logits(
        self, x: torch.Tensor, by_level: bool = False, decoding: bool = False
    ) -> torch.Tensor:
        """The last block's output `(B, N, C)` -> logits `(B, N, K)` (`by_level`: a by-level
        head's, `(B, N, sum(levels))`; `decoding`: see `FSQHead`)."""
        x = self.norm_out(x)
        if not isinstance(self.head, FSQHead):
            if by_level:
                raise ArlonError("by-level logits need a by-level head (code_levels)")
            return self.head(x)
        return self.head(x, by_level, decoding)

    def forward(
        self,
        text_states: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        codes: torch.Tensor,
        first_frame: torch.Tensor | int = 0,
        by_level: bool = False,
    ) -> torch.Tensor:
        """Teacher-forced logits: codes `(B, t, h, w)` (t <= max_frames) whose first token frame is
        frame `first_frame` of its video -> logits `(B, t*h*w, K)`, entry i predicting code i
        (`by_level`: a by-level head's, `(B, t*h*w, sum(levels))`, for `level_nll`)."""
        b, t, h, w = codes.shape
        cfg = self.config
        if (h, w) != (cfg.frame_height, cfg.frame_width) or not 1 <= t <= cfg.max_frames:
            raise ArlonError(
                f"codes {tuple(codes.shape)} do not fit: token frames are "
                f"{cfg.frame_height}x{cfg.frame_width}, 1 to {cfg.max_frames} of them"
            )
        flat = codes.flatten(1)  # (B, N)
        x = torch.cat(
            [
                self.embed_prefix(text_states, text_mask, b),
                self.embed_codes(flat[:, :-1], 0, first_frame),
            ],
            dim=1,
        )  # (B, P + 1 + N - 1, C)
        # the head on the codes' positions alone, from BOS on (a third of the positions are text)
        return self.logits(self.hidden_states(x)[:, cfg.max_text_tokens :], by_level)  # (B, N, K)


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------

# The shapes-tiny fine VQ-VAE: 1024 codes on the 8x8 latent grid, windows of 9 token frames.
_SHAPES_TINY = dict(
    codebook_size=1024,
    frame_height=8,
    frame_width=8,
    code_window=9,
    text_dim=384,
    max_text_tokens=48,  # all-MiniLM-L6-v2 tokens of world captions: median 24, max 43
    max_frames=4,  # 16 video frames: 3 of history are enough to carry motion
    hidden_size=256,
    num_layers=6,
    num_heads=4,
)
AR_PRESETS: dict[str, dict] = {
    "smoke": dict(
        codebook_size=64,
        frame_height=2,
        frame_width=2,
        code_window=3,
        text_dim=384,
        max_text_tokens=8,
        max_frames=4,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
    ),
    "shapes-tiny": _SHAPES_TINY,
    # ARLON's division of labour: the coarse VQ-VAE's 1024 codes on a 4x4 grid (4 per video frame),
    # 8 token frames of history (32 video frames: what a story's change prompt, "the circle turns
    # blue", keeps the rest of the scene from) in 144 positions, against the fine AR's 256; the
    # text encoder's whole 64 tokens (everyday captions reach 57).
    "shapes-tiny-coarse": {
        **_SHAPES_TINY,
        "frame_height": 4,
        "frame_width": 4,
        "max_text_tokens": 64,
        "max_frames": 9,
        # without it, the AR learned its training windows by heart within 2,000 steps
        "dropout": 0.1,
    },
    # Paper scale (about 0.4B parameters): T5-XXL states, an 8192-code VQ-VAE at 4x8x8 on a
    # 512x512 video's 64x64 latent.
    "opensora-1.2": dict(
        codebook_size=8192,
        frame_height=8,
        frame_width=8,
        code_window=5,
        text_dim=4096,
        max_text_tokens=300,
        max_frames=40,
        hidden_size=1152,
        num_layers=24,
        num_heads=16,
    ),
}


def ar_transformer(preset: str, **overrides) -> ARTransformer:
    if preset not in AR_PRESETS:
        raise ArlonError(f"unknown AR preset {preset!r}; known: {', '.join(AR_PRESETS)}")
    return ARTransformer(**settings_for(ARTransformer, {**AR_PRESETS[preset], **overrides}))

"""STDiT: Open-Sora v1.2's spatial-temporal diffusion transformer, with ARLON's semantic injection.

The backbone (Open-Sora v1.2, STDiT3) denoises a video latent `(B, C, T, H, W)` cut into patches of
`patch_size`: blocks alternate spatial attention (the patches of one frame) and temporal attention
(one patch position over the frames), each followed by cross-attention to the text and an MLP.
Timesteps modulate every block through adaLN-single (one global t-block, a learned per-block table),
per frame: reference frames get timestep 0 and stay clean (image-to-video, extension, and the chain of
segments of a long video).

ARLON adds a condition path (the paper's semantic injection): the coarse latent F, patched like
the video, goes through a projection and `num_adapters` latent adapters (MLP, GELU, MLP, residual),
uncertainty sampling while training, and a zero-initialised gated adaptive norm after the temporal
attention of `injection_blocks` blocks, token by token:

    h = h + gate * (norm(h) * (1 + scale) + shift),   (scale, shift, gate) = Linear(c)

With zero-initialised gates an ARLON model built from a trained baseline computes exactly the
baseline (`STDiT.from_baseline`), and `condition=None` runs the backbone alone.

    dit = stdit("shapes-tiny")
    v = dit(x, timestep, text_states, text_mask, condition=F, frame_mask=ref)   # velocity, like x
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from arlon.errors import ArlonError
from arlon.models.layers import apply_rope, rope_tables
from arlon.utils import settings_for

UNCERTAINTY = ("none", "blog", "gaussian")

# ------------------------------------------------------------------------------------------------
# Embedders
# ------------------------------------------------------------------------------------------------


def sincos_2d(height: int, width: int, dim: int, grid: int = 0) -> torch.Tensor:
    """Fixed 2D sin-cos positions `(height * width, dim)` (DiT, MAE): half the channels for each
    axis, [sin, cos] each.

    `grid` 0: one position per patch, rows first. `grid` > 0: Open-Sora v1.2's positions, columns
    first, stretched so that `grid` x `grid` patches span the same positions at any resolution
    (its `PositionEmbedding2D` with `scale = sqrt(h w) / grid` and `base_size = round(sqrt(h w))`;
    Open-Sora takes the scale from the frame's pixels, which this equals when the frame is a whole
    number of patches)."""

    def one_axis(positions: torch.Tensor, d: int) -> torch.Tensor:
        freqs = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d // 2))
        angles = positions[:, None] * freqs[None]  # (n, d / 2)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    ys = torch.arange(height, dtype=torch.float64)
    xs = torch.arange(width, dtype=torch.float64)
    if grid:
        scale, base = math.sqrt(height * width) / grid, round(math.sqrt(height * width))
        ys, xs = ys / scale * base / height, xs / scale * base / width
    rows = one_axis(ys, dim // 2)[:, None].expand(height, width, dim // 2)
    cols = one_axis(xs, dim // 2)[None].expand(height, width, dim // 2)
    axes = [cols, rows] if grid else [rows, cols]
    return torch.cat(axes, dim=-1).flatten(0, 1).float()


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> sinusoidal features -> MLP (DiT's `t_embedder`)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (...) -> (..., C)
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        angles = t.float()[..., None] * freqs
        return self.mlp(
            torch.cat([angles.cos(), angles.sin()], dim=-1).to(self.mlp[0].weight.dtype)
        )


class CaptionEmbedder(nn.Module):
    """Text states -> hidden size, and the learned null caption of classifier-free guidance."""

    def __init__(self, text_dim: int, hidden_size: int, max_tokens: int, gelu: str = "tanh"):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(text_dim, hidden_size),
            nn.GELU(approximate=gelu),
            nn.Linear(hidden_size, hidden_size),
        )
        self.null = nn.Parameter(torch.randn(max_tokens, text_dim) / text_dim**0.5)
        self.max_tokens = max_tokens

    def forward(
        self,
        states: torch.Tensor | None,
        mask: torch.Tensor | None,
        batch_size: int,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, L, D)` states and `(B, L)` mask (None: the null caption) -> `(B, P, C)` and `(B, P)`,
        P = `max_tokens` (longer captions are cut, shorter ones padded and masked). Rows where
        `drop` `(B,)` is True get the null caption (caption dropout, and CFG's unconditional half)."""
        p = self.max_tokens
        if states is None:
            states = self.null.new_zeros(batch_size, p, self.null.shape[1])
            mask = torch.zeros(batch_size, p, dtype=torch.bool, device=states.device)
            drop = torch.ones(batch_size, dtype=torch.bool, device=states.device)
        states, mask = states[:, :p].to(self.null.dtype), mask[:, :p]
        states = F.pad(states, (0, 0, 0, p - states.shape[1]))
        mask = F.pad(mask, (0, p - mask.shape[1]))
        if drop is not None:
            states = torch.where(drop[:, None, None], self.null[None], states)
            mask = mask | drop[:, None]
        return self.proj(states), mask


# ------------------------------------------------------------------------------------------------
# Attention and blocks
# ------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys, optionally RoPE."""

    def __init__(self, hidden_size: int, num_heads: int, rope: bool):
        super().__init__()
        self.num_heads, self.rope = num_heads, rope
        head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm, self.k_norm = nn.RMSNorm(head_dim, eps=1e-6), nn.RMSNorm(head_dim, eps=1e-6)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)  # (B, heads, N, head_dim)
        if self.rope:
            cos, sin = rope_tables(torch.arange(n, device=x.device), q.shape[-1], 10000.0)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Queries from the video tokens, keys and values from the caption (padding masked)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, d)
        k, v = self.kv(text).view(b, text.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, hidden_size: int, ratio: float, gelu: str = "tanh"):
        super().__init__()
        inner = int(hidden_size * ratio)
        self.fc1, self.fc2 = nn.Linear(hidden_size, inner), nn.Linear(inner, hidden_size)
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.gelu(h) if self.gelu == "none" else gelu_tanh(h))


_GELU_C = math.sqrt(2 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, `x * (1 + tanh(u)) / 2`, as `x * sigmoid(2 u)`: the same function
    to float rounding (5e-7), in about half the time of torch's on a CPU without AVX-512."""
    return x * torch.sigmoid(x * (x * x * (2 * _GELU_C * 0.044715) + 2 * _GELU_C))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x * (1 + scale) + shift`, in one pass over x."""
    return torch.addcmul(shift, x, 1 + scale)


class Injection(nn.Module):
    """ARLON's gated adaptive norm: token-aligned (scale, shift, gate) from the condition, all zero at
    initialisation so that the block starts as the baseline's."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden_size, 3 * hidden_size)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.modulation(condition).chunk(3, dim=-1)  # (B, N, C) each
        return torch.addcmul(x, gate, _modulate(self.norm(x), shift, scale))


class STDiTBlock(nn.Module):
    """One spatial or temporal block: self-attention, [injection], cross-attention, MLP; adaLN-single
    modulation per frame from `t0` `(B, T, 6C)` plus the block's own table."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float, temporal: bool, gelu: str
    ):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, rope=temporal)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_ratio, gelu)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.injection: Injection | None = None

    def forward(self, x, t0, text, text_mask, num_frames: int, condition=None):
        """x `(B, T*S, C)` in (t, s) order -> the same."""
        b, n, c = x.shape
        t, s = num_frames, n // num_frames
        mod = (self.scale_shift_table[None, None] + t0.view(b, t, 6, c)).unsqueeze(2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(3)  # (B,T,1,C)

        h = _modulate(self.norm1(x).view(b, t, s, c), shift_msa, scale_msa)  # (B, T, S, C)
        if self.temporal:
            h = self.attn(h.transpose(1, 2).reshape(b * s, t, c)).view(b, s, t, c).transpose(1, 2)
        else:
            h = self.attn(h.reshape(b * t, s, c)).view(b, t, s, c)
        x = torch.addcmul(x.view(b, t, s, c), gate_msa, h).view(b, n, c)
        if self.injection is not None and condition is not None:
            x = self.injection(x, condition)
        x = x + self.cross_attn(x, text, text_mask)
        h = _modulate(self.norm2(x).view(b, t, s, c), shift_mlp, scale_mlp)
        return torch.addcmul(x.view(b, t, s, c), gate_mlp, self.mlp(h)).view(b, n, c)


class FinalLayer(nn.Module):
    """Norm, per-frame shift/scale from the timestep, linear back to patches (zero-initialised)."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, num_frames: int) -> torch.Tensor:
        b, n, c = x.shape
        shift, scale = (self.scale_shift_table[None, None] + t[:, :, None]).unsqueeze(2).unbind(3)
        h = _modulate(self.norm(x).view(b, num_frames, -1, c), shift, scale)
        return self.linear(h.reshape(b, n, c))


# ------------------------------------------------------------------------------------------------
# The condition path of ARLON
# ------------------------------------------------------------------------------------------------


class LatentAdapter(nn.Module):
    """MLP, GELU, MLP, with a residual connection."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc1, self.fc2 = (
            nn.Linear(hidden_size, hidden_size),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


def uncertainty_sample(
    c: torch.Tensor, kind: str, strength: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Perturb condition tokens `(B, N, C)` so that a DiT trained on one kind of coarse latent trusts
    another (coarse codes in training, the AR's fine codes at inference).

    "blog": ARLON's formula. Each sample's channel statistics (mu, sigma over its tokens) are
    replaced by statistics drawn around them, `(c - mu) / sigma * sigma_hat + mu_hat`, with
    `mu_hat = mu + eps * strength * std_batch(mu)` and likewise for sigma: the uncertainty of the
    statistics is their spread over the batch (DSU, Li et al. 2022, arxiv.org/abs/2202.03958).
    "gaussian": `c + eps * strength * std(c)`, the ablation. "none": unchanged.
    """
    if kind == "none" or strength == 0:
        return c
    if kind == "gaussian":
        noise = torch.randn(c.shape, generator=generator, device=c.device, dtype=c.dtype)
        return c + noise * strength * c.detach().std()
    if kind != "blog":
        raise ArlonError(f"unknown uncertainty sampling {kind!r}; known: {', '.join(UNCERTAINTY)}")
    mu = c.mean(dim=1, keepdim=True)  # (B, 1, C)
    sigma = (c.var(dim=1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    eps = torch.randn((2, *mu.shape), generator=generator, device=c.device, dtype=c.dtype)
    mu_hat = mu + eps[0] * strength * mu.std(dim=0, unbiased=False, keepdim=True)
    sigma_hat = sigma + eps[1] * strength * sigma.std(dim=0, unbiased=False, keepdim=True)
    return (c - mu) / sigma * sigma_hat + mu_hat


class ConditionPath(nn.Module):
    """Coarse latent `(B, C, T, H, W)` -> condition tokens `(B, T*S, hidden)` aligned with the video's."""

    def __init__(self, channels: int, patch_size, hidden_size: int, num_adapters: int):
        super().__init__()
        self.embedder = nn.Conv3d(channels, hidden_size, patch_size, stride=patch_size)
        self.projection = nn.Linear(hidden_size, hidden_size)
        self.adapters = nn.Sequential(*(LatentAdapter(hidden_size) for _ in range(num_adapters)))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        tokens = self.embedder(condition).flatten(2).transpose(1, 2)  # (B, T*S, C)
        return self.adapters(self.projection(tokens))


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


def _is_injection(name: str) -> bool:
    """A parameter of ARLON's condition path or injections (what a baseline lacks)."""
    return name.startswith("condition_path.") or ".injection." in name


class STDiT(ModelMixin, ConfigMixin):
    """Velocity prediction for rectified flow on video latents `(B, C, T, H, W)`.

    `depth` pairs of (spatial, temporal) blocks. `injection_blocks` > 0 adds ARLON's condition path,
    injected after the temporal attention of the first (`injection_position="first"`) or last
    `injection_blocks` pairs. `uncertainty` ("none", "blog", "gaussian") perturbs the condition with
    probability `uncertainty_prob` while training, never at inference.

    Two settings exist for Open-Sora v1.2's weights (`arlon.models.opensora`): `position_grid`
    (its resolution-independent positions, see `sincos_2d`) and `fps_conditioning` > 0 (its frame
    rate embedding `fps_embedder`, added to the timestep's, at this frame rate; Open-Sora samples
    at 24). `gelu` is the MLPs' GELU: "tanh", its approximation (Open-Sora's, and the default), or
    "none", the exact one (the shapes-tiny preset's: 5 times as fast on a CPU).

    `backbone_trained`: an ARLON model whose backbone was trained with its condition path (not
    frozen, as in the paper): without the condition it no longer computes its baseline.
    """

    _no_split_modules = ["STDiTBlock"]  # FSDP wrapping unit (read by accelerate)

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        text_dim: int = 384,
        max_text_tokens: int = 48,
        injection_blocks: int = 0,
        injection_position: str = "first",
        num_adapters: int = 2,
        uncertainty: str = "blog",
        uncertainty_prob: float = 0.5,
        uncertainty_strength: float = 1.0,
        position_grid: int = 0,
        fps_conditioning: float = 0.0,
        gelu: str = "tanh",
        backbone_trained: bool = False,
    ):
        super().__init__()
        if gelu not in ("tanh", "none"):
            raise ArlonError(f"gelu is 'tanh' (its approximation) or 'none' (exact), got {gelu!r}")
        if hidden_size % num_heads or (hidden_size // num_heads) % 2 or hidden_size % 4:
            raise ArlonError(
                f"hidden_size {hidden_size} must split into {num_heads} heads of even width"
            )
        if not 0 <= injection_blocks <= depth:
            raise ArlonError(f"injection_blocks must be in [0, {depth}], got {injection_blocks}")
        if injection_position not in ("first", "last"):
            raise ArlonError(
                f"injection_position must be first or last, got {injection_position!r}"
            )
        if uncertainty not in UNCERTAINTY:
            raise ArlonError(
                f"unknown uncertainty {uncertainty!r}; known: {', '.join(UNCERTAINTY)}"
            )
        self.patch_size = tuple(patch_size)
        patch_volume = math.prod(self.patch_size)
        self.x_embedder = nn.Conv3d(
            in_channels, hidden_size, self.patch_size, stride=self.patch_size
        )
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.fps_embedder = TimestepEmbedder(hidden_size) if fps_conditioning else None
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(text_dim, hidden_size, max_text_tokens, gelu)
        self.blocks = nn.ModuleList(
            STDiTBlock(hidden_size, num_heads, mlp_ratio, temporal=i % 2 == 1, gelu=gelu)
            for i in range(2 * depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_volume, in_channels)
        self.initialize_weights()
        self.condition_path = None
        if injection_blocks:
            self.condition_path = ConditionPath(
                in_channels, self.patch_size, hidden_size, num_adapters
            )
            for block in self.injected_blocks():
                block.injection = Injection(hidden_size)

    def initialize_weights(self) -> None:
        """Xavier linears, zero temporal output projections (Open-Sora: a new temporal block starts
        as the identity), and the zero final layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            if block.temporal:
                nn.init.zeros_(block.attn.proj.weight)
        for embedder in (self.t_embedder, self.fps_embedder):
            if embedder is not None:
                nn.init.normal_(embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)

    def injected_blocks(self) -> list[STDiTBlock]:
        """The temporal blocks that take the condition."""
        temporal = [b for b in self.blocks if b.temporal]
        k = self.config.injection_blocks
        if k == 0:
            return []
        return temporal[:k] if self.config.injection_position == "first" else temporal[-k:]

    def backbone_parameters(self):
        """Every parameter but the condition path and the injections: what ARLON freezes."""
        return [p for name, p in self.named_parameters() if not _is_injection(name)]

    @classmethod
    def from_baseline(cls, baseline: STDiT, **injection) -> STDiT:
        """An ARLON model on a trained baseline's weights: with its zero gates, the same output."""
        model = cls(**{**dict(baseline.config), **injection})
        model.load_backbone(baseline.state_dict())
        return model

    def load_backbone(self, state: dict) -> None:
        """Load a baseline's weights: every parameter but the condition path and injections."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or any(not _is_injection(k) for k in missing):
            raise ArlonError("the baseline's architecture does not match this STDiT")

    # -- forward ----------------------------------------------------------------------------------

    def check_latent(self, x: torch.Tensor) -> None:
        p = self.patch_size
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ArlonError(
                f"expected a latent (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        if any(size % q for size, q in zip(x.shape[2:], p, strict=True)):
            raise ArlonError(
                f"latent size {tuple(x.shape[2:])} does not fit the patch size {p}: "
                "each of T, H, W must be a multiple of it"
            )

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        drop_caption: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity `(B, C, T, H, W)` of the noisy latent `x` at `timestep` `(B,)` or per frame
        `(B, T)` (0 = clean, 1000 = noise). `frame_mask` `(B, T)` True marks clean reference frames (timestep 0 for them).
        `text_states` None, or `drop_caption` `(B,)` True: the null caption. `condition`
        `(B, C, T, H, W)`: ARLON's coarse latent (ignored by a baseline; None: no guidance)."""
        self.check_latent(x)
        b, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        tt, hh, ww = t // pt, h // ph, w // pw
        if frame_mask is not None and frame_mask.shape != (b, t):
            raise ArlonError(f"frame_mask must be (B, T) = {(b, t)}, got {tuple(frame_mask.shape)}")
        dtype = self.x_embedder.weight.dtype
        tokens = self.x_embedder(x.to(dtype)).flatten(3).permute(0, 2, 3, 1)  # (B, T', S, C)
        pos = sincos_2d(hh, ww, tokens.shape[-1], self.config.position_grid)
        pos = pos.to(tokens.device, dtype)
        tokens = (tokens + pos).flatten(1, 2)  # (B, T'*S, C)

        per_frame = (timestep.view(b, 1).expand(b, t) if timestep.ndim < 2 else timestep).float()
        if frame_mask is not None:
            per_frame = per_frame.masked_fill(frame_mask, 0.0)
        per_frame = per_frame[:, ::pt]  # (B, T')
        t_emb = self.t_embedder(per_frame)  # (B, T', C)
        if self.fps_embedder is not None:
            fps = torch.full((b, 1), float(self.config.fps_conditioning), device=x.device)
            t_emb = t_emb + self.fps_embedder(fps)  # (B, 1, C): the same for every frame
        t0 = self.t_block(t_emb)  # (B, T', 6C)
        text, mask = self.y_embedder(text_states, text_mask, b, drop_caption)

        cond = None
        if condition is not None and self.condition_path is not None:
            if condition.shape != x.shape:
                raise ArlonError(
                    f"the condition {tuple(condition.shape)} must have the latent's shape "
                    f"{tuple(x.shape)}"
                )
            cond = self.condition_path(condition.to(dtype))
            if self.training and self.config.uncertainty_prob > 0:
                chosen = torch.rand(b, 1, 1, device=cond.device) < self.config.uncertainty_prob
                perturbed = uncertainty_sample(
                    cond, self.config.uncertainty, self.config.uncertainty_strength
                )
                cond = torch.where(chosen, perturbed, cond)  # per sample, with probability p
        for block in self.blocks:
            tokens = block(tokens, t0, text, mask, tt, cond)
        out = self.final_layer(tokens, t_emb, tt)  # (B, T'*S, pt*ph*pw*C)
        out = out.view(b, tt, hh, ww, pt, ph, pw, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, t, h, w)


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------

STDIT_PRESETS: dict[str, dict] = {
    "smoke": dict(
        in_channels=4, hidden_size=32, depth=2, num_heads=2, text_dim=384, max_text_tokens=8
    ),
    # 64x64 video, the shapes-tiny VAE's 8-channel 8x8 latent: 16 tokens per latent frame.
    # Sized for training on 2 CPU cores in fp32 (bf16 autocast is several times slower there).
    # Exact GELU: on this CPU torch's tanh approximation takes 5 times as long; a forward of batch 2
    # takes 34.9 ms instead of 37.1.
    "shapes-tiny": dict(
        in_channels=8,
        hidden_size=128,
        depth=6,
        num_heads=4,
        text_dim=384,
        max_text_tokens=48,
        gelu="none",
    ),
    # Open-Sora v1.2's STDiT3-XL/2: 28 spatial + 28 temporal blocks, T5-XXL states (4096-d, 300),
    # its positions (a 512x512 frame is 32x32 patches) and its frame rate embedding (24 fps).
    "opensora-1.2": dict(
        in_channels=4,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        text_dim=4096,
        max_text_tokens=300,
        position_grid=32,
        fps_conditioning=24.0,
    ),
}
# ARLON's injection per preset: the paper injects into the first 14 of 28 blocks.
INJECTION_PRESETS: dict[str, dict] = {
    "smoke": dict(injection_blocks=1),
    "shapes-tiny": dict(injection_blocks=3),
    "opensora-1.2": dict(injection_blocks=14),
}


def stdit(preset: str, arlon: bool = False, **overrides) -> STDiT:
    """A preset's STDiT, the baseline or (`arlon=True`) with the preset's injection."""
    if preset not in STDIT_PRESETS:
        raise ArlonError(f"unknown STDiT preset {preset!r}; known: {', '.join(STDIT_PRESETS)}")
    injection = INJECTION_PRESETS[preset] if arlon else {}
    return STDiT(**settings_for(STDiT, {**STDIT_PRESETS[preset], **injection, **overrides}))

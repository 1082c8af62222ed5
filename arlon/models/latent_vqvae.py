"""Latent VQ-VAE: VAE latent -> discrete codes -> a latent of the same shape (ARLON's "F").

It sits on top of the frozen video VAE and works on its *normalised* latent `x` `(B, C, T, H, W)`:
an encoder of 3D convolutions and residual attention blocks shrinks it by `ratio = (r_t, r_s, r_s)`,
each vector of the small grid becomes the index of its nearest codebook entry (EMA codebook, cosine
similarity and dead-code reset from vector-quantize-pytorch), and a mirrored decoder rebuilds the
latent from the indices. Two of them are trained: the *fine* one gives the AR transformer its tokens,
the *coarse* one gives the DiT the noisy condition it learns from (the paper's noise-robust training).

    vq = latent_vqvae("shapes-tiny-fine", latent_channels=8)
    out = vq(x)                          # x (B, 8, 9, 8, 8); out.loss is what the trainer minimises
    codes = vq.encode(x)                 # (B, 9, 4, 4) long, the AR's tokens
    f = vq.decode_codes(codes, num_frames=9)   # (B, 8, 9, 8, 8)

Time: the VAE's latents have 1 + 4k frames, not a multiple of r_t. When r_t > 1 the front of the
clip is padded by repeating its first frame up to a multiple of r_t (the first token frame then holds
the first latent frame, as the causal VAE's first latent holds the first video frame alone), and
`decode_codes(codes, num_frames)` crops the padding off again. Spatial sizes must be multiples of r_s.

Not causal: convolutions, attention and GroupNorm see the whole clip, so a long video is coded and
decoded window by window, windows as long as the training clips (`arlon.pipeline.coarse.coarse_latents`
decodes each with a few frames of its neighbours, whose latents it drops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from vector_quantize_pytorch import FSQ, VectorQuantize

from arlon.errors import ArlonError
from arlon.utils import settings_for


@dataclass
class LatentVQOutput:
    """What `LatentVQVAE.forward` returns.

    reconstruction: `(B, C, T, H, W)`, the input's shape; codes: `(B, T/r_t, H/r_s, W/r_s)` long;
    commit_loss: scalar, already weighted by `commitment_weight` (zero in eval mode, where the
    library does not compute it); loss: `MSE(reconstruction, x) + commit_loss`.
    """

    reconstruction: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    loss: torch.Tensor


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock3d(nn.Module):
    """Pre-norm residual block of two 3x3x3 convolutions on `(B, C, T, H, W)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class AttnBlock3d(nn.Module):
    """Residual self-attention over all T*H*W positions of the grid."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ArlonError(f"{channels} channels do not split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C), N = T*H*W
        q, k, v = self.qkv(tokens).view(b, -1, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )  # (B, heads, N, C / heads)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))  # (B, N, C)
        return x + out.transpose(1, 2).reshape(b, c, t, h, w)


class Downsample3d(nn.Module):
    """Strided convolution with kernel = stride (a 3D patchify) to the next level's width: an axis
    with stride 2 halves, one with stride 1 keeps its size. Neighbours mix in the residual blocks
    and attention; a 3x3x3 kernel at the higher resolution would cost several times more."""

    def __init__(self, channels: int, out_channels: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv = nn.Conv3d(channels, out_channels, stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C', T / s_t, H / s_s, W / s_s)


class Upsample3d(nn.Module):
    """The mirror of `Downsample3d`: a transposed convolution with kernel = stride = `scale`
    (each vector becomes its own block of outputs, so no checkerboard pattern)."""

    def __init__(self, channels: int, out_channels: int, scale: tuple[int, int, int]):
        super().__init__()
        self.conv = nn.ConvTranspose3d(channels, out_channels, scale, stride=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C', T * s_t, H * s_s, W * s_s)


def _level(channels: int, num_res_blocks: int, num_heads: int) -> nn.Sequential:
    """`num_res_blocks` residual blocks, each followed by attention when `num_heads` > 0."""
    blocks = []
    for _ in range(num_res_blocks):
        blocks.append(ResBlock3d(channels))
        if num_heads:
            blocks.append(AttnBlock3d(channels, num_heads))
    return nn.Sequential(*blocks)


# ------------------------------------------------------------------------------------------------
# Encoder and decoder
# ------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """`(B, C, T, H, W)` -> `(B, code_dim, T/r_t, H/r_s, W/r_s)`: residual blocks at each level, a
    strided convolution between levels, attention at the lowest resolution."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        strides: list[tuple[int, int, int]],
        num_heads: int,
        code_dim: int,
    ):
        super().__init__()
        lowest = len(widths) - 1
        self.conv_in = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        levels = []
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            level = _level(width, depth, num_heads if i == lowest else 0)
            if i < lowest:
                level.append(Downsample3d(width, widths[i + 1], strides[i]))
            levels.append(level)
        self.levels = nn.ModuleList(levels)
        self.norm_out = _norm(widths[-1])
        self.proj_out = nn.Conv3d(widths[-1], code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, widths[0], T, H, W)
        for level in self.levels:
            h = level(h)  # (B, widths[i + 1], T/s_t, H/s_s, W/s_s) after each downsampling
        return self.proj_out(F.silu(self.norm_out(h)))  # (B, code_dim, t, h, w)


class LocalEncoder(nn.Module):
    """`(B, C, T, H, W)` -> `(B, code_dim, T, H/r_s, W/r_s)`, each code vector from its own r_s x
    r_s cells of its own frame and nothing else: a patchify, then `depth` per-position layers. A
    code changes only where its cells' latents change, not where a neighbour moves."""

    def __init__(self, in_channels: int, width: int, depth: int, r_s: int, code_dim: int):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, width, (1, r_s, r_s), stride=(1, r_s, r_s))
        ]
        for _ in range(depth):
            layers += [nn.SiLU(), nn.Conv3d(width, width, 1)]
        layers += [nn.SiLU(), nn.Conv3d(width, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, code_dim, T, H/r_s, W/r_s)


class Decoder(nn.Module):
    """The encoder's mirror: `(B, code_dim, t, h, w)` -> `(B, C, t*r_t, h*r_s, w*r_s)`."""

    def __init__(
        self,
        out_channels: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        strides: list[tuple[int, int, int]],
        num_heads: int,
        code_dim: int,
    ):
        super().__init__()
        lowest = len(widths) - 1
        self.conv_in = nn.Conv3d(code_dim, widths[-1], 3, padding=1)
        levels = []
        for i in reversed(range(len(widths))):
            level = _level(widths[i], depths[i], num_heads if i == lowest else 0)
            if i > 0:
                level.append(Upsample3d(widths[i], widths[i - 1], strides[i - 1]))
            levels.append(level)
        self.levels = nn.ModuleList(levels)
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv3d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, widths[-1], t, h, w)
        for level in self.levels:
            h = level(h)  # (B, widths[i - 1], t*s_t, h*s_s, w*s_s) after each upsampling
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, T, H, W)


# ------------------------------------------------------------------------------------------------
# The latent VQ-VAE
# ------------------------------------------------------------------------------------------------


def _log2(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise ArlonError(f"{what} must be a power of 2, got {n}")
    return n.bit_length() - 1


class LatentVQVAE(ModelMixin, ConfigMixin):
    """Encoder -> codebook -> decoder on normalised VAE latents `(B, C, T, H, W)`.

    `ratio = (r_t, r_s, r_s)`, powers of 2: one factor-2 stage per power of 2, each axis on its own
    (r_t = 1 leaves time alone). There is one level per resolution, from the input's to the codes':
    level i has width `block_channels[i]` and `num_res_blocks[i]` residual blocks (0 is fine: the
    input is already a compressed latent); at the lowest level each one is followed by an attention
    block (`num_attention_heads` = 0: none).

    `quantization`: "vq", a learned EMA codebook of `codebook_size` codes; or "fsq", finite scalar
    quantisation (Mentzer et al. 2023, https://arxiv.org/abs/2309.15505): `levels` values per
    dimension of a projection to len(levels) dimensions, prod(levels) codes, nothing learned in
    the codebook and no code that can die or be reset.

    `per_frame` (r_t = 1 only): each latent frame is coded on its own, nothing mixed across time,
    so a frame's codes depend on that frame alone: a still scene keeps its codes from frame to
    frame (mixed across a window, where a frame sits in it moved them).

    `local_encoder` (r_t = 1 only): the encoder is `LocalEncoder`, each code a function of its own
    cells in its own frame, so a code changes only where the picture under it changes; the decoder
    still sees the whole window. The AR then predicts what moves, not how a neighbour's motion
    leaks into the codes around it.

    `hysteresis` (FSQ, r_t = 1): `encode` keeps each dimension of a code at its previous token
    frame's level unless its value has moved more than `0.5 + hysteresis` levels from it. A still
    patch whose latent wavers near a level's edge then keeps its code, where plain rounding flips
    it (a quarter of the still background cells of a window, for the local encoder at 0), and the
    AR does not spend itself predicting noise. Training and decoding are unchanged.
    """

    _no_split_modules = ["ResBlock3d", "AttnBlock3d"]  # FSDP wrapping units (read by accelerate)

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        ratio: tuple[int, int, int] = (1, 2, 2),
        block_channels: tuple[int, ...] = (16, 48),
        num_res_blocks: tuple[int, ...] = (0, 1),
        num_attention_heads: int = 1,
        code_dim: int = 32,
        codebook_size: int = 1024,
        use_cosine_sim: bool = True,
        ema_decay: float = 0.99,
        kmeans_init: bool = False,
        threshold_ema_dead_code: float = 2.0,
        commitment_weight: float = 0.25,
        quantization: str = "vq",
        levels: tuple[int, ...] = (),
        per_frame: bool = False,
        local_encoder: bool = False,
        hysteresis: float = 0.0,
    ):
        super().__init__()
        ratio = tuple(ratio)
        if len(ratio) != 3 or ratio[1] != ratio[2]:
            raise ArlonError(f"ratio is (r_t, r_s, r_s), got {ratio}")
        stages_t, stages_s = _log2(ratio[0], "r_t"), _log2(ratio[1], "r_s")
        num_stages = max(stages_t, stages_s)
        strides = [
            (2 if i < stages_t else 1, 2 if i < stages_s else 1, 2 if i < stages_s else 1)
            for i in range(num_stages)
        ]
        widths, depths = tuple(block_channels), tuple(num_res_blocks)
        if len(widths) != num_stages + 1 or len(depths) != num_stages + 1:
            raise ArlonError(
                f"ratio {ratio} has {num_stages + 1} resolution levels: block_channels and "
                f"num_res_blocks need one entry each per level, got {widths} and {depths}"
            )
        if min(widths) < 1 or min(depths) < 0 or num_attention_heads < 0:
            raise ArlonError("block_channels must be positive, num_res_blocks and heads >= 0")
        if per_frame and ratio[0] != 1:
            raise ArlonError(f"per-frame codes need r_t = 1, got the ratio {ratio}")
        if local_encoder and ratio[0] != 1:
            raise ArlonError(f"a local encoder needs r_t = 1, got the ratio {ratio}")
        if quantization not in ("vq", "fsq"):
            raise ArlonError(f"quantization is 'vq' or 'fsq', got {quantization!r}")
        if hysteresis and (quantization != "fsq" or ratio[0] != 1 or not 0 < hysteresis < 0.5):
            raise ArlonError(
                f"hysteresis in (0, 0.5) levels needs FSQ codes of one latent frame each, got "
                f"{hysteresis} with {quantization!r} codes and the ratio {ratio}"
            )
        if quantization == "fsq" and (not levels or math.prod(levels) != codebook_size):
            raise ArlonError(
                f"an FSQ quantizer's levels multiply to its codebook size {codebook_size}, got "
                f"{tuple(levels)}"
            )
        self.latent_channels = latent_channels
        self.ratio = ratio
        self.codebook_size = codebook_size
        self.fsq = quantization == "fsq"
        self.per_frame = per_frame
        self.hysteresis = hysteresis
        self.encoder = (
            LocalEncoder(latent_channels, widths[-1], depths[-1], ratio[1], code_dim)
            if local_encoder
            else Encoder(latent_channels, widths, depths, strides, num_attention_heads, code_dim)
        )
        # EMA codebook with dead-code reset (van den Oord et al. 2017; Zeghidour et al. 2021);
        # cosine similarity keeps codes on the sphere and the codebook well used (Yu et al. 2021,
        # https://arxiv.org/abs/2110.04627).
        if self.fsq:
            self.quantizer = FSQ(levels=list(levels), dim=code_dim)
        else:
            self.quantizer = VectorQuantize(
                dim=code_dim,
                codebook_size=codebook_size,
                use_cosine_sim=use_cosine_sim,
                decay=ema_decay,
                kmeans_init=kmeans_init,
                threshold_ema_dead_code=threshold_ema_dead_code,
                commitment_weight=commitment_weight,
            )
        self.decoder = Decoder(
            latent_channels, widths, depths, strides, num_attention_heads, code_dim
        )
        # How often each code was picked by training forwards since the last reset_usage().
        self.register_buffer("code_counts", torch.zeros(codebook_size), persistent=False)
        self.codes_frozen = False

    def freeze_codes(self) -> LatentVQVAE:
        """Train the decoder alone from now on: the encoder and the codebook neither learn nor move
        (they stay in eval mode, so no EMA update or dead-code reset), so every latent keeps its
        codes, and the codes already drawn (a cache, the AR's training data) keep their meaning."""
        self.encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)
        self.codes_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> LatentVQVAE:
        super().train(mode)
        if self.codes_frozen:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    # -- sizes ------------------------------------------------------------------------------------

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The code grid `(t, h, w)` of a latent of `num_frames` x `height` x `width`."""
        r_t, r_s, _ = self.ratio
        if height % r_s or width % r_s:
            raise ArlonError(
                f"latent size {height}x{width} is not a multiple of the VQ-VAE's spatial ratio {r_s}"
            )
        if num_frames < 1:
            raise ArlonError(f"a latent needs at least one frame, got {num_frames}")
        return -(-num_frames // r_t), height // r_s, width // r_s

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Codes in one token frame (one step of the AR's (t, h, w) raster) of an `height` x
        `width` latent; one token frame covers r_t latent frames."""
        _, h, w = self.token_grid(1, height, width)
        return h * w

    def _check_latent(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.latent_channels:
            raise ArlonError(
                f"expected latents (B, {self.latent_channels}, T, H, W), got {tuple(x.shape)}"
            )
        self.token_grid(*x.shape[2:])

    # -- encode / decode --------------------------------------------------------------------------

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent `(B, C, T, H, W)` -> quantised grid `(B, code_dim, t, h, w)`, codes `(B, t, h, w)`
        and the weighted commitment loss."""
        self._check_latent(x)
        pad = -x.shape[2] % self.ratio[0]
        if pad:
            first = x[:, :, :1].expand(-1, -1, pad, -1, -1)
            x = torch.cat([first, x], dim=2)  # (B, C, t*r_t, H, W)
        z = self._frames(self.encoder, x)  # (B, D, t, h, w)
        b, d, t, h, w = z.shape
        # The codebook's EMA and distances stay in float32 under bf16 autocast.
        with torch.autocast(z.device.type, enabled=False):
            if self.fsq:
                quantized, codes = self.quantizer(z.float().flatten(2).transpose(1, 2))
                commit_loss = z.new_zeros((), dtype=torch.float32)
            else:
                quantized, codes, commit_loss = self.quantizer(z.float().flatten(2).transpose(1, 2))
        quantized = quantized.transpose(1, 2).reshape(b, d, t, h, w)  # (B, D, t, h, w)
        return quantized, codes.view(b, t, h, w), commit_loss

    def _frames(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`network` on `x` `(B, C, T, H, W)`; per frame, its frames folded into the batch."""
        if not self.per_frame:
            return network(x)
        b, t = x.shape[0], x.shape[2]
        y = network(x.transpose(1, 2).flatten(0, 1)[:, :, None])  # (B*T, C', 1, H', W')
        return y[:, :, 0].unflatten(0, (b, t)).transpose(1, 2)  # (B, C', T, H', W')

    def _decode(self, quantized: torch.Tensor, num_frames: int | None) -> torch.Tensor:
        x_hat = self._frames(self.decoder, quantized)  # (B, C, t*r_t, H, W)
        if num_frames is None:
            return x_hat
        r_t = self.ratio[0]
        t = quantized.shape[2]
        if not (t - 1) * r_t < num_frames <= t * r_t:
            raise ArlonError(
                f"{t} token frames decode to {(t - 1) * r_t + 1}..{t * r_t} latent frames, "
                f"not {num_frames}"
            )
        return x_hat[:, :, x_hat.shape[2] - num_frames :]  # (B, C, num_frames, H, W)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent `(B, C, T, H, W)` -> codes `(B, ceil(T/r_t), H/r_s, W/r_s)` long."""
        if not self.hysteresis:
            return self._quantize(x)[1]
        self._check_latent(x)
        z = self._frames(self.encoder, x).float()  # (B, D, T, h, w)
        values = self._fsq_values(z.permute(0, 2, 3, 4, 1))  # (B, T, h, w, L)
        levels = values.round()
        for t in range(1, levels.shape[1]):
            near = (values[:, t] - levels[:, t - 1]).abs() <= 0.5 + self.hysteresis
            levels[:, t] = torch.where(near, levels[:, t - 1], levels[:, t])
        half_width = torch.tensor(self.config.levels, device=z.device) // 2
        return self.quantizer.codes_to_indices(levels / half_width).long()

    def _fsq_values(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder outputs `(..., code_dim)` -> FSQ's bounded values `(..., len(levels))`, in
        levels, before rounding (as vector-quantize-pytorch's `FSQ.bound` computes them)."""
        levels = torch.tensor(self.config.levels, device=z.device)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = (levels % 2 == 0) * 0.5
        return torch.tanh(self.quantizer.project_in(z) + torch.atanh(offset / half)) * half - offset

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Codes `(B, t, h, w)` -> latent `(B, C, t*r_t, h*r_s, w*r_s)`; with `num_frames`, the
        last `num_frames` of those (the front padding of `encode` cropped off)."""
        if codes.ndim != 4 or codes.dtype.is_floating_point:
            raise ArlonError(
                f"expected integer codes (B, t, h, w), got {codes.dtype} {tuple(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ArlonError(f"codes must lie in [0, {self.codebook_size})")
        b, t, h, w = codes.shape
        indices = codes.long().flatten(1)
        quantized = (  # (B, N, D)
            self.quantizer.indices_to_codes(indices)
            if self.fsq
            else self.quantizer.get_output_from_indices(indices)
        )
        quantized = quantized.transpose(1, 2).reshape(b, -1, t, h, w)  # (B, D, t, h, w)
        return self._decode(quantized, num_frames)

    def forward(self, x: torch.Tensor) -> LatentVQOutput:
        """Normalised latent `(B, C, T, H, W)` -> its reconstruction (same shape), codes and loss.

        In training mode the codebook moves (EMA, dead codes replaced by batch vectors) and the
        picked codes are counted for `usage()`.
        """
        quantized, codes, commit_loss = self._quantize(x)
        reconstruction = self._decode(quantized, x.shape[2])  # (B, C, T, H, W)
        if self.training:
            with torch.no_grad():
                self.code_counts += torch.bincount(codes.flatten(), minlength=self.codebook_size)
        loss = F.mse_loss(reconstruction.float(), x.float()) + commit_loss
        return LatentVQOutput(reconstruction, codes, commit_loss, loss)

    # -- codebook statistics ----------------------------------------------------------------------

    def codebook_stats(self, codes: torch.Tensor) -> dict[str, float]:
        """`usage`: the fraction of the K codes that occur in `codes`; `perplexity`: exp of the
        entropy (nats) of their empirical distribution, K for a uniform use of all codes."""
        counts = torch.bincount(codes.flatten().long(), minlength=self.codebook_size).float()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum()
        return {
            "usage": (counts > 0).float().mean().item(),
            "perplexity": entropy.exp().item(),
        }

    def usage(self) -> float:
        """The fraction of codes picked at least once by training forwards since `reset_usage()`."""
        return (self.code_counts > 0).float().mean().item()

    def reset_usage(self) -> None:
        self.code_counts.zero_()


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------

# Sizes are per resolution level, from the input's to the codes'. The shapes-tiny ones are sized for
# CPU training (a step on a batch of 16 latents 8 x 9 x 8 x 8 costs about 0.09 s (fine) and 0.06 s
# (coarse) of one core): the input's level is only the stem, the work happens on the code grid.
LATENT_VQVAE_PRESETS: dict[str, dict] = {
    "smoke": dict(
        ratio=(1, 2, 2),
        block_channels=(8, 16),
        num_res_blocks=(0, 1),
        num_attention_heads=1,
        code_dim=8,
        codebook_size=64,
    ),
    # The shapes-tiny VAE's latent: 8 channels, 9 x 8 x 8 for a 33-frame 64x64 clip. A latent
    # cell is 8x8 pixels and the smallest objects are 10 pixels wide: fine codes keep one code per
    # cell (64 per token frame), because a 2x2-cell code (16x16 pixels) lost the shape of small
    # objects (measured: detector shape accuracy 62%). The coarse codes, the DiT's training
    # condition, are the 2x2-cell ones: the paper's fine:coarse ratio, 8 to 16, is 1 to 2 too.
    "shapes-tiny-fine": dict(
        ratio=(1, 1, 1),
        block_channels=(64,),
        num_res_blocks=(1,),
        num_attention_heads=1,
        codebook_size=1024,
    ),
    # ARLON's coarse tokens, the AR's and the DiT's condition: 16 codes per token frame (4 per
    # video frame). FSQ, by measurement against the EMA codebook of 1,024 on the same cache (3,000
    # steps each): held-out MSE 0.068 against 0.083, through the VAE PSNR 27.2 against 26.2 dB,
    # colour 93.5 against 91.1%, shape 74.8 against 74.9%; codebook use 97 against 100%, and a
    # perplexity of 280 against 948: the AR's tokens concentrate on fewer codes.
    "shapes-tiny-coarse": dict(
        ratio=(1, 2, 2),
        block_channels=(16, 48),
        num_res_blocks=(0, 1),
        num_attention_heads=1,
        quantization="fsq",
        levels=(8, 5, 5, 5),
        codebook_size=1000,
    ),
    # Paper scale, on Open-Sora v1.2's 4-channel latent: 4x8x8 for the AR's tokens, 4x16x16 for
    # the DiT's training condition.
    "opensora-1.2-fine": dict(
        ratio=(4, 8, 8),
        block_channels=(128, 256, 512, 512),
        num_res_blocks=(1, 1, 2, 2),
        num_attention_heads=8,
        codebook_size=8192,
    ),
    "opensora-1.2-coarse": dict(
        ratio=(4, 16, 16),
        block_channels=(128, 256, 512, 512, 512),
        num_res_blocks=(1, 1, 2, 2, 2),
        num_attention_heads=8,
        codebook_size=8192,
    ),
}


def latent_vqvae(preset: str, latent_channels: int, **overrides) -> LatentVQVAE:
    """A fresh latent VQ-VAE of a named size for latents with `latent_channels` channels."""
    if preset not in LATENT_VQVAE_PRESETS:
        raise ArlonError(
            f"unknown latent VQ-VAE preset {preset!r}; known: {', '.join(LATENT_VQVAE_PRESETS)}"
        )
    settings = {**LATENT_VQVAE_PRESETS[preset], **overrides, "latent_channels": latent_channels}
    return LatentVQVAE(**settings_for(LatentVQVAE, settings))

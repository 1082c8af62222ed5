"""Causal video VAE: 4x temporal, 8x8 spatial compression, KL bottleneck, streaming decode.

Designed for the CPU: frames enter through a pixel-unshuffle and 2D convolutions do the spatial work
frame by frame; time is mixed only at 1/8 resolution, by causal temporal convolutions (kernel 3,
left-padded), where it costs little. Normalisation is per frame (GroupNorm over each frame), so no
statistic leaks across time. Every temporal layer can run in *streaming* mode, where it keeps the
last frames it saw instead of padding: feeding latent frames one at a time then gives the same
frames as decoding them all at once, with memory independent of the video's length.

Time layout: frame 0 alone makes latent 0; frames 4k-3 .. 4k make latent k. Videos therefore have
1 + 4k frames, latents 1 + k.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from arlon.errors import ArlonError
from arlon.models.autoencoder import VideoAutoencoder
from arlon.utils import settings_for

# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _video(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


class ResBlock2d(nn.Module):
    """Pre-norm residual block on frames (N, C, H, W)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = nn.GroupNorm(min(32, channels // 4), channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(32, out_channels // 4), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(channels, out_channels, 1) if out_channels != channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class CausalTemporalConv(nn.Module):
    """A temporal convolution (kernel k over T, 1x1 in space) that only looks back.

    In full mode the start is padded by repeating the first frame; in streaming mode the layer keeps
    the last k-1 input frames and prepends them to the next chunk, so a video decoded in chunks is
    identical to one decoded at once.
    """

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(channels, channels, (kernel, 1, 1))
        self.cache: torch.Tensor | None = None
        self.streaming = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.streaming and self.cache is not None:
            padded = torch.cat([self.cache, x], dim=2)
        else:
            padded = torch.cat([x[:, :, :1]] * (self.kernel - 1) + [x], dim=2)
        if self.streaming:
            self.cache = padded[:, :, -(self.kernel - 1) :].detach()
        return self.conv(padded)


class TemporalBlock(nn.Module):
    """Residual causal temporal mixing on (B, C, T, H, W), normalised per frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(32, channels // 4), channels)
        self.conv = CausalTemporalConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _video(F.silu(self.norm(_frames(x))), x.shape[0])
        return x + self.conv(h)


class TemporalDown(nn.Module):
    """Causal 4x temporal downsampling: latent 0 <- frame 0, latent k <- frames 4k-3 .. 4k."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.proj = nn.Conv3d(channels * ratio, channels, 1)
        self.started = False
        self.streaming = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, C, T', H, W)
        b, c, t, h, w = x.shape
        if not (self.streaming and self.started):
            # Frame 0 stands alone: pad it to a full group by repetition.
            x = torch.cat([x[:, :, :1]] * (self.ratio - 1) + [x], dim=2)
            t += self.ratio - 1
            self.started = self.streaming
        if t % self.ratio:
            raise ArlonError(f"cannot group {t} frames by {self.ratio}: stream whole groups")
        x = x.reshape(b, c, t // self.ratio, self.ratio, h, w).transpose(
            2, 3
        )  # (B, C, r, T', H, W)
        return self.proj(x.reshape(b, c * self.ratio, t // self.ratio, h, w))


class TemporalUp(nn.Module):
    """Causal 4x temporal upsampling: latent 0 -> frame 0, latent k -> frames 4k-3 .. 4k."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.proj = nn.Conv3d(channels, channels * ratio, 1)
        self.started = False
        self.streaming = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T', H, W) -> (B, C, T, H, W)
        b, c, t, h, w = x.shape
        y = self.proj(x).reshape(b, c, self.ratio, t, h, w).transpose(2, 3)  # (B, C, T', r, H, W)
        y = y.reshape(b, c, t * self.ratio, h, w)
        if not (self.streaming and self.started):
            y = y[:, :, self.ratio - 1 :]  # latent 0 makes one frame
            self.started = self.streaming
        return y


# ------------------------------------------------------------------------------------------------
# Encoder and decoder
# ------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], latent_channels: int, temporal_ratio: int):
        super().__init__()
        c0 = channels[0]
        self.conv_in = nn.Conv2d(3 * 4, c0, 3, padding=1)  # after a 2x2 pixel-unshuffle
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            layers.append(ResBlock2d(channels[max(i - 1, 0)], c))
            if i + 1 < len(channels):
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.spatial = nn.Sequential(*layers)
        top = channels[-1]
        self.temporal = TemporalBlock(top)
        self.down = TemporalDown(top, temporal_ratio)
        self.latent_temporal = TemporalBlock(top)
        self.latent_spatial = ResBlock2d(top)
        self.norm_out = nn.GroupNorm(min(32, top // 4), top)
        self.conv_out = nn.Conv2d(top, 2 * latent_channels, 3, padding=1)
        # Start with a nearly deterministic posterior (std ~0.05): at std 1 the sampled noise
        # drowns the young latent and reconstruction stalls for hundreds of steps.
        with torch.no_grad():
            self.conv_out.bias[latent_channels:].fill_(-6.0)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 2C, T', h, w)
        b = video.shape[0]
        x = F.pixel_unshuffle(_frames(video), 2)  # (B*T, 12, H/2, W/2)
        x = self.spatial(self.conv_in(x))  # (B*T, top, H/8, W/8)
        x = self.down(self.temporal(_video(x, b)))  # (B, top, T', h, w)
        x = self.latent_spatial(_frames(self.latent_temporal(x)))
        return _video(self.conv_out(F.silu(self.norm_out(x))), b)


class Decoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], latent_channels: int, temporal_ratio: int):
        super().__init__()
        top = channels[-1]
        self.conv_in = nn.Conv2d(latent_channels, top, 3, padding=1)
        self.latent_spatial = ResBlock2d(top)
        self.latent_temporal = TemporalBlock(top)
        self.up = TemporalUp(top, temporal_ratio)
        self.temporal = TemporalBlock(top)
        layers: list[nn.Module] = []
        rev = channels[::-1]
        for i, c in enumerate(rev):
            layers.append(ResBlock2d(rev[max(i - 1, 0)], c))
            if i + 1 < len(rev):
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, c, 3, padding=1),
                ]
        self.spatial = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(min(32, channels[0] // 4), channels[0])
        self.conv_out = nn.Conv2d(channels[0], 3 * 4, 3, padding=1)  # before a 2x2 pixel-shuffle

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, T', h, w) -> (B, 3, T, H, W)
        b = z.shape[0]
        x = self.latent_spatial(self.conv_in(_frames(z)))
        x = self.temporal(self.up(self.latent_temporal(_video(x, b))))  # (B, top, T, h, w)
        x = self.spatial(_frames(x))
        x = F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(x))), 2)  # (B*T, 3, H, W)
        return _video(x, b)


# ------------------------------------------------------------------------------------------------
# The VAE
# ------------------------------------------------------------------------------------------------


class VideoVAE(ModelMixin, ConfigMixin, VideoAutoencoder):
    """Causal video VAE; `encode`/`decode` work in the normalised latent space."""

    _no_split_modules = ["ResBlock2d", "TemporalBlock"]  # FSDP wrapping units (read by accelerate)

    temporal_ratio = 4
    spatial_ratio = 8

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        channels: tuple[int, ...] = (64, 128, 128, 128),
        latent_shift: list[float] | None = None,
        latent_scale: list[float] | None = None,
    ):
        super().__init__()
        if len(channels) != 4:
            raise ArlonError("channels needs 4 widths: 1/2, 1/4, 1/8 resolution and the latent")
        # Spatial 8x: a 2x pixel-unshuffle, then two stride-2 convolutions (channels[0..2]).
        widths = tuple(channels[:3])
        self.latent_channels = latent_channels
        self.encoder = Encoder(widths, latent_channels, self.temporal_ratio)
        self.decoder = Decoder(widths, latent_channels, self.temporal_ratio)
        shift = torch.tensor(latent_shift or [0.0] * latent_channels)
        scale = torch.tensor(latent_scale or [1.0] * latent_channels)
        self.register_buffer("shift", shift.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, -1, 1, 1, 1), persistent=False)

    def set_latent_stats(self, shift: list[float], scale: list[float]) -> None:
        """Store per-channel latent statistics (measured on data) in the config and buffers."""
        self.register_to_config(latent_shift=list(shift), latent_scale=list(scale))
        self.shift.copy_(torch.tensor(shift).view(1, -1, 1, 1, 1))
        self.scale.copy_(torch.tensor(scale).view(1, -1, 1, 1, 1))

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (un-normalised) posterior mean and log-variance, each `(B, C, T', h, w)`."""
        self.check_video(video)
        mean, logvar = self.encoder(video).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        mean, logvar = self.posterior(video)
        if sample:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            mean = mean + noise * (0.5 * logvar).exp()
        return (mean - self.shift) / self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ArlonError(
                f"expected latents (B, {self.latent_channels}, T, h, w), got {tuple(latents.shape)}"
            )
        return self.decoder(latents * self.scale + self.shift).clamp(-1, 1)

    def decode_stream(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        with self.streaming(self.decoder):
            for chunk in latents:
                yield self.decode(chunk)

    def encode_stream(self, video: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Encode chunks of frames as they come: the first chunk has 1 + 4k frames, the others 4k;
        yields their latent frames. Equal to encoding the concatenation at once."""
        with self.streaming(self.encoder):
            for chunk in video:
                mean, _ = self.encoder(chunk).chunk(2, dim=1)
                yield (mean - self.shift) / self.scale

    @contextlib.contextmanager
    def streaming(self, module: nn.Module) -> Iterator[None]:
        """Run `module`'s temporal layers in streaming mode (caches reset on entry and exit)."""
        layers = [m for m in module.modules() if hasattr(m, "streaming")]

        def reset(on: bool) -> None:
            for m in layers:
                m.streaming = on
                if isinstance(m, CausalTemporalConv):
                    m.cache = None
                else:
                    m.started = False

        reset(True)
        try:
            yield
        finally:
            reset(False)

    def forward(self, video: torch.Tensor, generator=None):
        """Training pass: reconstruction `(B, 3, T, H, W)` (not clamped), posterior mean, logvar."""
        mean, logvar = self.posterior(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + noise * (0.5 * logvar).exp()
        return self.decoder(z), mean, logvar


VAE_PRESETS: dict[str, dict] = {
    "smoke": dict(latent_channels=4, channels=(8, 16, 16, 16)),
    "shapes-tiny": dict(latent_channels=8, channels=(48, 96, 160, 160)),
    # Open-Sora v1.2's VAE sizes are a pretrained model: load it with PretrainedVideoVAE instead.
}


def video_vae(preset: str, **overrides) -> VideoVAE:
    if preset not in VAE_PRESETS:
        raise ArlonError(f"unknown VAE preset {preset!r}; known: {', '.join(VAE_PRESETS)}")
    return VideoVAE(**settings_for(VideoVAE, {**VAE_PRESETS[preset], **overrides}))

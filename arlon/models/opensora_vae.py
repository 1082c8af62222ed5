"""Open-Sora v1.2's video VAE: an SDXL image VAE per frame, then a causal temporal VAE on top.

A video `(B, 3, T, H, W)` in [-1, 1] is cut into micro-chunks of `micro_frame_size` (17) frames,
each encoded on its own: every frame by the spatial VAE (diffusers' `AutoencoderKL`, 8x8, times
Open-Sora's fixed 0.18215), then the chunk by the temporal VAE (4x in time, front-padded to a
multiple of 4), so 17 frames make 5 latent frames. Latents are normalised per channel by Open-Sora's
shift and scale. Chunks share nothing, so decoding chunk by chunk is exact, and streaming is too.

    vae = OpenSoraVAE.from_pretrained("pipelines/opensora/vae")     # or arlon.models.opensora
    z = vae.encode(video)      # (B, 3, 17k + 4j, H, W) -> (B, 4, 5k + j, H / 8, W / 8), j < 5
    frames = vae.decode(z)     # (B, 3, 17k + 4j, H, W)

The temporal VAE's parameter names are those of Open-Sora's `VAE_Temporal_SD`
(opensora/models/vae/vae_temporal.py), so its checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from arlon.errors import ArlonError
from arlon.models.autoencoder import VideoAutoencoder

# The spatial VAE Open-Sora v1.2 uses (PixArt-Sigma's SDXL VAE), as diffusers' AutoencoderKL.
SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
)
# Open-Sora's per-channel latent statistics and its spatial scaling (not the SDXL config's).
SHIFT = (-0.10, 0.34, 0.27, 0.98)
SCALE = (3.85, 2.32, 2.33, 3.06)
SPATIAL_SCALING = 0.18215

# ------------------------------------------------------------------------------------------------
# The temporal VAE
# ------------------------------------------------------------------------------------------------


class CausalConv3d(nn.Module):
    """A 3D convolution padded with zeros in front in time (causal) and evenly in space."""

    def __init__(self, c_in: int, c_out: int, kernel, time_stride: int = 1, bias: bool = True):
        super().__init__()
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - time_stride, 0)
        self.conv = nn.Conv3d(c_in, c_out, (kt, kh, kw), stride=(time_stride, 1, 1), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, C', T', H, W)
        return self.conv(F.pad(x, self.padding))


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3x3 causal conv, twice; a 1x1x1 shortcut where the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = CausalConv3d(c_in, c_out, 3, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = CausalConv3d(c_out, c_out, 3, bias=False)
        self.conv3 = CausalConv3d(c_in, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv3 is None else self.conv3(x))


def _res_blocks(c_in: int, c_out: int, count: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(count))


class TemporalEncoder(nn.Module):
    """Levels of residual blocks; a stride-2 causal conv in time after level i where
    `downsample[i]`; then residual blocks, norm and a 1x1x1 conv to the moments."""

    def __init__(self, channels: int, out: int, widths: list[int], blocks: int, downsample, groups):
        super().__init__()
        self.conv_in = CausalConv3d(channels, widths[0], 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        previous = widths[0]
        for i, width in enumerate(widths):
            self.block_res_blocks.append(_res_blocks(previous, width, blocks, groups))
            previous = width
            if i < len(widths) - 1:  # an Identity keeps the index of Open-Sora's names
                down = CausalConv3d(width, width, 3, time_stride=2)
                self.conv_blocks.append(down if downsample[i] else nn.Identity())
        self.res_blocks = _res_blocks(previous, previous, blocks, groups)
        self.norm1 = nn.GroupNorm(groups, previous)
        self.conv2 = CausalConv3d(previous, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.block_res_blocks):
            for block in level:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


class TemporalDecoder(nn.Module):
    """The encoder mirrored: a causal conv that doubles the channels, then depth-to-time, where the
    encoder halved the frames."""

    def __init__(self, latent: int, out: int, widths: list[int], blocks: int, downsample, groups):
        super().__init__()
        self.downsample = list(downsample)
        top = widths[-1]
        self.conv1 = CausalConv3d(latent, top, 3)
        self.res_blocks = _res_blocks(top, top, blocks, groups)
        levels, ups = [], []
        previous = top
        for i in reversed(range(len(widths))):  # built from the top, stored by level
            levels.insert(0, _res_blocks(previous, widths[i], blocks, groups))
            previous = widths[i]
            if i > 0:
                up = CausalConv3d(previous, 2 * previous, 3)
                ups.insert(0, up if downsample[i - 1] else nn.Identity())
        self.block_res_blocks = nn.ModuleList(levels)
        self.conv_blocks = nn.ModuleList(ups)
        self.norm1 = nn.GroupNorm(groups, previous)
        self.conv_out = CausalConv3d(previous, out, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                x = self.conv_blocks[i - 1](x)
                if self.downsample[i - 1]:
                    b, c, t, h, w = x.shape  # channels (C, 2) -> frames (T, 2)
                    x = (
                        x.view(b, c // 2, 2, t, h, w)
                        .transpose(2, 3)
                        .reshape(b, c // 2, 2 * t, h, w)
                    )
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """Open-Sora's `VAE_Temporal`: 4-channel image latents `(B, 4, T, h, w)` -> a diagonal Gaussian
    over `(B, 4, ceil(T / r), h, w)`, r = 2 ** sum(downsample), the input front-padded to a
    multiple of r."""

    def __init__(
        self,
        channels: int = 4,
        filters: int = 128,
        blocks: int = 4,
        multipliers: tuple[int, ...] = (1, 2, 2, 4),
        downsample: tuple[bool, ...] = (False, True, True),
        groups: int = 32,
    ):
        super().__init__()
        widths = [filters * m for m in multipliers]
        self.ratio = 2 ** sum(downsample)
        self.encoder = TemporalEncoder(channels, 2 * channels, widths, blocks, downsample, groups)
        self.quant_conv = CausalConv3d(2 * channels, 2 * channels, 1)
        self.post_quant_conv = CausalConv3d(channels, channels, 1)
        self.decoder = TemporalDecoder(channels, channels, widths, blocks, downsample, groups)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance `(B, C, ceil(T / r), h, w)` of image latents `(B, C, T, h, w)`."""
        x = F.pad(x, (0, 0, 0, 0, -x.shape[2] % self.ratio, 0))
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`(B, C, t, h, w)` -> the last `num_frames` of the `r t` decoded frames (the front padding
        of `encode` dropped)."""
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, x.shape[2] - num_frames :]


# ------------------------------------------------------------------------------------------------
# The video VAE
# ------------------------------------------------------------------------------------------------


class OpenSoraVAE(ModelMixin, ConfigMixin, VideoAutoencoder):
    """Open-Sora v1.2's `VideoAutoencoderPipeline` behind ARLON's `VideoAutoencoder` interface.

    Videos `(B, 3, T, H, W)` in [-1, 1] with `T = 17 k + 4 j` (j < 5: the last micro-chunk is
    encoded unpadded); latents `(B, 4, 5 k + j, H / 8, W / 8)`, normalised.
    """

    @register_to_config
    def __init__(
        self,
        spatial: dict | None = None,
        temporal_filters: int = 128,
        temporal_blocks: int = 4,
        temporal_multipliers: tuple[int, ...] = (1, 2, 2, 4),
        temporal_downsample: tuple[bool, ...] = (False, True, True),
        temporal_groups: int = 32,
        micro_frame_size: int = 17,
        micro_batch_size: int = 4,
        shift: tuple[float, ...] = SHIFT,
        scale: tuple[float, ...] = SCALE,
    ):
        super().__init__()
        self.spatial_vae = AutoencoderKL(**(SDXL_VAE if spatial is None else spatial))
        channels = self.spatial_vae.config.latent_channels
        self.temporal_vae = TemporalVAE(
            channels,
            temporal_filters,
            temporal_blocks,
            tuple(temporal_multipliers),
            tuple(temporal_downsample),
            temporal_groups,
        )
        if len(shift) != channels or len(scale) != channels:
            raise ArlonError(f"shift and scale need {channels} values, one per latent channel")
        self.latent_channels = channels
        self.temporal_ratio = self.temporal_vae.ratio
        self.spatial_ratio = 2 ** (len(self.spatial_vae.config.block_out_channels) - 1)
        self.micro_latents = -(-micro_frame_size // self.temporal_ratio)  # 17 frames -> 5
        stats = torch.tensor([shift, scale]).view(2, 1, -1, 1, 1, 1)  # `(z - shift) / scale`
        self.register_buffer("latent_shift", stats[0].clone(), persistent=False)
        self.register_buffer("latent_scale", stats[1].clone(), persistent=False)
        self.requires_grad_(False).eval()

    # -- frame counts: whole micro-chunks, then 4 j frames ------------------------------------------

    def latent_frames(self, num_frames: int) -> int:
        chunk, r = self.config.micro_frame_size, self.temporal_ratio
        whole, rest = divmod(num_frames, chunk)
        if num_frames < 1 or rest % r:
            raise ArlonError(
                f"Open-Sora's VAE takes {chunk}k + {r}j frames, j < {self.micro_latents} "
                f"(e.g. {chunk}, {chunk + r}, {2 * chunk}, {3 * chunk}), got {num_frames}"
            )
        return whole * self.micro_latents + rest // r

    def video_frames(self, latent_frames: int) -> int:
        whole, rest = divmod(latent_frames, self.micro_latents)
        return whole * self.config.micro_frame_size + rest * self.temporal_ratio

    def latents_for(self, num_frames: int) -> int:
        whole, rest = divmod(num_frames, self.config.micro_frame_size)
        return whole * self.micro_latents + -(-rest // self.temporal_ratio)

    # -- encode and decode --------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """`(B, 3, T, H, W)` in [-1, 1] -> normalised latents `(B, 4, T', h, w)`; the posterior
        means unless `sample` (Open-Sora samples both posteriors)."""
        self.check_video(video)
        video = video.to(self.device, self.dtype)
        chunks = video.split(self.config.micro_frame_size, dim=2)
        z = torch.cat([self._encode_chunk(c, sample, generator) for c in chunks], dim=2)
        return (z.float() - self.latent_shift) / self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `(B, 4, T', h, w)` -> video `(B, 3, T, H, W)` in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ArlonError(
                f"expected latents (B, {self.latent_channels}, T, h, w), got {tuple(latents.shape)}"
            )
        z = latents.to(self.device, torch.float32) * self.latent_scale + self.latent_shift
        video = torch.cat([self._decode_chunk(c) for c in z.split(self.micro_latents, dim=2)], 2)
        return video.float().clamp(-1, 1)

    def encode_stream(self, video: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Encode chunks of frames `(B, 3, n_i, H, W)` as they come, yielding the latents of each
        whole micro-chunk; at the end, the last `4 j` frames (up to 3 frames that make no latent
        frame are dropped). Equal to `encode` of the frames kept."""
        size, r = self.config.micro_frame_size, self.temporal_ratio
        buffer = None
        for chunk in video:
            buffer = chunk if buffer is None else torch.cat([buffer, chunk], dim=2)
            whole = buffer.shape[2] // size * size
            if whole:
                yield self.encode(buffer[:, :, :whole])
                buffer = buffer[:, :, whole:]
        usable = 0 if buffer is None else buffer.shape[2] // r * r
        if usable:
            yield self.encode(buffer[:, :, :usable])

    def decode_stream(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode chunks of latent frames `(B, 4, t_i, h, w)` as they come, each whole micro-chunk
        of 5 as soon as it is complete, the rest at the end: exactly `decode` of them all."""
        buffer = None
        for chunk in latents:
            buffer = chunk if buffer is None else torch.cat([buffer, chunk], dim=2)
            whole = buffer.shape[2] // self.micro_latents * self.micro_latents
            if whole:
                yield self.decode(buffer[:, :, :whole])
                buffer = buffer[:, :, whole:]
        if buffer is not None and buffer.shape[2]:
            yield self.decode(buffer)

    def _encode_chunk(self, video: torch.Tensor, sample: bool, generator) -> torch.Tensor:
        """One micro-chunk `(B, 3, n, H, W)` -> unnormalised latents `(B, 4, ceil(n / 4), h, w)`."""
        b, _, n = video.shape[:3]
        frames = video.transpose(1, 2).flatten(0, 1)  # (B n, 3, H, W)
        latents = []
        for part in frames.split(self.config.micro_batch_size):
            posterior = self.spatial_vae.encode(part).latent_dist
            latents.append(posterior.sample(generator) if sample else posterior.mode())
        x = torch.cat(latents) * SPATIAL_SCALING  # (B n, 4, h, w)
        x = x.unflatten(0, (b, n)).transpose(1, 2)  # (B, 4, n, h, w)
        mean, logvar = self.temporal_vae.encode(x)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * noise

    def _decode_chunk(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents of one micro-chunk `(B, 4, t, h, w)` -> `(B, 3, n, H, W)`."""
        z = z.to(self.dtype)
        b, t = z.shape[0], z.shape[2]
        n = self.video_frames(t)
        x = self.temporal_vae.decode(z, n) / SPATIAL_SCALING  # (B, 4, n, h, w)
        frames = x.transpose(1, 2).flatten(0, 1)
        parts = frames.split(self.config.micro_batch_size)
        video = torch.cat([self.spatial_vae.decode(p).sample for p in parts])  # (B n, 3, H, W)
        return video.unflatten(0, (b, n)).transpose(1, 2)

"""A pretrained diffusers video autoencoder behind ARLON's `VideoAutoencoder` interface.

Instead of training our own video VAE, load Wan, LTX-Video, CogVideoX, HunyuanVideo or Mochi's
autoencoder from a local folder (nothing is downloaded); the class comes from the folder's
`config.json`. Ratios, channels and the latent statistics come from the model itself, so the
latents later stages see are normalised the way the model's own diffusers pipeline normalises them.

    vae = PretrainedVideoVAE.from_pretrained("checkpoints/Wan2.1-T2V-1.3B-Diffusers", subfolder="vae")
    z = vae.encode(video)       # (B, 3, T, H, W) in [-1, 1] -> (B, 16, 1 + (T - 1) / 4, H / 8, W / 8)
    frames = vae.decode(z)      # (B, 3, T, H, W) in [-1, 1]

Streaming (`decode_stream`): Wan's VAE is causal and decodes one latent frame at a time with a
feature cache, so streaming it is exact (equal to decoding the whole latent at once). The others
have no cache that streams (CogVideoX's convolution cache goes with group norms over fixed batches
of frames), so each chunk is decoded on its own together with the last latent frame of the chunk
before as context, whose frames are then dropped; seams may show between chunks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

from arlon.errors import ArlonError
from arlon.models.autoencoder import VideoAutoencoder

# ------------------------------------------------------------------------------------------------
# What each diffusers class calls its ratios, channels and latent statistics
# ------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Latent channels, ratios, and the statistics that normalise: `(z - shift) / scale`."""

    channels: int
    temporal_ratio: int
    spatial_ratio: int
    shift: float | list[float] | torch.Tensor
    scale: float | list[float] | torch.Tensor


def _wan(vae) -> _Layout:
    # WanPipeline: (z - latents_mean) / latents_std, both in the config.
    c = vae.config
    return _Layout(
        c.z_dim, c.scale_factor_temporal, c.scale_factor_spatial, c.latents_mean, c.latents_std
    )


def _ltx(vae) -> _Layout:
    # LTXPipeline._normalize_latents: (z - mean) * scaling_factor / std, mean and std are buffers.
    return _Layout(
        vae.config.latent_channels,
        vae.temporal_compression_ratio,
        vae.spatial_compression_ratio,
        vae.latents_mean,
        vae.latents_std / vae.config.scaling_factor,
    )


def _cogvideox(vae) -> _Layout:
    # CogVideoXPipeline: z * scaling_factor; every down block but the last halves the frame.
    c = vae.config
    return _Layout(
        c.latent_channels,
        int(c.temporal_compression_ratio),
        2 ** (len(c.block_out_channels) - 1),
        0.0,
        1 / c.scaling_factor,
    )


def _hunyuan_video(vae) -> _Layout:
    # HunyuanVideoPipeline: z * scaling_factor.
    return _Layout(
        vae.config.latent_channels,
        vae.temporal_compression_ratio,
        vae.spatial_compression_ratio,
        0.0,
        1 / vae.config.scaling_factor,
    )


def _mochi(vae) -> _Layout:
    # MochiPipeline: (z - latents_mean) * scaling_factor / latents_std where the config has them.
    c = vae.config
    has_stats = c.latents_mean is not None and c.latents_std is not None
    return _Layout(
        c.latent_channels,
        vae.temporal_compression_ratio,
        vae.spatial_compression_ratio,
        c.latents_mean if has_stats else 0.0,
        torch.tensor(c.latents_std if has_stats else 1.0) / c.scaling_factor,
    )


LAYOUTS: dict[str, Callable[[torch.nn.Module], _Layout]] = {
    "AutoencoderKLWan": _wan,
    "AutoencoderKLLTXVideo": _ltx,
    "AutoencoderKLCogVideoX": _cogvideox,
    "AutoencoderKLHunyuanVideo": _hunyuan_video,
    "AutoencoderKLMochi": _mochi,
}


def _per_channel(value, channels: int, what: str, class_name: str) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=torch.float32).detach().clone().flatten()
    if value.numel() == 1:
        return value.expand(channels).clone()
    if value.numel() != channels:
        raise ArlonError(
            f"{class_name} has {channels} latent channels but {value.numel()} values of {what}"
        )
    return value


# ------------------------------------------------------------------------------------------------
# The wrapper
# ------------------------------------------------------------------------------------------------


class PretrainedVideoVAE(VideoAutoencoder, torch.nn.Module):
    """A diffusers video autoencoder (`self.vae`, frozen, in eval mode) with normalised latents.

    Videos are `(B, 3, T, H, W)` in [-1, 1] with `T = 1 + k * temporal_ratio`; latents are
    `(B, latent_channels, 1 + k, H / spatial_ratio, W / spatial_ratio)`, normalised by the model's
    own statistics (identity where it defines none).
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.class_name = type(vae).__name__
        if self.class_name not in LAYOUTS:
            raise ArlonError(
                f"{self.class_name} is not a supported video autoencoder; use one of {list(LAYOUTS)}"
            )
        self.vae = vae.eval().requires_grad_(False)
        layout = LAYOUTS[self.class_name](vae)
        self.latent_channels = int(layout.channels)
        self.temporal_ratio = int(layout.temporal_ratio)
        self.spatial_ratio = int(layout.spatial_ratio)
        shift = _per_channel(layout.shift, self.latent_channels, "latent mean", self.class_name)
        scale = _per_channel(layout.scale, self.latent_channels, "latent scale", self.class_name)
        self.register_buffer("shift", shift.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, -1, 1, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, subfolder: str | None = None, torch_dtype: torch.dtype | None = None
    ) -> PretrainedVideoVAE:
        """Load the autoencoder saved in `path` (or `path/subfolder`), a local diffusers folder."""
        folder = Path(path) / subfolder if subfolder else Path(path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ArlonError(f"no video autoencoder in {folder}: config.json not found")
        try:
            class_name = json.loads(config_file.read_text())["_class_name"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ArlonError(
                f"{config_file} is not a diffusers model config (no readable _class_name)"
            ) from None
        if class_name not in LAYOUTS:
            raise ArlonError(
                f"{folder} holds a {class_name}, not a supported video autoencoder; "
                f"use one of {list(LAYOUTS)}"
            )
        try:
            vae = getattr(diffusers, class_name).from_pretrained(
                str(path), subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=True
            )
        except (OSError, ValueError, RuntimeError) as e:
            reason = " ".join(str(e).split())
            raise ArlonError(f"cannot load the {class_name} in {folder}: {reason}") from None
        return cls(vae)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Save the wrapped model in diffusers' layout; `from_pretrained` reads it back."""
        self.vae.save_pretrained(save_directory, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.shift.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """`(B, 3, T, H, W)` in [-1, 1] -> normalised latents `(B, C, T', h, w)`; the posterior mean
        unless `sample`."""
        self.check_video(video)
        posterior = self.vae.encode(video.to(self.device, self.dtype)).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return (z - self.shift) / self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `(B, C, T', h, w)` -> video `(B, 3, T, H, W)` in [-1, 1]."""
        z = self._denormalise(latents)
        if self.vae.config.get("timestep_conditioning"):
            # LTX-Video 0.9.1+ decoders are conditioned on a decode timestep; 0 is a clean latent.
            timestep = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
            video = self.vae.decode(z, timestep).sample
        else:
            video = self.vae.decode(z).sample
        # CogVideoX decodes an even number of latent frames into `r` frames each, its first latent
        # frame (the first video frame alone) included: keep the last 1 + r (T' - 1).
        return video[:, :, -self.video_frames(latents.shape[2]) :].clamp(-1, 1)

    def decode_stream(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode chunks of latent frames `(B, C, t_i, h, w)` as they come, yielding the frames
        `(B, 3, n_i, H, W)` they complete (n_0 = 1 + r (t_0 - 1), then n_i = r t_i): exact for Wan,
        chunk by chunk with one latent frame of context for the others (see the module docstring)."""
        if self.class_name == "AutoencoderKLWan":
            yield from self._wan_stream(latents)
            return
        previous = None
        for chunk in latents:
            if chunk.shape[2] == 0:
                continue
            if previous is None:
                yield self.decode(chunk)
            else:
                video = self.decode(torch.cat([previous, chunk], dim=2))
                yield video[:, :, -self.temporal_ratio * chunk.shape[2] :]
            previous = chunk[:, :, -1:]

    def _wan_stream(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """AutoencoderKLWan._decode, one latent frame at a time, with a feature cache of our own
        (the model's `_feat_map` would be shared by every stream): memory stays at a few frames."""
        vae = self.vae
        cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        first = True
        for chunk in latents:
            if chunk.shape[2] == 0:
                continue
            x = vae.post_quant_conv(self._denormalise(chunk))  # a 1x1x1 conv: no temporal state
            frames = []
            for i in range(x.shape[2]):
                frames.append(
                    vae.decoder(
                        x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=first
                    )
                )
                first = False
            video = torch.cat(frames, dim=2)
            if vae.config.patch_size is not None:
                video = unpatchify(video, patch_size=vae.config.patch_size)
            yield video.clamp(-1, 1)

    def _denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ArlonError(
                f"expected latents (B, {self.latent_channels}, T, h, w), got {tuple(latents.shape)}"
            )
        z = latents.to(self.device, torch.float32) * self.scale + self.shift
        return z.to(self.dtype)

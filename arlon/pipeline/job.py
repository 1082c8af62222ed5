"""What a generation asks for, checked before any work: the DiT's sampling settings, the job the
stages read, and the latents of a video being continued."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arlon.data.latent_cache import encode_frames, encode_video
from arlon.diffusion.rectified_flow import check_strength
from arlon.errors import ArlonError
from arlon.timeline import LiveTimeline

MODES = ("arlon", "baseline", "ar-only")


@dataclass(frozen=True)
class DiTSampling:
    """How the DiT renders each segment: Euler steps, text guidance (1: none; None: the model's
    own, `ARLONPipeline.config.guidance_scale`), and `mode`: "arlon" (guided by the AR's coarse
    latent), "baseline" (text only, Open-Sora's loop) or "ar-only" (no DiT: the AR's codes decoded
    straight through the VQ-VAE and the VAE). `strength` < 1 (arlon only): the DiT runs the last
    steps of its schedule only (about `steps * strength`: `strength_steps`), from the AR's coarse
    latent noised to the first of their times instead of from noise (None: the model's own,
    `ARLONPipeline.config.strength`, in mode arlon; 1 in the others)."""

    num_inference_steps: int = 5
    guidance_scale: float | None = None
    mode: str = "arlon"
    strength: float | None = None

    def __post_init__(self):
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ArlonError(f"the number of steps must be a positive integer, got {steps!r}")
        check_guidance(self.guidance_scale)
        if self.mode not in MODES:
            raise ArlonError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.strength is None:
            return
        check_strength(self.strength, steps)
        if self.strength < 1 and self.mode != "arlon":
            raise ArlonError("a strength below 1 starts from the AR's coarse latent: mode arlon")


def check_guidance(scale: float | None) -> None:
    if scale is not None and not scale >= 0:
        raise ArlonError(f"the DiT guidance scale must be >= 0, got {scale}")


@dataclass
class Job:
    """One generation's inputs, checked, as the stages read them."""

    live: LiveTimeline  # a fixed timeline is a live one that nobody directs
    num_frames: int
    height: int
    width: int
    sampling: DiTSampling
    seed: int
    segments: int
    new_latents: int
    init: torch.Tensor | None  # the continued video's reference latents (1, C, r, h, w)
    dit: torch.nn.Module  # the DiT that renders it (`ARLONPipeline.dit_for`: checked up front)


def continued_latents(vae, video: np.ndarray | str | Path, reference_frames: int) -> torch.Tensor:
    """The last `reference_frames` latent frames `(1, C, r, h, w)` of a video to continue: a video
    file, or uint8 frames `(T, H, W, 3)`, encoded by `vae`."""
    r = reference_frames
    if isinstance(video, str | Path):
        if not Path(video).is_file():
            raise ArlonError(f"no such video to continue: {video}")
        latents = encode_video(vae, video)[None]
    else:
        frames = np.asarray(video)
        shaped = frames.ndim == 4 and frames.shape[-1] == 3 and len(frames) > 0
        if frames.dtype != np.uint8 or not shaped:
            raise ArlonError(
                "a video to continue is uint8 frames (T, H, W, 3), "
                f"got {frames.dtype} of shape {frames.shape}"
            )
        # its last frames make the latents: those before the first whole latent frame go
        usable = vae.video_frames(vae.latents_for(len(frames) + 1) - 1)
        latents = encode_frames(vae, frames[len(frames) - usable :])[None]
    if latents.shape[2] < r:
        need = vae.video_frames(r)
        raise ArlonError(f"the video to continue needs at least {need} frames")
    return latents[:, :, -r:]

"""Frames as files hold them, and how two of them compare.

Videos inside the models are `(B, 3, T, H, W)` tensors in [-1, 1]; frames that leave them are
`(T, H, W, 3)` uint8, as a video writer stores them. numpy only, so that scoring a video does not
pull torch in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PSNR_CAP = 100.0  # dB: what identical inputs score


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] -> uint8, any layout: clipped, then round((x + 1) * 127.5)."""
    return np.rint((np.clip(x, -1.0, 1.0, dtype=np.float32) + 1.0) * 127.5).astype(np.uint8)


def to_frames(video: torch.Tensor) -> np.ndarray:
    """`(3, T, H, W)` (or `(B, 3, T, H, W)`) in [-1, 1] -> uint8 `(T, H, W, 3)` (`(B, T, H, W, 3)`)."""
    return to_uint8(video.detach().float().movedim(-4, -1).cpu().numpy())


def from_frames(frames) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` (or `(B, T, H, W, 3)`), an array or a tensor -> `(3, T, H, W)` (or
    `(B, 3, T, H, W)`) float32 in [-1, 1]: the inverse of `to_frames`."""
    import torch  # here, not above: scoring a video does not need it

    return torch.as_tensor(frames).movedim(-1, -4).float() / 127.5 - 1


def psnr(a, b, peak: float = 255.0) -> float:
    """PSNR (dB) of two arrays or tensors of the same shape whose values span `peak` (255 for
    uint8, 2 for [-1, 1]); identical inputs give `PSNR_CAP`."""
    a, b = (_float64(v) for v in (a, b))
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(peak**2 / mse))


def _float64(x) -> np.ndarray:
    """A numpy array or a torch tensor (any device) as float64 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, np.float64)

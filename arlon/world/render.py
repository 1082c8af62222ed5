"""Anti-aliased rendering of shapes-world states into RGB frames.

Each shape is drawn from its signed distance: a pixel's coverage is `clip(0.5 - d, 0, 1)` where `d`
is the signed distance (in pixels) of its centre to the shape's edge, which gives one pixel of smooth
edge at any size. Only the object's bounding box is touched, so a frame costs a few small array ops
per object. Objects that cross an edge are drawn again shifted by the frame size (the world wraps).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from arlon.world import vocab
from arlon.world.scene import FrameState, WorldObject

_SQRT5 = math.sqrt(5.0)


def render_frame(state: FrameState, height: int = 64, width: int = 64) -> np.ndarray:
    """Draw one state as a uint8 RGB frame `(H, W, 3)`."""
    frame = np.empty((height, width, 3), np.float32)
    frame[:] = vocab.BACKGROUNDS[state.background]
    for obj in state.objects:
        colour = np.asarray(vocab.COLOURS[obj.colour], np.float32)
        for ox in _wrap_offsets(obj.x, obj.size, width):
            for oy in _wrap_offsets(obj.y, obj.size, height):
                _draw(frame, obj, obj.x + ox, obj.y + oy, colour)
    return np.rint(frame).astype(np.uint8)


def render_states(
    states: Iterable[FrameState], height: int = 64, width: int = 64
) -> Iterator[np.ndarray]:
    """Render a stream of states frame by frame, `(H, W, 3)` uint8 each."""
    for state in states:
        yield render_frame(state, height, width)


def degrade(
    frame: np.ndarray, rng: np.random.Generator, blur: float = 1.5, noise: float = 0.05
) -> np.ndarray:
    """A frame `(H, W, 3)` uint8 as a generator might make it: Gaussian blur (sigma in px) plus noise
    (sigma as a fraction of the range)."""
    x = (
        cv2.GaussianBlur(frame.astype(np.float32), (0, 0), blur)
        if blur
        else frame.astype(np.float32)
    )
    x = x + rng.normal(0, noise * 255, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _wrap_offsets(centre: float, size: float, extent: int) -> tuple[float, ...]:
    half = size / 2 + 1
    offsets = [0.0]
    if centre - half < 0:
        offsets.append(float(extent))
    if centre + half > extent:
        offsets.append(-float(extent))
    return tuple(offsets)


def _draw(frame: np.ndarray, obj: WorldObject, cx: float, cy: float, colour: np.ndarray) -> None:
    height, width = frame.shape[:2]
    half = obj.size / 2
    x0, x1 = max(int(cx - half - 1), 0), min(int(math.ceil(cx + half + 1)), width)
    y0, y1 = max(int(cy - half - 1), 0), min(int(math.ceil(cy + half + 1)), height)
    if x0 >= x1 or y0 >= y1:
        return
    # Pixel centres relative to the shape's centre: px (1, w), py (h, 1).
    px = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    py = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    alpha = shape_coverage(obj.shape, obj.size, px, py)[..., None]  # (h, w, 1)
    patch = frame[y0:y1, x0:x1]
    patch += alpha * (colour - patch)


def shape_coverage(shape: str, size: float, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of pixels whose centres sit at offsets (px, py) from the shape's box centre."""
    half = size / 2
    if shape == "circle":
        d = np.sqrt(px * px + py * py) - half
    elif shape == "square":
        d = np.maximum(np.abs(px), np.abs(py)) - half
    else:
        # Apex at (0, -half), base from (-half, half) to (half, half): three half-planes.
        slanted = (2 * np.abs(px) - py - half) / _SQRT5
        d = np.maximum(py - half, slanted)
    return np.clip(0.5 - d, 0.0, 1.0)

"""The classical detector: reads any video (rendered or generated) back into shapes-world states.

Per frame:
1. the background is the frame's median colour (objects cover a minority of pixels), named by the
   nearest background of the palette;
2. each pixel is *matted* against every object colour: with `b` the background and `c` a colour, a
   pixel `p` is explained as `b + a (c - b)`; it belongs to the colour whose line explains it best
   (smallest residual) when its coverage `a` is above one half. Anti-aliased or blurred edges are
   mixtures of one colour with the background, so they are judged by coverage, not by raw distance,
   and the mask boundary lands where the true edge is;
3. per colour, a morphological opening drops the thin rims that two-colour mixtures leave, and
   connected components give the objects; pieces on opposite borders are one wrapped object;
4. shape from the mask: a triangle has a third of its mass in the top half, a square fills its box,
   a circle fills pi/4 of it. The centre is the centre of the mask's bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from arlon.world import vocab
from arlon.world.render import shape_coverage

_COLOUR_NAMES = list(vocab.COLOURS)
_COLOUR_RGB = np.array([vocab.COLOURS[c] for c in _COLOUR_NAMES], np.float32)  # (K, 3)
_BG_NAMES = list(vocab.BACKGROUNDS)
_BG_RGB = np.array([vocab.BACKGROUNDS[b] for b in _BG_NAMES], np.float32)
_SIZE_NAMES = list(vocab.SIZES)


@dataclass
class Detection:
    colour: str
    shape: str
    x: float
    y: float
    size: float
    area: int
    partial: bool = (
        False  # cut by a border without its wrapped other half: shape and size unreliable
    )


@dataclass
class FrameDetection:
    background: str
    background_rgb: tuple[float, float, float]
    objects: list[Detection] = field(default_factory=list)

    def by_colour(self) -> dict[str, Detection]:
        """The largest detection of each colour."""
        found: dict[str, Detection] = {}
        for d in sorted(self.objects, key=lambda d: d.area):
            found[d.colour] = d
        return found

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [
                {
                    "colour": d.colour,
                    "shape": d.shape,
                    "x": round(d.x, 2),
                    "y": round(d.y, 2),
                    "size": round(d.size, 2),
                    "partial": d.partial,
                }
                for d in self.objects
            ],
        }


def size_class(size: float, frame_side: int) -> str:
    fractions = np.array([vocab.SIZES[s] for s in _SIZE_NAMES])
    return _SIZE_NAMES[int(np.argmin(np.abs(fractions * frame_side - size)))]


@dataclass
class Detector:
    """Detector settings; the defaults hold on renders blurred by sigma 1.5 px plus noise sigma 0.05."""

    # Pixels below this coverage are left to the background before smoothing; the mask itself is
    # the half-level of the smoothed coverage.
    min_coverage: float = 0.25
    smoothing: float = 0.8
    # Residual (RGB units) above which a pixel is explained by no object colour; noise of sigma
    # 0.05 gives residuals around 20, the nearest two palette lines are about 60 apart.
    max_residual: float = 70.0
    # Smallest component kept, as a fraction of the smallest object's area.
    min_area_fraction: float = 0.25

    def __call__(self, frame: np.ndarray) -> FrameDetection:
        """Detect the objects of one RGB frame `(H, W, 3)` uint8."""
        height, width = frame.shape[:2]
        pixels = frame.reshape(-1, 3).astype(np.float32)
        bg_rgb = np.median(pixels, axis=0)
        background = _BG_NAMES[int(np.argmin(((_BG_RGB - bg_rgb) ** 2).sum(1)))]
        labels, coverage = self._label(pixels - bg_rgb, bg_rgb)
        labels = labels.reshape(height, width)

        side = min(height, width)
        min_area = self.min_area_fraction * 0.5 * (vocab.SIZES["small"] * side) ** 2
        objects = []
        for k in np.unique(labels):
            if k < 0:
                continue
            own = coverage[:, k].reshape(height, width)
            # Threshold the *smoothed* coverage at one half: averaging over 3x3 cuts pixel noise
            # threefold while the half-level of a straight edge stays where the edge is.
            assigned = np.where(labels == k, np.clip(own, 0, 1), 0).astype(np.float32)
            mask = cv2.GaussianBlur(assigned, (3, 3), self.smoothing) > 0.5
            # The shape fit weighs every pixel not claimed by another colour, so blurred tails count.
            free = np.where((labels == k) | (labels < 0), own, 0).astype(np.float32)
            objects += _objects_of(mask.astype(np.uint8), free, _COLOUR_NAMES[k], min_area)
        return FrameDetection(background, tuple(float(v) for v in bg_rgb), objects)

    def _label(self, centred: np.ndarray, bg_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour index per pixel (-1: background) and coverage of every colour (N, K); `centred` is (N, 3)."""
        lines = _COLOUR_RGB - bg_rgb  # (K, 3)
        norms = (lines**2).sum(1)  # (K,)
        coverage = centred @ lines.T / norms  # (N, K)
        residual2 = (centred**2).sum(1, keepdims=True) - coverage**2 * norms
        residual2[(coverage < self.min_coverage) | (coverage > 1.6)] = np.inf
        best = residual2.argmin(1)
        rows = np.arange(len(best))
        ok = residual2[rows, best] < self.max_residual**2
        return np.where(ok, best, -1), coverage

    def video(self, frames: Iterable[np.ndarray]) -> list[FrameDetection]:
        """Detect every frame of a stream of `(H, W, 3)` uint8 frames."""
        return [self(f) for f in frames]


def _objects_of(
    mask: np.ndarray, free: np.ndarray, colour: str, min_area: float
) -> list[Detection]:
    """Objects of one colour: `mask` (H, W) marks its pixels, `free` (H, W) is its coverage map."""
    height, width = mask.shape
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not keep:
        return []
    # Union-find over pieces: a piece on the left border and one on the right border whose rows
    # overlap are one object wrapped around the frame (likewise top and bottom).
    parent = {i: i for i in keep}

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    box = {i: stats[i, :4] for i in keep}  # x, y, w, h
    for a in keep:
        for b in keep:
            xa, ya, wa, ha = box[a]
            xb, yb, wb, hb = box[b]
            wraps_x = xa == 0 and xb + wb == width and ya < yb + hb and yb < ya + ha
            wraps_y = ya == 0 and yb + hb == height and xa < xb + wb and xb < xa + wa
            if wraps_x or wraps_y:
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in keep:
        groups.setdefault(root(i), []).append(i)

    detections = []
    for pieces in groups.values():
        ys, xs = np.nonzero(np.isin(comp, pieces))
        wrapped = len(pieces) > 1
        # Unwrap: pieces hugging the far border move one frame back so the object is contiguous.
        if wrapped and xs.min() == 0 and xs.max() == width - 1:
            xs = np.where(xs >= width // 2, xs - width, xs)
        if wrapped and ys.min() == 0 and ys.max() == height - 1:
            ys = np.where(ys >= height // 2, ys - height, ys)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        touches = x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height
        shape, x, y, size = _fit(free, (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0))
        detections.append(
            Detection(colour, shape, x, y, size, int(len(xs)), bool(touches and not wrapped))
        )
    return detections


_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
_BLURS = (0.0, 1.0, 2.0)


def _fit(free: np.ndarray, cx: float, cy: float, extent: int) -> tuple[str, float, float, float]:
    """Fit each shape's template to the coverage around (cx, cy); the best fit's (shape, x, y, size).

    Blur keeps an object's mass, so the mass gives the size of each candidate shape and the mass
    centroid its position (a triangle's box centre sits a sixth of its height above its centroid);
    each candidate is compared blurred by a few amounts, so a blurred square still fits a square
    better than a circle.
    """
    height, width = free.shape
    # Roll the map so the object sits whole in the middle, whatever border it wraps around.
    sx, sy = width // 2 - int(cx), height // 2 - int(cy)
    rolled = np.roll(free, (sy, sx), axis=(0, 1))
    r = extent // 2 + 6
    x0, x1 = max(width // 2 - r, 0), min(width // 2 + r + 1, width)
    y0, y1 = max(height // 2 - r, 0), min(height // 2 + r + 1, height)
    patch = rolled[y0:y1, x0:x1]
    gx = (np.arange(x0, x1, dtype=np.float32) + 0.5)[None, :]
    gy = (np.arange(y0, y1, dtype=np.float32) + 0.5)[:, None]
    weight = np.clip(patch, 0, 1)
    mass = max(float(patch.sum()), 1.0)
    mx = float((weight * gx).sum() / weight.sum())
    my = float((weight * gy).sum() / weight.sum())
    best = None
    for shape, fill in _FILL.items():
        size = math.sqrt(mass / fill)
        by = my - size / 6 if shape == "triangle" else my
        template = shape_coverage(shape, size, gx - mx, gy - by)
        for sigma in _BLURS:
            t = cv2.GaussianBlur(template, (0, 0), sigma) if sigma else template
            err = float(((weight - t) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, shape, (mx - sx) % width, (by - sy) % height, size)
    return best[1:]

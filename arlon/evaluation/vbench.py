"""VBench quality dimensions (Huang et al. 2023, https://arxiv.org/abs/2311.17982), computed offline
on uint8 videos `(T, H, W, 3)` (or a list of `(H, W, 3)` frames):

- dynamic_degree: 1.0 if the video moves (enough consecutive frame pairs with large optical flow),
  else 0.0; over many videos, the fraction that move;
- motion_smoothness: how well each odd frame is re-created by interpolating its even neighbours;
- temporal_flickering: one minus the mean absolute change between consecutive frames (VBench takes
  it on static videos only, where any change is flicker);
- subject_consistency / background_consistency: cosine similarity of each frame's features to the
  first and to the previous frame's.

    backbone = load_backbone("thumbnail")  # or load_backbone("dino", "weights/dino-vitb16")
    report = score_video(frames, backbone=backbone)  # {"dynamic_degree": 1.0, ..., "backbone": ...}

Long videos follow VBench-Long: split into clips of `clip_frames` frames, score each clip, average.
(VBench-Long also cuts at scene changes first, and blends the consistency dimensions with a score
between the clips' first frames; neither is done here.)

What differs from VBench, for lack of network and weights: optical flow is OpenCV's DIS, not RAFT;
frame interpolation is DIS flow and backward warping, not AMT; the consistency features come from a
pluggable backbone, whose default ("thumbnail") is a shape-and-colour descriptor, not DINO or CLIP.
VBench uses DINO for the subject and CLIP for the background; with one backbone the two dimensions
are the same number. Scores are therefore comparable between our own models, not with VBench's
published tables.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from arlon.errors import ArlonError

Frames = np.ndarray | Sequence[np.ndarray]


def _as_frames(frames: Frames, min_frames: int = 2) -> np.ndarray:
    """A video as one uint8 array `(T, H, W, 3)`, with at least `min_frames` frames."""
    video = np.asarray(frames)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ArlonError(
            f"expected uint8 frames (T, H, W, 3), got {video.dtype} of shape {video.shape}"
        )
    if len(video) < min_frames:
        raise ArlonError(f"this measure needs at least {min_frames} frames, got {len(video)}")
    return video


# ------------------------------------------------------------------------------------------------
# Optical flow and frame interpolation
# ------------------------------------------------------------------------------------------------

# DIS follows motions of several pixels only through enough pyramid levels: frames are upscaled to
# this many pixels on the short side before flow (a 32 px frame loses an 8 px move without it).
FLOW_SIDE = 128


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS flow (Kroeger et al. 2016, medium preset) from frame `a` to frame `b`, both `(H, W, 3)`
    uint8; returns `(H, W, 2)` float32 displacements (x, y) in pixels of the input frames."""
    h, w = a.shape[:2]
    scale = max(1.0, FLOW_SIDE / min(h, w))
    size = (round(w * scale), round(h * scale))
    grey = [
        cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_LINEAR)
        for f in (a, b)
    ]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(grey[0], grey[1], None)  # (H', W', 2) in upscaled pixels
    flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA)
    return flow / np.array([size[0] / w, size[1] / h], np.float32)


def interpolate_midframe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The frame halfway between `a` and `b` (`(H, W, 3)` uint8): each is backward-warped to the
    middle and the two averaged. The middle's flow is Super SloMo's estimate at t = 1/2 (Jiang et
    al. 2018, https://arxiv.org/abs/1712.00080), F_mid->a = (F_b->a - F_a->b) / 4, F_mid->b = -F_mid->a."""
    h, w = a.shape[:2]
    to_a = 0.25 * (optical_flow(b, a) - optical_flow(a, b))  # (H, W, 2)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = [
        cv2.remap(
            frame,
            xs + sign * to_a[..., 0],
            ys + sign * to_a[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ).astype(np.float32)
        for frame, sign in ((a, 1.0), (b, -1.0))
    ]
    return np.rint((warped[0] + warped[1]) / 2).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Dimensions read off the pixels
# ------------------------------------------------------------------------------------------------


def dynamic_thresholds(height: int, width: int, num_frames: int) -> tuple[float, int]:
    """VBench's (thres, count_num), scaled from 256 px and 16 frames: a pair of frames moves if its
    flow score exceeds `6 * min(H, W) / 256` pixels; a video moves if `round(4 * T / 16)` pairs do."""
    return 6.0 * min(height, width) / 256.0, round(4 * num_frames / 16)


def flow_scores(frames: Frames) -> np.ndarray:
    """Per consecutive pair, the mean of the largest 5% flow magnitudes, in pixels: `(T - 1,)`."""
    video = _as_frames(frames)
    h, w = video.shape[1:3]
    top = max(1, int(h * w * 0.05))
    scores = []
    for a, b in zip(video[:-1], video[1:], strict=True):
        magnitude = np.linalg.norm(optical_flow(a, b), axis=-1).ravel()
        scores.append(np.partition(magnitude, -top)[-top:].mean())
    return np.asarray(scores, np.float64)


def dynamic_degree(frames: Frames, fps: float = 8.0) -> float:
    """1.0 if the video `(T, H, W, 3)` moves, else 0.0. As in VBench, a video of `fps` frames per
    second is first sampled at about 8 fps (every `round(fps / 8)`-th frame)."""
    video = _as_frames(frames)[:: max(1, round(fps / 8))]
    if len(video) < 2:
        return 0.0
    thres, count_num = dynamic_thresholds(video.shape[1], video.shape[2], len(video))
    return float(np.sum(flow_scores(video) > thres) >= count_num)


def motion_smoothness(frames: Frames) -> float:
    """(255 - MAE) / 255 between each odd frame and the one interpolated from its even
    neighbours, for a video `(T, H, W, 3)`, T >= 3. 1.0: motion as predictable as interpolation."""
    video = _as_frames(frames, min_frames=3)
    evens = video[0::2]
    # an odd last frame has no right neighbour, and VBench leaves it out
    odds = video[1::2][: len(evens) - 1]
    recreated = np.stack(
        [interpolate_midframe(a, b) for a, b in zip(evens[:-1], evens[1:], strict=True)]
    )
    mae = np.abs(recreated.astype(np.int16) - odds.astype(np.int16)).mean()
    return float((255.0 - mae) / 255.0)


def temporal_flickering(frames: Frames) -> float:
    """(255 - MAE) / 255 between consecutive frames of a video `(T, H, W, 3)`. Any change counts,
    motion included: VBench applies it to static videos only, and so should callers."""
    video = _as_frames(frames).astype(np.int16)
    mae = np.abs(video[1:] - video[:-1]).mean()
    return float((255.0 - mae) / 255.0)


# ------------------------------------------------------------------------------------------------
# Feature backbones
# ------------------------------------------------------------------------------------------------


class Backbone(Protocol):
    """Per-frame features: `(T, H, W, 3)` uint8 -> `(T, D)` float, each row of unit L2 norm."""

    name: str

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of `x` `(N, D)` scaled to unit norm; zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ThumbnailBackbone:
    """An offline shape-and-colour descriptor, NOT DINO or CLIP. Per frame: the amplitude spectrum
    of a `size` x `size` area-downsampled thumbnail, each channel's mean removed (what shapes, of
    what sizes, but not where: a shift of the thumbnail keeps its amplitudes), next to a joint RGB
    histogram of `bins`^3 bins (which colours, in what amounts). It sees the colours, sizes and
    rough shapes of a frame's contents, nothing semantic; a moving object keeps its features."""

    def __init__(self, size: int = 16, bins: int = 4):
        self.size, self.bins = size, bins
        self.name = f"thumbnail-{size}"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        video = _as_frames(frames, min_frames=1)
        t = len(video)
        thumbs = np.stack(
            [cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_AREA) for f in video]
        ).astype(np.float32)  # (T, s, s, 3)
        # the mean colour is the histogram's to tell; left in, it would dominate the spectrum
        thumbs -= thumbs.mean(axis=(1, 2), keepdims=True)
        spectrum = np.abs(np.fft.fft2(thumbs, axes=(1, 2)))  # (T, s, s, 3)
        levels = video.astype(np.int64) * self.bins // 256  # (T, H, W, 3) in [0, bins)
        cells = (levels[..., 0] * self.bins + levels[..., 1]) * self.bins + levels[..., 2]
        num_cells = self.bins**3
        offsets = np.arange(t)[:, None] * num_cells
        counts = np.bincount((cells.reshape(t, -1) + offsets).ravel(), minlength=t * num_cells)
        # square roots: the cosine of two histograms is then their Bhattacharyya coefficient
        hist = np.sqrt(counts.reshape(t, num_cells).astype(np.float32))
        # each part normalised alone, so shape and colour weigh the same
        parts = [_l2_normalise(spectrum.reshape(t, -1)), _l2_normalise(hist)]
        return _l2_normalise(np.concatenate(parts, axis=1))  # (T, s*s*3 + bins^3)


class PretrainedBackbone(ABC):
    """A vision transformer from a local folder written by transformers' `save_pretrained`. Frames
    are resized (short side) and centre-cropped to the config's `image_size`, then normalised."""

    kind: str
    example: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        folder = Path(path)
        try:
            # float32 whatever the saved dtype: half precision is slow or missing on CPU
            self.model = self._load(folder).float().to(device).eval()
        except (OSError, ValueError) as error:
            raise ArlonError(
                f"cannot load the {self.kind} backbone from {folder}: it must be a folder saved by "
                f"transformers' save_pretrained, e.g. {self.example} ({error})"
            ) from error
        self.name = f"{self.kind}:{folder.name}"
        self.device, self.batch_size = torch.device(device), batch_size
        self.image_size = int(self.model.config.image_size)

    @abstractmethod
    def _load(self, folder: Path) -> torch.nn.Module:
        """The model saved in `folder`."""

    @abstractmethod
    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(B, 3, S, S)` normalised pixels -> `(B, D)` features."""

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 `(B, H, W, 3)` -> `(B, 3, S, S)` normalised model input."""
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        s = self.image_size
        scale = s / min(h, w)
        size = (max(s, round(h * scale)), max(s, round(w * scale)))
        x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[..., top : top + s, left : left + s].clamp(0, 1)  # bicubic overshoots
        mean, std = (
            torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in (self.mean, self.std)
        )
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        video = _as_frames(frames, min_frames=1)
        features = [
            self._embed(self._pixels(video[i : i + self.batch_size])).float().cpu()
            for i in range(0, len(video), self.batch_size)
        ]
        return _l2_normalise(torch.cat(features).numpy())  # (T, D)


class DinoBackbone(PretrainedBackbone):
    """DINO (VBench's subject-consistency judge) or any ViT `AutoModel`: the CLS token of the last
    hidden state, as `torch.hub`'s `dino_vitb16` returns it."""

    kind, example = "dino", "facebook/dino-vitb16"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    interpolation = "bilinear"

    def _load(self, folder: Path) -> torch.nn.Module:
        # imported here: transformers takes seconds to import, and only these backbones need it
        from transformers import AutoModel

        return AutoModel.from_pretrained(folder, local_files_only=True)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


class ClipBackbone(PretrainedBackbone):
    """CLIP's image embedding (VBench's background-consistency judge, ViT-B/32)."""

    kind, example = "clip", "openai/clip-vit-base-patch32"
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    interpolation = "bicubic"

    def _load(self, folder: Path) -> torch.nn.Module:
        from transformers import AutoConfig, CLIPVisionModelWithProjection

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        # a whole CLIP (text and vision): the projection's width is in the top config only
        if hasattr(config, "vision_config"):
            config.vision_config.projection_dim = config.projection_dim
            config = config.vision_config
        return CLIPVisionModelWithProjection.from_pretrained(
            folder, config=config, local_files_only=True
        )

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


BACKBONES: dict[str, type[ThumbnailBackbone] | type[PretrainedBackbone]] = {
    "thumbnail": ThumbnailBackbone,
    "dino": DinoBackbone,
    "clip": ClipBackbone,
}


def load_backbone(
    name: str, path: str | Path | None = None, device: str | torch.device = "cpu"
) -> Backbone:
    """The backbone `name` of `BACKBONES`; "dino" and "clip" load from the local folder `path`."""
    if name not in BACKBONES:
        raise ArlonError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    factory = BACKBONES[name]
    if not issubclass(factory, PretrainedBackbone):
        if path is not None:
            raise ArlonError(f"the {name} backbone has no weights to load; drop --backbone-path")
        return factory()
    if path is None or not Path(path).is_dir():
        where = "no folder given" if path is None else f"{path} is not a folder"
        raise ArlonError(
            f"the {name} backbone needs its weights ({where}): pass --backbone-path DIR, a folder "
            f"saved by transformers' save_pretrained, e.g. {factory.example}"
        )
    return factory(path, device)


# ------------------------------------------------------------------------------------------------
# Dimensions read off features
# ------------------------------------------------------------------------------------------------


def consistency(features: np.ndarray) -> float:
    """VBench's consistency of unit-norm features `(T, D)`: for each frame after the first, the
    mean of its (negatives clipped) cosine to the first frame and to the previous one; averaged."""
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        raise ArlonError(f"consistency needs at least 2 frames, got {len(f)}")
    to_first = np.maximum(f[1:] @ f[0], 0.0)
    to_previous = np.maximum(np.sum(f[1:] * f[:-1], axis=1), 0.0)
    return float(np.mean((to_first + to_previous) / 2))


def subject_consistency(frames: Frames, backbone: Backbone | None = None) -> float:
    """`consistency` of a video `(T, H, W, 3)` under `backbone` (default: thumbnail)."""
    return consistency((backbone or ThumbnailBackbone())(_as_frames(frames)))


# One formula: VBench tells the two apart by backbone only, DINO for the subject, CLIP for the
# background.
background_consistency = subject_consistency


# ------------------------------------------------------------------------------------------------
# Long videos
# ------------------------------------------------------------------------------------------------

DIMENSIONS: dict[str, Callable[..., float]] = {
    "dynamic_degree": dynamic_degree,
    "motion_smoothness": motion_smoothness,
    "temporal_flickering": temporal_flickering,
    "subject_consistency": subject_consistency,
    "background_consistency": background_consistency,
}
# read per-frame features, which `score_video` computes once per video rather than once per clip
FEATURE_DIMENSIONS = ("subject_consistency", "background_consistency")


def clip_spans(num_frames: int, clip_frames: int = 16) -> list[tuple[int, int]]:
    """VBench-Long's clips as `(start, stop)`: consecutive `clip_frames`-frame clips; a shorter tail
    becomes a full clip ending at the last frame (borrowing from the one before); a video shorter
    than a clip is one clip."""
    if clip_frames < 2:
        raise ArlonError(f"clips need at least 2 frames, got clip_frames={clip_frames}")
    if num_frames <= clip_frames:
        return [(0, num_frames)]
    spans = [(s, s + clip_frames) for s in range(0, num_frames - clip_frames + 1, clip_frames)]
    if spans[-1][1] < num_frames:
        spans.append((num_frames - clip_frames, num_frames))
    return spans


def check_dimensions(names: Sequence[str]) -> None:
    """An error listing the valid names if any of `names` is not a dimension."""
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ArlonError(
            f"unknown VBench dimension(s) {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}"
        )


def score_video(
    frames: Frames,
    names: Sequence[str] | None = None,
    backbone: Backbone | None = None,
    clip_frames: int = 16,
    fps: float = 8.0,
) -> dict[str, float | str]:
    """The dimensions `names` (default: all of `DIMENSIONS`) of a video `(T, H, W, 3)` by the
    VBench-Long protocol: each the mean over `clip_spans(T, clip_frames)` (VBench-Long's clips last
    2 s: 16 frames at 8 fps). Dynamic degree samples each clip at 8 fps given the video's `fps`.
    Returns `{name: score, ..., "backbone": name}`."""
    names = list(DIMENSIONS) if names is None else list(names)
    check_dimensions(names)
    video = _as_frames(frames)
    backbone = backbone or ThumbnailBackbone()
    features = backbone(video) if any(n in FEATURE_DIMENSIONS for n in names) else None
    spans = clip_spans(len(video), clip_frames)
    report: dict[str, float | str] = {}
    for name in names:
        if name in FEATURE_DIMENSIONS:
            scores = [consistency(features[a:b]) for a, b in spans]
        elif name == "dynamic_degree":
            scores = [dynamic_degree(video[a:b], fps) for a, b in spans]
        else:
            scores = [DIMENSIONS[name](video[a:b]) for a, b in spans]
        report[name] = float(np.mean(scores))
    report["backbone"] = backbone.name
    return report

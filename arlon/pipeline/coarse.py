"""The coarse video: AR codes -> fine VQ-VAE decoder -> coarse latent F -> VAE decoder -> frames.

F is what the DiT is guided by; decoded through the VAE it is a video of its own (blurry at paper
scale, close to the data here), which is how the AR alone is judged and debugged:

    frames = coarse_video(sampler, vq, vae, [(0, "a red circle moves right")], num_frames=600)
    for frame in frames: ...          # (H, W, 3) uint8, streamed

Time: the VAE says which latent frame holds a video frame (`latent_of`: ours turns frame s > 0
into latent frame ceil(s / 4), frame 0 alone into latent 0); the fine VQ-VAE codes windows of
`code_window` token frames of r_t latent frames each. The AR generates whole windows; the video is
cut to the frames asked for.

Seams: the windows were coded independently, but each is decoded with `SEAM_CONTEXT` token frames of
its neighbours on either side (the end of the window before, the start of the one after), of which
only its own frames are kept. Decoded alone, an object flips shape or size where one window meets the
next about twice as often as inside a window (docs/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from arlon.errors import ArlonError
from arlon.frames import to_frames
from arlon.timeline import LiveTimeline, Timeline
from arlon.world.prompts import whole_scenes

# Token frames of the neighbouring windows each window is decoded with. On the seventh AR run's
# 600-frame timelines, 2 gains 0.0-0.7 points of identity over 0 on three draws of it (0.3 on
# the true codes); 1, 4 and overlap-added windows do as well within 0.1 points on one draw.
# Decoding 600 frames takes 0.3-0.55 s on one thread with it or without (against 85 s of sampling).
SEAM_CONTEXT = 2


def token_timeline(timeline: Timeline, vae, r_t: int) -> Timeline:
    """A timeline in video frames -> the same in token frames of `r_t` latent frames of `vae`
    (two switches inside one token frame: the later one wins)."""
    by_start: dict[int, str] = {}
    for start, prompt in Timeline.of(timeline):
        by_start[vae.latent_of(start) // r_t] = prompt
    return Timeline(sorted(by_start.items()))


def read_tokens(timeline: Timeline, vae, r_t: int) -> Timeline:
    """A timeline in video frames as the AR reads it: in token frames, each prompt that states
    only a change told as the whole scene (`whole_scenes`)."""
    return token_timeline(whole_scenes(Timeline.of(timeline)), vae, r_t)


def token_start(token: int, vae, r_t: int) -> int:
    """The first video frame of token frame `token` (the inverse of `token_timeline`'s mapping)."""
    return vae.first_frame(token * r_t)


class LiveTokens:
    """A live timeline (video frames) as the AR sampler reads it (token frames): before token frame
    t is drawn, a prompt directed since the last one is recorded at t's first video frame, so
    `token_timeline` of the timeline recorded in the end switches at t too."""

    def __init__(self, live: LiveTimeline, vae, r_t: int):
        self.live, self.vae, self.r_t = live, vae, r_t

    def switch_at(self, frame: int) -> str | None:
        self.live.take(token_start(frame, self.vae, self.r_t))
        return read_tokens(self.live.timeline, self.vae, self.r_t).switch_at(frame)


@torch.inference_mode()
def coarse_latents(
    code_frames: Iterable[torch.Tensor],
    vq,
    code_window: int,
    context: int = SEAM_CONTEXT,
    history: list[torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """Token frames `(h, w)` -> coarse latents `(1, C, code_window * r_t, H, W)`, one VQ window at
    a time. A window's codes are decoded together, as they were encoded, with up to `context` token
    frames of the windows on either side, whose latents are dropped; so a window comes out once
    `context` frames of the next one are in (the last window at the end of the codes). `history`:
    the token frames before `code_frames` (a video being continued), the first window's left
    context."""
    if not 0 <= context <= code_window:
        raise ArlonError(f"context must lie in [0, {code_window}], got {context}")
    history = list(history or [])
    # The left context, the window, the right context so far; the window starts at `start`.
    pending = history[max(0, len(history) - context) :]
    start = len(pending)
    for codes in code_frames:
        pending.append(codes)
        if len(pending) == start + code_window + context:
            yield _decode_window(vq, pending, start, code_window)
            pending = pending[start + code_window - context :]
            start = context
    if len(pending) >= start + code_window:  # the last window, with what there is after it
        yield _decode_window(vq, pending, start, code_window)
        start += code_window
    if len(pending) > start:
        left = len(pending) - start
        raise ArlonError(f"{left} token frames left over: windows hold {code_window}")


def _decode_window(vq, frames: list[torch.Tensor], start: int, code_window: int) -> torch.Tensor:
    """Token frames `(h, w)` decoded together -> the latents of `frames[start:start + code_window]`."""
    r_t = vq.ratio[0]
    latents = vq.decode_codes(torch.stack(frames)[None])  # (1, C, len(frames) * r_t, H, W)
    return latents[:, :, start * r_t : (start + code_window) * r_t]


def windows_for(num_frames: int, vae, r_t: int, code_window: int) -> int:
    """VQ windows needed for `num_frames` video frames of `vae`."""
    return -(-vae.latents_for(num_frames) // (code_window * r_t))


def sample_codes(
    sampler, timelines: list[Timeline], token_frames: int, vae, r_t: int, **bar
) -> list[list[torch.Tensor]]:
    """`token_frames` token frames `(h, w)` for each of `timelines` (in video frames of `vae`),
    drawn together by a sampler with one seed per timeline (`ARSampler(..., seed=[...])`); `bar`:
    tqdm's arguments for a progress bar over token frames."""
    tokens = [read_tokens(t, vae, r_t) for t in timelines]
    frames = list(tqdm(sampler.batch_frames(tokens, token_frames), total=token_frames, **bar))
    return [[frame[i] for frame in frames] for i in range(len(timelines))]


def coarse_video(sampler, vq, vae, timeline: Timeline, num_frames: int) -> Iterator[np.ndarray]:
    """The AR's video for `timeline` (in video frames): `num_frames` frames `(H, W, 3)` uint8, the
    codes drawn by `sampler` as the video streams out."""
    if num_frames < 1:
        raise ArlonError(f"num_frames must be >= 1, got {num_frames}")
    code_window = sampler.model.config.code_window
    r_t = vq.ratio[0]
    windows = windows_for(num_frames, vae, r_t, code_window)
    codes = sampler.frames(read_tokens(timeline, vae, r_t), windows * code_window)
    return coarse_frames(codes, vq, vae, code_window, num_frames)


@torch.inference_mode()
def coarse_frames(
    codes: Iterable[torch.Tensor], vq, vae, code_window: int, num_frames: int
) -> Iterator[np.ndarray]:
    """Token frames `(h, w)` (drawn beforehand, e.g. by `sample_codes`) -> the first `num_frames`
    video frames `(H, W, 3)` uint8 they decode to, through the fine VQ decoder and the VAE."""
    if num_frames < 1:
        raise ArlonError(f"num_frames must be >= 1, got {num_frames}")
    left = num_frames
    for video in vae.decode_stream(coarse_latents(codes, vq, code_window)):
        frames = to_frames(video[0])[:left]  # (t, H, W, 3)
        yield from frames
        left -= len(frames)
        if left == 0:
            return

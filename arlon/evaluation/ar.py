"""How good the AR transformer is on its own: its coarse videos, judged by the world metrics.

- `prompt_eval`: one short coarse video per prompt of the world's vocabulary (captions of held-out
  episodes without events); the world metrics (object accuracy first), and how fast codes come;
- `timeline_eval`: long coarse videos for timelines with caption changes (held-out episodes with
  events); identity persistence, prompt-switch latency, drift.

Both report the onset (`onset_summary`): how long the first caption takes to hold from frame 0, the
same measure as a switch's latency with nothing to switch from; a switch latency far above it means
the old scene lingers, one near it that whole scenes are slow to come right at all.

The coarse video is the fine VQ-VAE's and the VAE's decoding of the codes (`arlon.pipeline.coarse`), so these
numbers include what those two lose (measured alone by `arlon eval recon`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from arlon.evaluation.heldout import HELDOUT_SEED, heldout_episodes, heldout_prompts
from arlon.pipeline.coarse import coarse_frames, sample_codes, windows_for
from arlon.world.metrics import METRICS, Expected, mean_judged, onset_summary, score_video

SamplerFactory = Callable[[int | list[int]], object]  # seed(s) -> ARSampler
BATCH = 25  # videos whose codes are drawn together


def score_coarse_videos(
    make_sampler: SamplerFactory, vq, vae, timelines, num_frames, seed, desc, progress
):
    """World reports of the coarse videos of `timelines` (video i from seed `seed + i`), and the
    seconds generation took (drawing the codes and decoding them)."""
    drawn = draw_codes(make_sampler, vq, vae, timelines, num_frames, seed, desc, progress)
    codes, code_window, drawing = drawn
    reports, decoding = score_codes(codes, code_window, vq, vae, timelines, num_frames, progress)
    return reports, drawing + decoding


def draw_codes(
    make_sampler: SamplerFactory, vq, vae, timelines, num_frames, seed, desc, progress
) -> tuple[list[list], int, float]:
    """The token frames of each of `timelines`, enough for `num_frames` video frames (video i from
    seed `seed + i`; drawn `BATCH` videos at a time, each the codes it would get alone), the AR's
    VQ window (token frames decoded together), and the seconds it took."""
    codes, code_window, seconds = [], None, 0.0
    bar = tqdm(total=len(timelines), desc=desc, unit="video", disable=not progress)
    for first in range(0, len(timelines), BATCH):
        chunk = timelines[first : first + BATCH]
        start = time.perf_counter()
        sampler = make_sampler([seed + first + i for i in range(len(chunk))])
        code_window = sampler.model.config.code_window
        count = windows_for(num_frames, vae, vq.ratio[0], code_window) * code_window
        codes += sample_codes(sampler, chunk, count, vae, vq.ratio[0], disable=True)
        seconds += time.perf_counter() - start
        bar.update(len(chunk))
    bar.close()
    return codes, code_window, seconds


def score_codes(
    codes, code_window, vq, vae, timelines, num_frames, progress=False
) -> tuple[list[dict], float]:
    """World reports of the coarse videos that `codes` (one list of token frames per timeline)
    decode to through `vq` and `vae` (`code_window` token frames at a time), and the seconds
    decoding took."""
    reports, seconds = [], 0.0
    pairs = tqdm(
        list(zip(timelines, codes, strict=True)), desc="scoring", unit="video", disable=not progress
    )
    for timeline, video_codes in pairs:
        start = time.perf_counter()
        frames = list(coarse_frames(video_codes, vq, vae, code_window, num_frames))
        seconds += time.perf_counter() - start
        h, w = frames[0].shape[:2]
        expected = Expected.from_timeline(timeline, num_frames, h, w)
        reports.append(score_video(frames, expected).report())
    return reports, seconds


def prompt_eval(
    make_sampler: SamplerFactory,
    vq,
    vae,
    prompts: int = 100,
    num_frames: int = 64,
    seed: int = HELDOUT_SEED,
    progress: bool = True,
) -> dict:
    """Coarse videos for `prompts` single captions; mean world metrics and generation speed."""
    timelines = heldout_prompts(prompts, seed)
    reports, seconds = score_coarse_videos(
        make_sampler, vq, vae, timelines, num_frames, seed, "AR prompts", progress
    )
    out = {"prompts": prompts, "frames": num_frames}
    out |= {n: mean_judged(r[n] for r in reports) for n in METRICS}
    out |= onset_summary(reports)
    out["seconds_per_video"] = seconds / prompts
    out["frames_per_second"] = prompts * num_frames / seconds
    return out


def timeline_eval(
    make_sampler: SamplerFactory,
    vq,
    vae,
    timelines: int = 20,
    num_frames: int = 600,
    seed: int = HELDOUT_SEED,
    progress: bool = True,
) -> dict:
    """Coarse videos for `timelines` held-out episode timelines (caption changes included)."""
    episodes = [e.timeline for e in heldout_episodes(timelines, num_frames, seed)]
    reports, seconds = score_coarse_videos(
        make_sampler, vq, vae, episodes, num_frames, seed, "AR timelines", progress
    )
    return timeline_summary(reports, num_frames) | {"seconds_per_video": seconds / timelines}


def timeline_summary(reports: list[dict], num_frames: int) -> dict:
    """Mean world metrics and switches of the world reports of videos with caption changes."""
    latencies = [lat for r in reports for lat in r["switch"]["latencies"]]
    return {
        "timelines": len(reports),
        "frames": num_frames,
        "switches": sum(r["switch"]["count"] for r in reports),
        **{n: mean_judged(r[n] for r in reports) for n in METRICS},
        "switched": mean_judged(r["switch"]["switched"] for r in reports),
        "kept": mean_judged(r["switch"]["kept"] for r in reports),
        "switch_latency_median": float(np.median(latencies)) if latencies else None,
        "switch_latency_mean": float(np.mean(latencies)) if latencies else None,
        **onset_summary(reports),
        "object_accuracy_early": mean_judged(
            r["drift"]["early"]["object_accuracy"] for r in reports
        ),
        "object_accuracy_late": mean_judged(r["drift"]["late"]["object_accuracy"] for r in reports),
    }

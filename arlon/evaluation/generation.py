"""Whole generations judged by the world metrics: prompts of the world's vocabulary and timelines
with caption changes, each video streamed from the pipeline straight into the detector.

    report = generation_eval(pipe, prompts=50, timelines=20, num_frames=600, sampling=DiTSampling())

Prompts and timelines come from held-out episodes (seeds disjoint from training), as in
`arlon.evaluation.ar`, so ARLON, its baseline and the AR alone are judged on the same videos.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from arlon.evaluation.heldout import HELDOUT_SEED, heldout_episodes, heldout_prompts
from arlon.models.ar_sampler import ARSampling
from arlon.pipeline.job import DiTSampling
from arlon.world.metrics import METRICS, Expected, mean_judged, onset_summary, score_video

DRIFT = ("object_accuracy", "identity", "motion")  # compared between the first and last quarter


def _score(pipe, timelines, num_frames, sampling, ar_sampling, batch, desc, progress):
    """World reports of the videos of `timelines` (video i from seed i), and the seconds taken.
    ARLON's AR codes are sampled `batch` videos at a time, then each video is rendered alone."""
    reports, seconds = [], 0.0
    height, width = pipe.default_size()
    bar = tqdm(total=len(timelines), desc=desc, unit="video", disable=not progress)
    for first in range(0, len(timelines), batch):
        chunk = timelines[first : first + batch]
        seeds = list(range(first, first + len(chunk)))
        start = time.perf_counter()
        codes = [None] * len(chunk)
        if sampling.mode != "baseline":
            codes = pipe.sample_codes(chunk, num_frames, seeds, ar_sampling, progress=progress)
        for timeline, seed, video_codes in zip(chunk, seeds, codes, strict=True):
            frames = pipe.stream(
                timeline=timeline,
                num_frames=num_frames,
                seed=seed,
                progress=False,
                codes=video_codes,
                sampling=sampling,
            )
            expected = Expected.from_timeline(timeline, num_frames, height, width)
            reports.append(score_video(frames, expected).report())
            bar.update(1)
        seconds += time.perf_counter() - start
    bar.close()
    return reports, seconds


def summarise(reports: list[dict], seconds: float) -> dict:
    """Mean world metrics of many videos' reports, switch latency over all their caption changes,
    drift (early vs late windows), and the mean seconds per video."""
    out = {n: mean_judged(r[n] for r in reports) for n in METRICS}
    latencies = [lat for r in reports for lat in r["switch"]["latencies"]]
    if latencies:
        out["switches"] = len(latencies)
        out["switched"] = mean_judged(r["switch"]["switched"] for r in reports)
        out["kept"] = mean_judged(r["switch"]["kept"] for r in reports)
        out["switch_latency_median"] = float(np.median(latencies))
    out |= onset_summary(reports)
    for window in ("early", "late"):
        for n in DRIFT:
            out[f"{n}_{window}"] = mean_judged(r["drift"][window][n] for r in reports)
    out["seconds_per_video"] = seconds / max(len(reports), 1)
    return out


def generation_eval(
    pipe,
    prompts: int = 50,
    timelines: int = 20,
    num_frames: int = 600,
    sampling: DiTSampling = DiTSampling(),
    ar_sampling: ARSampling = ARSampling(),
    seed: int = HELDOUT_SEED,
    batch: int = 25,
    progress: bool = True,
) -> dict:
    """Mean world metrics of `prompts` single-prompt videos and `timelines` videos whose caption
    changes, `num_frames` frames each (drift: first vs last quarter). `batch`: videos whose AR
    codes are sampled together (the results do not depend on it, up to float rounding)."""
    sampling = pipe.resolved(sampling)
    mode = sampling.mode
    report = {"mode": mode, "steps": sampling.num_inference_steps, "frames": num_frames}
    report["guidance"] = sampling.guidance_scale
    report["strength"] = sampling.strength
    if mode != "baseline":
        report["ar_guidance"] = ar_sampling.guidance_scale
    score = dict(ar_sampling=ar_sampling, batch=batch, progress=progress)
    if prompts:
        single = heldout_prompts(prompts, seed)
        reports, seconds = _score(
            pipe, single, num_frames, sampling, desc=f"{mode} prompts", **score
        )
        report["prompts"] = {"videos": prompts, **summarise(reports, seconds)}
    if timelines:
        changing = [e.timeline for e in heldout_episodes(timelines, num_frames, seed)]
        reports, seconds = _score(
            pipe, changing, num_frames, sampling, desc=f"{mode} timelines", **score
        )
        report["timelines"] = {"videos": timelines, **summarise(reports, seconds)}
    return report

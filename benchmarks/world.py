"""Shapes-world benchmark: rendering and mp4-writing speed, detector speed and accuracy.

    .venv/bin/python benchmarks/world.py                 # prints a table, writes JSON with --out
    .venv/bin/python benchmarks/world.py --clips 200 --out bench_world.json

World metrics are the worst over 10 random 600-frame episodes, scored against their ground truth,
rendered directly and through mp4 (H.264, yuv420p). Detector accuracy is over 200 random clips (every 4th of 16 frames), on clean renders and on renders blurred
(Gaussian, sigma 1.5 px) plus noise (sigma 0.05 of the range); objects that touch another object are
not judged (the ground truth marks them occluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from arlon.data.video_io import VideoWriter, iter_frames
from arlon.world.detect import Detector
from arlon.world.metrics import Expected, compare_to_truth, score_video
from arlon.world.render import degrade, render_frame, render_states
from arlon.world.simulate import episode_from_timeline, random_episode


def render_speed(frames: int) -> float:
    episode = random_episode(0, frames)
    states = list(episode.frames())
    start = time.perf_counter()
    for state in states:
        render_frame(state)
    return frames / (time.perf_counter() - start)


def mp4_speed(frames: int) -> float:
    rendered = list(render_states(random_episode(0, frames).frames()))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "bench.mp4", fps=8) as writer:
            for frame in rendered:
                writer.write_frame(frame)
        return frames / (time.perf_counter() - start)


def mp4_roundtrip_psnr(frames: int, pix_fmt: str) -> float:
    """Mean PSNR (dB) of rendered frames read back from an mp4 written with `pix_fmt`."""
    rendered = np.stack(list(render_states(random_episode(0, frames).frames())))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        with VideoWriter(path, fps=8, pix_fmt=pix_fmt) as writer:
            for frame in rendered:
                writer.write_frame(frame)
        back = np.stack(list(iter_frames(path)))
    mse = ((rendered.astype(np.float64) - back) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def detector_accuracy(clips: int, blur: float = 0.0, noise: float = 0.0) -> dict:
    detector, rng = Detector(), np.random.default_rng(0)
    judged = colour = shape = background = frames = 0
    errors, seconds = [], 0.0
    for seed in range(clips):
        for i, state in enumerate(random_episode(seed, 16, events=False).frames()):
            if i % 4:
                continue
            frame = render_frame(state)
            if blur or noise:
                frame = degrade(frame, rng, blur, noise)
            start = time.perf_counter()
            found = detector(frame)
            seconds += time.perf_counter() - start
            frames += 1
            background += found.background == state.background
            for o, d, error in compare_to_truth(found, state, 64, 64):
                judged += 1
                if d is not None:
                    colour += 1
                    shape += d.shape == o.shape
                    errors.append(error)
    return {
        "objects": judged,
        "colour_accuracy": colour / judged,
        "shape_accuracy": shape / judged,
        "background_accuracy": background / frames,
        "centre_error_mean_px": float(np.mean(errors)),
        "centre_error_p99_px": float(np.percentile(errors, 99)),
        "centre_error_max_px": float(np.max(errors)),
        "frames_per_second": frames / seconds,
    }


def metrics_on_truth(episodes: int, frames: int, through_mp4: bool) -> dict:
    """The lowest value of each world metric over ground-truth renders (directly or via mp4)."""
    lowest: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(episodes):
            episode = random_episode(1000 + seed, frames)
            video = render_states(episode.frames())
            if through_mp4:
                path = Path(tmp) / f"{seed}.mp4"
                with VideoWriter(path, fps=episode.fps) as writer:
                    for frame in video:
                        writer.write_frame(frame)
                video = iter_frames(path)
            report = score_video(video, Expected.from_truth(episode.truth())).report()
            values = {k: v for k, v in report.items() if isinstance(v, float)}
            values["switched"] = report["switch"]["switched"]
            values["median_switch_latency"] = -report["switch"]["median_latency"]
            for k, v in values.items():
                if v is not None:
                    lowest[k] = min(lowest.get(k, v), v)
    lowest["median_switch_latency"] = -lowest["median_switch_latency"]  # worst = highest
    return lowest


def metrics_on_corruptions(episodes: int, frames: int) -> dict:
    """Mean of the metric each corruption should break, over ground-truth renders corrupted so."""
    corruptions = {
        "wrong colour (RGB->BGR): colour": (
            lambda v, rng: [f[..., ::-1].copy() for f in v],
            "colour",
        ),
        "frozen frames: motion": (lambda v, rng: [v[0]] * len(v), "motion"),
        "reversed time: motion": (lambda v, rng: v[::-1], "motion"),
        "shuffled frames: identity": (
            lambda v, rng: [v[i] for i in rng.permutation(len(v))],
            "identity",
        ),
    }
    scores = {name: [] for name in [*corruptions, "switch never happens: switched"]}
    for seed in range(episodes):
        episode = random_episode(2000 + seed, frames)
        expected = Expected.from_truth(episode.truth())
        video = list(render_states(episode.frames()))
        rng = np.random.default_rng(seed)
        for name, (corrupt, metric) in corruptions.items():
            scores[name].append(score_video(corrupt(video, rng), expected).report()[metric])
        stuck = episode_from_timeline(episode.timeline[:1], frames, seed)
        report = score_video(render_states(stuck.frames()), expected).report()
        scores["switch never happens: switched"].append(report["switch"]["switched"])
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--frames", type=int, default=4000, help="frames for the speed runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "render_fps_64x64": render_speed(args.frames),
        "mp4_write_fps_64x64": mp4_speed(args.frames),
        "mp4_roundtrip_psnr_yuv420p": mp4_roundtrip_psnr(600, "yuv420p"),
        "mp4_roundtrip_psnr_yuv444p": mp4_roundtrip_psnr(600, "yuv444p"),
        "detector_clean": detector_accuracy(args.clips),
        "detector_blur1.5_noise0.05": detector_accuracy(args.clips, blur=1.5, noise=0.05),
        "metrics_on_truth_worst_of_10x600": metrics_on_truth(10, 600, through_mp4=False),
        "metrics_on_truth_mp4_worst_of_10x600": metrics_on_truth(10, 600, through_mp4=True),
        "metrics_on_corruptions_mean_of_5x600": metrics_on_corruptions(5, 600),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

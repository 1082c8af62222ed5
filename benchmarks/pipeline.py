"""End-to-end speed and memory of `arlon generate`: frames per second per stage and in all, and peak
memory against video length.

    .venv/bin/python benchmarks/pipeline.py                         # embedded model, 600 frames
    .venv/bin/python benchmarks/pipeline.py --frames 240 2400      # memory: shortest vs longest
    .venv/bin/python benchmarks/pipeline.py --mode baseline --steps 30 --model runs/pipe

Each length runs in a fresh process (peak resident memory is per process) and streams its frames
into an mp4 in a temporary folder, as `arlon generate` does. Prints one JSON line per length and the
ratio of the peaks.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from lengths import run_lengths


def run(args) -> dict:
    import torch

    from arlon.data.video_io import VideoWriter
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    torch.set_num_threads(args.threads)
    pipe = ARLONPipeline.from_pretrained(args.model or ROOT)
    prompt = "a red circle moves right and a blue square moves up on a black background"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frames = pipe.stream(
        prompt,
        num_frames=args.frames[0],
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        mode=args.mode,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "v.mp4", fps=8) as writer:
            for frame in frames:
                writer.write_frame(frame)
        seconds = time.perf_counter() - start
    stages = pipe.last_times.as_dict()["seconds"]
    n = args.frames[0]
    return {
        "frames": n,
        "mode": args.mode,
        "steps": args.steps,
        "threads": args.threads,
        "seconds": round(seconds, 2),
        "frames_per_second": round(n / seconds, 2),
        "realtime_factor_at_8fps": round(n / 8 / seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        "stage_frames_per_second": {
            k: round(n / v, 1) for k, v in stages.items() if k != "total" and v > 0
        },
        "segments": pipe.last_times.segments,
        "rss_after_load_mib": round(before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pipeline folder (default: the embedded one)")
    parser.add_argument("--frames", type=int, nargs="+", default=[600])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--mode", choices=("arlon", "baseline"), default="arlon")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args)))
        return
    argv = ["--steps", str(args.steps), "--guidance", str(args.guidance)]
    argv += ["--mode", args.mode, "--threads", str(args.threads)]
    run_lengths(__file__, args.frames, argv + (["--model", args.model] if args.model else []))


if __name__ == "__main__":
    main()

"""Where the end-to-end switch lag comes from: the same AR codes, as the coarse video and rendered.

    .venv/bin/python benchmarks/render_switches.py --timelines 20 --out runs/render-switches.json

The timelines and seeds are those of `arlon eval generate --timelines 20` (held-out episodes with
events; video i from seed i). The embedded pipeline draws each video's AR codes once; the codes are
then decoded two ways: through the fine VQ-VAE and the VAE alone (the coarse video, what `arlon eval
ar` scores) and by the DiT guided by them (the video `arlon generate` writes). Every caption change
is scored in both, so a switch the codes make and the rendering loses is counted as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timelines", type=int, default=20)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--steps", type=int, default=5, help="the DiT's denoising steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the per-switch records here (JSON)")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from arlon.evaluation.ar import timeline_summary
    from arlon.evaluation.heldout import heldout_episodes
    from arlon.pipeline import ARLONPipeline, DiTSampling
    from arlon.pipeline.coarse import coarse_frames
    from arlon.weights import ROOT
    from arlon.world.metrics import Expected, score_video

    torch.set_num_threads(args.threads)
    pipe = ARLONPipeline.from_pretrained(ROOT)
    # the timelines and seeds of `arlon eval generate` (its `generation_eval`)
    timelines = [e.timeline for e in heldout_episodes(args.timelines, args.frames)]
    seeds = list(range(args.timelines))
    code_window = pipe.ar.config.code_window
    codes = pipe.sample_codes(timelines, args.frames, seeds, progress=True)
    height, width = pipe.default_size()
    reports = {"coarse": [], "rendered": []}
    for timeline, seed, video_codes in tqdm(
        list(zip(timelines, seeds, codes, strict=True)), desc="decode and render"
    ):
        expected = Expected.from_timeline(timeline, args.frames, height, width)
        coarse = coarse_frames(video_codes, pipe.vq, pipe.vae, code_window, args.frames)
        rendered = pipe.stream(
            timeline=timeline,
            num_frames=args.frames,
            sampling=DiTSampling(args.steps),
            seed=seed,
            progress=False,
            codes=video_codes,
        )
        reports["coarse"].append(score_video(coarse, expected).report())
        reports["rendered"].append(score_video(rendered, expected).report())

    records = []
    for c, r in zip(reports["coarse"], reports["rendered"], strict=True):
        for lc, lr in zip(c["switch"]["latencies"], r["switch"]["latencies"], strict=True):
            records.append({"coarse": lc, "rendered": lr})
    # each kind's metrics as `arlon eval ar --timelines` reports them, and its switches within 16
    summary = {
        kind: timeline_summary(kind_reports, args.frames)
        | {"within_16": float(np.mean([x[kind] <= 16 for x in records]))}
        for kind, kind_reports in reports.items()
    }
    # each switch: within 16 frames in the coarse video, in the rendered one, in both
    fast = [(x["coarse"] <= 16, x["rendered"] <= 16) for x in records]
    summary["within_16"] = {
        "both": float(np.mean([c and r for c, r in fast])),
        "coarse only": float(np.mean([c and not r for c, r in fast])),
        "rendered only": float(np.mean([r and not c for c, r in fast])),
        "neither": float(np.mean([not (c or r) for c, r in fast])),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "records": records}, indent=1))


if __name__ == "__main__":
    main()

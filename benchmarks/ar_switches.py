"""Prompt switches of coarse videos, one by one: which kind of caption change takes hold, and how fast.

    .venv/bin/python benchmarks/ar_switches.py --ar runs/ar5/model --timelines 20
    .venv/bin/python benchmarks/ar_switches.py --truth --timelines 20

The timelines are `arlon eval ar`'s (held-out episodes with events, the same seeds). Each caption
change is one world event: an object turns, is recoloured, enters or leaves, or the background
changes. The AR's coarse videos (embedded weights unless `--ar`, CFG 3) are scored per event; with
`--truth`, the episodes' own codes (rendered, written to mp4, encoded by the VAE and the fine VQ-VAE,
decoded) instead: the best any AR could do through this VQ-VAE and VAE.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np


def event(before, after) -> str:
    """The world event between two scene specs."""
    if before.background != after.background:
        return "background"
    if len(after.objects) != len(before.objects):
        return "enter" if len(after.objects) > len(before.objects) else "leave"
    if {o.colour for o in before.objects} != {o.colour for o in after.objects}:
        return "recolour"
    return "turn"


def true_codes(episode, vae, vq, code_window: int, num_frames: int, folder: Path) -> list:
    """Token frames of the episode's own video, enough windows for `num_frames` frames."""
    import torch

    from arlon.coarse import windows_for
    from arlon.data.latent_cache import encode_video, vq_windows
    from arlon.data.video_io import VideoWriter
    from arlon.world.render import render_states

    r_t = vq.ratio[0]
    windows = windows_for(num_frames, vae.temporal_ratio, r_t, code_window)
    # the last segment goes on past num_frames, so every window is whole
    longer = replace(episode, num_frames=1 + vae.temporal_ratio * windows * code_window * r_t)
    path = folder / "episode.mp4"
    with VideoWriter(path, fps=longer.fps) as writer:
        for frame in render_states(longer.frames(), longer.height, longer.width):
            writer.write_frame(frame)
    with torch.inference_mode():
        latents = encode_video(vae, path)
        codes = vq_windows(latents, code_window * r_t, fine=vq)["codes"].long()
    return list(codes.flatten(0, 1)[: windows * code_window])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ar", help="AR transformer folder (default: the embedded one)")
    parser.add_argument("--truth", action="store_true", help="score the episodes' own codes")
    parser.add_argument("--timelines", type=int, default=20)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the per-switch records here (JSON)")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from arlon.coarse import coarse_video, sample_codes, windows_for
    from arlon.evaluation.recon import HELDOUT_SEED
    from arlon.models.ar_sampler import GUIDANCE_SCALE, ARSampler
    from arlon.models.ar_transformer import ARTransformer
    from arlon.models.text_encoder import TextEncoder
    from arlon.weights import load_embedded
    from arlon.world.metrics import Expected, score_video
    from arlon.world.simulate import random_episode

    torch.set_num_threads(args.threads)
    ar = ARTransformer.from_pretrained(args.ar).eval() if args.ar else load_embedded("ar")
    vq, vae = load_embedded("vq"), load_embedded("vae")
    code_window = ar.config.code_window
    episodes = [random_episode((HELDOUT_SEED + 1, i), args.frames) for i in range(args.timelines)]
    if args.truth:
        with tempfile.TemporaryDirectory() as tmp:
            codes = [
                true_codes(e, vae, vq, code_window, args.frames, Path(tmp))
                for e in tqdm(episodes, desc="true codes")
            ]
    else:  # as `arlon eval ar` draws them: video i from seed HELDOUT_SEED + i
        sampler = ARSampler(
            ar,
            TextEncoder.from_pretrained(),
            guidance_scale=GUIDANCE_SCALE,
            seed=[HELDOUT_SEED + i for i in range(len(episodes))],
        )
        count = windows_for(args.frames, vae.temporal_ratio, vq.ratio[0], code_window)
        timelines = [e.timeline for e in episodes]
        codes = sample_codes(
            sampler, timelines, count * code_window, vae.temporal_ratio, vq.ratio[0], desc="codes"
        )
    records = []
    decoder = ARSampler(ar, None)  # only its model's code window is read
    for episode, video_codes in zip(tqdm(episodes, desc="score"), codes, strict=True):
        frames = list(coarse_video(decoder, vq, vae, episode.timeline, args.frames, video_codes))
        expected = Expected.from_timeline(episode.timeline, args.frames, *frames[0].shape[:2])
        report = score_video(frames, expected).report()
        switch = report["switch"]
        events = [event(a, b) for a, b in zip(episode.specs, episode.specs[1:], strict=False)]
        for kind, latency, start in zip(
            events, switch["latencies"], [s for s, _ in episode.timeline[1:]], strict=True
        ):
            records.append({"event": kind, "latency": latency, "start": start})
        records.append({"event": "onset", "latency": report["onset"]["latency"], "start": 0})
    by_kind = defaultdict(list)
    for r in records:
        by_kind[r["event"]].append(r["latency"])
    summary = {
        kind: {
            "count": len(lat),
            "median_latency": float(np.median(lat)),
            "within_16": float(np.mean([x <= 16 for x in lat])),
        }
        for kind, lat in sorted(by_kind.items())
    }
    switches = [r["latency"] for r in records if r["event"] != "onset"]
    summary["all switches"] = {
        "count": len(switches),
        "median_latency": float(np.median(switches)),
        "within_16": float(np.mean([x <= 16 for x in switches])),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "records": records}, indent=1))


if __name__ == "__main__":
    main()

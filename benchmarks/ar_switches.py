"""Prompt switches of coarse videos, one by one: which kind of caption change takes hold, and how fast.

    .venv/bin/python benchmarks/ar_switches.py --ar runs/ar5/model --timelines 20
    .venv/bin/python benchmarks/ar_switches.py --truth --timelines 20
    .venv/bin/python benchmarks/ar_switches.py --timelines 20 --seed 1000 --top-p 0.95
    .venv/bin/python benchmarks/ar_switches.py --timelines 20 --vq runs/vq-dec/model --vq embedded

The timelines are `arlon eval ar`'s (held-out episodes with events, the same seeds unless `--seed`:
then video i is drawn with seed `--seed + i`, another draw of the same timelines). Each caption
change is one world event: an object turns, is recoloured, enters or leaves, or the background
changes. The AR's coarse videos (embedded weights unless `--ar`, CFG 3, temperature and top-p as
given) are scored per event; with `--truth`, the episodes' own codes (rendered, written to mp4,
encoded by the VAE and the fine VQ-VAE, decoded) instead: the best any AR could do through this
VQ-VAE and VAE. The videos' metrics, as `arlon eval ar --timelines` reports them, are printed beside
the switches (with `--truth`: their ceilings). With several `--vq`, the same codes are decoded and
scored through each fine VQ-VAE in turn (with `--truth`, encoded by the first one's encoder): for
decoders that share the embedded one's encoder and codebook.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np


def stats(latencies: list) -> dict:
    """How many switches, their median latency, and how many hold within 16 frames (the goal)."""
    return {
        "count": len(latencies),
        "median_latency": float(np.median(latencies)),
        "within_16": float(np.mean([x <= 16 for x in latencies])),
    }


def true_codes(episode, vae, vq, code_window: int, num_frames: int, folder: Path) -> list:
    """Token frames of the episode's own video, enough windows for `num_frames` frames."""
    import torch

    from arlon.data.latent_cache import encode_video, vq_windows
    from arlon.data.video_io import VideoWriter
    from arlon.pipeline.coarse import windows_for
    from arlon.world.render import render_states

    r_t = vq.ratio[0]
    windows = windows_for(num_frames, vae, r_t, code_window)
    # the last segment goes on past num_frames, so every window is whole
    longer = replace(episode, num_frames=vae.video_frames(windows * code_window * r_t))
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
    parser.add_argument(
        "--vq",
        action="append",
        help="fine VQ-VAE folder, or 'embedded' (the default); repeat to compare decoders",
    )
    parser.add_argument("--timelines", type=int, default=20)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, help="video i's seed is seed + i (default: eval ar's)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (default 1)"
    )
    parser.add_argument("--out", help="also write the per-switch records here (JSON, per --vq)")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from arlon.evaluation.ar import draw_codes, score_codes
    from arlon.evaluation.heldout import HELDOUT_SEED, heldout_episodes
    from arlon.models.ar_sampler import ARSampler, ARSampling
    from arlon.models.ar_transformer import ARTransformer
    from arlon.models.latent_vqvae import LatentVQVAE
    from arlon.models.text_encoder import TextEncoder
    from arlon.weights import load_embedded

    torch.set_num_threads(args.threads)
    ar = ARTransformer.from_pretrained(args.ar).eval() if args.ar else load_embedded("ar")
    vae = load_embedded("vae")
    names = args.vq or ["embedded"]
    vqs = [
        load_embedded("vq") if n == "embedded" else LatentVQVAE.from_pretrained(n).eval()
        for n in names
    ]
    code_window = ar.config.code_window
    # the timelines and seeds of `arlon eval ar` (its `timeline_eval`)
    episodes = heldout_episodes(args.timelines, args.frames)
    timelines = [e.timeline for e in episodes]
    if args.truth:
        with tempfile.TemporaryDirectory() as tmp:
            codes = [
                true_codes(e, vae, vqs[0], code_window, args.frames, Path(tmp))
                for e in tqdm(episodes, desc="true codes")
            ]
    else:
        text_encoder = TextEncoder.from_pretrained()

        sampling = ARSampling(temperature=args.temperature, top_p=args.top_p)

        def make_sampler(seed):
            return ARSampler(ar, text_encoder, sampling, seed)

        seed = HELDOUT_SEED if args.seed is None else args.seed
        codes, _, _ = draw_codes(
            make_sampler, vqs[0], vae, timelines, args.frames, seed, "AR timelines", True
        )
    results = []
    for name, vq in zip(names, vqs, strict=True):
        reports, _ = score_codes(codes, code_window, vq, vae, timelines, args.frames, True)
        results.append({"vq": name, **switches(episodes, reports, args.frames)})
        print(json.dumps({"vq": name, **results[-1]["summary"]}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def switches(episodes, reports, num_frames) -> dict:
    """Per-switch records (event, latency, start) and their summary per kind of event, with the
    videos' metrics beside them (with --truth: the ceiling for each), as `arlon eval ar` reports
    them."""
    from arlon.evaluation.ar import timeline_summary
    from arlon.world.scene import world_event

    records = []
    for episode, report in zip(episodes, reports, strict=True):
        events = [world_event(a, b) for a, b in zip(episode.specs, episode.specs[1:], strict=False)]
        starts = [s for s, _ in episode.timeline[1:]]
        for kind, latency, start in zip(events, report["switch"]["latencies"], starts, strict=True):
            records.append({"event": kind, "latency": latency, "start": start})
        records.append({"event": "onset", "latency": report["onset"]["latency"], "start": 0})
    by_kind = defaultdict(list)
    for r in records:
        by_kind[r["event"]].append(r["latency"])
        if r["event"] != "onset":
            by_kind["all switches"].append(r["latency"])
    summary = {kind: stats(latencies) for kind, latencies in sorted(by_kind.items())}
    summary["videos"] = timeline_summary(reports, num_frames)
    return {"summary": summary, "records": records}


if __name__ == "__main__":
    main()

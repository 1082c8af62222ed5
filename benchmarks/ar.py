"""Speed and memory of AR generation: token frames per second, and peak memory vs video length.

    .venv/bin/python benchmarks/ar.py                     # the embedded AR, 600 and 6,000 frames
    .venv/bin/python benchmarks/ar.py --ar runs/ar/model --frames 600 6000 --guidance 2

Each length runs in a fresh process (peak resident memory is per process), generating the codes of
the whole video and dropping them as they come, as the pipeline does. Prints one JSON line per
length and the ratio of the peaks.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from lengths import run_lengths


def run(args) -> dict:
    import torch

    from arlon.models.ar_sampler import ARSampler, ARSampling
    from arlon.models.ar_transformer import ARTransformer
    from arlon.models.text_encoder import TextEncoder
    from arlon.pipeline.coarse import token_timeline, windows_for
    from arlon.weights import load_embedded

    torch.set_num_threads(args.threads)
    ar = ARTransformer.from_pretrained(args.ar).eval() if args.ar else load_embedded("ar")
    vae, r_t = load_embedded("vae"), 1  # the embedded fine VQ-VAE's token frame: 1 latent frame
    sampling = ARSampling(guidance_scale=args.guidance)
    sampler = ARSampler(ar, TextEncoder.from_pretrained(), sampling, seed=0)
    prompt = "a red circle moves right and a blue square moves up on a black background"
    code_window = ar.config.code_window
    token_frames = windows_for(args.frames[0], vae, r_t, code_window) * code_window
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    for _ in sampler.frames(token_timeline([(0, prompt)], vae, r_t), token_frames):
        pass
    seconds = time.perf_counter() - start
    return {
        "frames": args.frames[0],
        "token_frames": token_frames,
        "tokens": token_frames * ar.tokens_per_frame,
        "seconds": round(seconds, 2),
        "token_frames_per_second": round(token_frames / seconds, 2),
        "video_frames_per_second": round(args.frames[0] / seconds, 2),
        "rss_after_load_mib": round(before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    from arlon.models.ar_sampler import GUIDANCE_SCALE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ar", help="AR transformer folder (default: the embedded one)")
    parser.add_argument("--frames", type=int, nargs="+", default=[600, 6000])
    parser.add_argument(
        "--guidance", type=float, default=GUIDANCE_SCALE, help="CFG scale (default: the pipeline's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args)))
        return
    argv = ["--guidance", str(args.guidance), "--threads", str(args.threads)]
    run_lengths(__file__, args.frames, argv + (["--ar", args.ar] if args.ar else []))


if __name__ == "__main__":
    main()

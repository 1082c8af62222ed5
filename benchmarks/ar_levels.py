"""Drawing an FSQ codebook's codes by level against drawing them from every code's logit.

    .venv/bin/python benchmarks/ar_levels.py --levels 8,8,8,5,5 --threads 1

A by-level head (`model.code_levels`) gives sum(levels) logits; `ARSampler` draws its codes level by
level (`sample_levels`), or, with top-k or top-p, from the prod(levels) logits of the whole codebook.
Both draw the same codes; this times them on the recipe's AR shape (10 layers, 4x4 token frames),
random weights, a two-object prompt, and prints ms per code (best of `--repeats`).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from arlon.models.ar_sampler import ARSampler, ARSampling
from arlon.models.ar_transformer import ar_transformer
from arlon.models.text_encoder import TextEncoder

PROMPT = "a red circle moves right and a blue square moves up on a black background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="8,8,8,5,5", help="FSQ levels, comma-separated")
    parser.add_argument("--token-frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    levels = [int(x) for x in args.levels.split(",")]
    ar = ar_transformer(
        "shapes-tiny-coarse", codebook_size=math.prod(levels), code_levels=levels, num_layers=10
    ).eval()
    text_encoder = TextEncoder.from_pretrained()
    codes = {}
    for mode in ("every code's logit", "level by level"):
        best = math.inf
        for _ in range(args.repeats):
            sampler = ARSampler(ar, text_encoder, ARSampling(), seed=0)
            if mode == "every code's logit":
                sampler.levels = None  # as under top-k or top-p
            start = time.perf_counter()
            frames = torch.stack(list(sampler.frames([(0, PROMPT)], args.token_frames)))
            best = min(best, time.perf_counter() - start)
        codes[mode] = frames
        per_code = 1000 * best / frames.numel()
        print(f"{math.prod(levels)} codes {levels}, {mode}: {per_code:.2f} ms per code")
    same = torch.equal(*codes.values())
    print("same codes" if same else "the codes differ")


if __name__ == "__main__":
    main()

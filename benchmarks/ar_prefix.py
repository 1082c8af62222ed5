"""The AR's refill with the prompt's keys and values kept, against recomputing them every refill.

    .venv/bin/python benchmarks/ar_prefix.py                           # the embedded AR
    .venv/bin/python benchmarks/ar_prefix.py --model DIR/pipeline --token-frames 40 --threads 1

Once the window is full, the sampler refills the KV cache every token frame; the prompt's prefix
depends on nothing after it, so `ARSampler` keeps its keys and values and recomputes only the
history frames. This times both ways, interleaved in one process, the best of `--repeats` each, and
checks that they draw the same codes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

PROMPT = "a red circle moves right on a black background"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="pipeline folder (default: the embedded model)")
    p.add_argument("--token-frames", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    from arlon.models.ar_sampler import ARSampler, ARSampling
    from arlon.pipeline.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    class Recomputed(ARSampler):
        """Every refill computes the prefix again, as the sampler did before 2026-12-04."""

        def _refill(self, prefix, history, first):
            self.last = prefix = self.last if prefix is None else prefix
            return super()._refill(prefix, history, first)

    torch.set_num_threads(args.threads)
    pipe = ARLONPipeline.from_pretrained(args.model or ROOT)
    ar = pipe.ar.float()

    def draw(sampler_class) -> tuple[float, torch.Tensor]:
        sampler = sampler_class(ar, pipe.text_encoder, ARSampling(), seed=0)
        start = time.perf_counter()
        codes = torch.stack(list(sampler.frames([(0, PROMPT)], args.token_frames)))
        return time.perf_counter() - start, codes

    best, codes = {}, {}
    for _ in range(args.repeats):
        for name, sampler_class in (("kept", ARSampler), ("recomputed", Recomputed)):
            seconds, codes[name] = draw(sampler_class)
            best[name] = min(best.get(name, seconds), seconds)
    n = args.token_frames * ar.tokens_per_frame
    report = {f"{name}_ms_per_code": round(s / n * 1000, 3) for name, s in best.items()}
    report["speedup"] = round(best["recomputed"] / best["kept"], 2)
    report["same_codes"] = torch.equal(codes["kept"], codes["recomputed"])
    report |= {"codes": n, "threads": args.threads}
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Does storing an AR transformer in fp16 lose anything? Held-out next-code accuracy and perplexity
of its weights as exported and rounded to fp16 (both computed in fp32).

    .venv/bin/python benchmarks/ar_fp16.py runs/ar2/model --data cache/shapes

The windows are the AR stage's held-out evaluation (every 20th cache entry, 256 windows), as in
training's `eval.csv`.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="AR transformer folder (OUT/model of 'arlon train ar')")
    parser.add_argument("--data", default="cache/shapes", help="latent cache with fine codes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from arlon.models.ar_transformer import ARTransformer
    from arlon.training.config import TrainConfig
    from arlon.training.stages import ARStage

    torch.set_num_threads(args.threads)
    stage = ARStage()
    cfg = TrainConfig(stage="ar", preset="shapes-tiny", data={"cache": args.data})
    model = ARTransformer.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    for name in ("fp32", "fp16"):
        if name == "fp16":
            model = model.half().float()
        print(json.dumps({"weights": name, **stage.evaluate(model, cfg)}))


if __name__ == "__main__":
    main()

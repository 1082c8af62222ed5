"""The DiT's size and speed: parameter counts of every preset by component, and one denoising step's
time and achieved FLOP/s against the machine's own matmul FLOP/s, measured in the same run (as
`arlon bench` does for the embedded model).

    .venv/bin/python benchmarks/dit.py                      # shapes-tiny ARLON, one 9-frame segment
    .venv/bin/python benchmarks/dit.py --model runs/arlon/model --batch 2 --threads 2

FLOPs of a forward pass are counted by `torch.utils.flop_counter` (matmuls, convolutions,
attention); a step of the sampler with classifier-free guidance is a forward of batch 2.
"""

from __future__ import annotations

import argparse
import json

import torch

from arlon.evaluation.bench import dit_efficiency
from arlon.models.stdit import STDIT_PRESETS, STDiT, stdit


def components(model: STDiT) -> dict[str, int]:
    """Parameters per component."""
    groups = {
        "x_embedder": model.x_embedder,
        "t_embedder + t_block": [model.t_embedder, model.t_block],
        "y_embedder (caption, null)": model.y_embedder,
        "spatial blocks": [b for b in model.blocks if not b.temporal],
        "temporal blocks": [b for b in model.blocks if b.temporal],
        "final_layer": model.final_layer,
    }

    def count(modules, skip_injection=True) -> int:
        modules = modules if isinstance(modules, list) else [modules]
        return sum(
            p.numel()
            for m in modules
            for n, p in m.named_parameters()
            if not (skip_injection and n.startswith("injection."))
        )

    out = {name: count(m) for name, m in groups.items()}
    out["backbone"] = sum(out.values())
    if model.condition_path is not None:
        out["condition path (projection, adapters)"] = count(model.condition_path)
        out["injections"] = sum(count(b.injection, False) for b in model.injected_blocks())
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a DiT folder (default: a fresh shapes-tiny ARLON model)")
    parser.add_argument("--batch", type=int, default=2, help="batch (2: a step with CFG)")
    parser.add_argument("--frames", type=int, default=9, help="latent frames of a segment")
    parser.add_argument("--size", type=int, default=8, help="latent height and width")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    for preset in STDIT_PRESETS:
        with torch.device("meta"):
            counts = {
                "baseline": components(stdit(preset)),
                "arlon": components(stdit(preset, arlon=True)),
            }
        print(json.dumps({"preset": preset, "parameters": counts}))

    model = STDiT.from_pretrained(args.model) if args.model else stdit("shapes-tiny", arlon=True)
    report = {"model": args.model or "shapes-tiny (arlon)"}
    report |= dit_efficiency(model, args.batch, args.frames, args.size, args.repeats)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""`arlon bench`: speed and memory of generation per stage and length, the DiT against FLOP/s;
`arlon bench --preset opensora-1.2 --dry-run`: a paper-scale preset's costs, counted on no weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from arlon.cli.common import add_ar_args, ar_settings, positive_int
from arlon.cli.generate import MODES
from arlon.errors import ArlonError

DRY_RUN_PRESETS = ("opensora-1.2",)  # arlon.evaluation.paper_scale.PRESETS, without importing torch


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "bench",
        help="speed and memory: generation per stage and vs length, DiT FLOP/s, training",
        description="Measure `arlon generate` end to end and per stage at each length (each in a "
        "fresh process: peak memory is per process), each stage's FLOP/s against this machine's "
        "matmul FLOP/s measured in the same run, the AR's ms per code on its fast path against "
        "its reference path (and that both draw the same codes), and each stage's training "
        "samples/s. Prints JSON lines and a table, and writes bench.json and bench.md to --out.",
    )
    p.add_argument(
        "--lengths",
        type=positive_int,
        nargs="+",
        default=[120, 600, 2400],
        help="video lengths in frames (default 120 600 2400)",
    )
    p.add_argument("--steps", type=positive_int, default=5, help="DiT steps (default 5)")
    p.add_argument("--mode", choices=MODES, default="arlon")
    p.add_argument("--model", type=Path, help="pipeline folder (default: the embedded one)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="cores (default 2): a generation splits them as arlon generate does",
    )
    p.add_argument(
        "--no-overlap", action="store_true", help="generate with the AR and the DiT taking turns"
    )
    add_ar_args(p, prefix="ar-")  # the AR's sampling, as `arlon generate` takes it
    p.add_argument("--train-data", type=Path, help="latent cache for the training speeds")
    p.add_argument("--train-steps", type=positive_int, default=6, help="steps timed per stage")
    p.add_argument("--no-train", action="store_true", help="skip the training speeds")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench"),
        help="folder for bench.json and bench.md (default runs/bench)",
    )
    p.add_argument(
        "--preset",
        choices=DRY_RUN_PRESETS,
        help="with --dry-run: a paper-scale preset, its models built on the meta device",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="count instead of measuring: parameters, FLOPs per training and sampling step, "
        "activation memory per sample, GPUs for --batch (writes dry-run.json and dry-run.md)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        default=64,
        help="with --dry-run: the global training batch the GPU count is for (default 64)",
    )
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    if args.dry_run != (args.preset is not None):
        raise ArlonError("--dry-run and --preset go together: a preset is counted, not measured")
    if args.dry_run:
        _dry_run(args)
        return
    from arlon.evaluation.bench import BenchSettings, markdown
    from arlon.evaluation.bench import run_bench as run
    from arlon.pipeline import ARSampling, DiTSampling

    settings = BenchSettings(
        model=args.model,
        lengths=tuple(args.lengths),
        sampling=DiTSampling(args.steps, mode=args.mode),
        ar_sampling=ARSampling(**ar_settings(args, prefix="ar_")),
        threads=args.threads,
        overlap=not args.no_overlap,
        train_data=args.train_data,
        train_steps=args.train_steps,
        train=not args.no_train,
    )
    print(markdown(run(settings, args.out)))


def _dry_run(args: argparse.Namespace) -> None:
    from arlon.evaluation.paper_scale import DryRun, dry_run, dry_run_markdown
    from arlon.utils import atomic_path, write_json

    report = dry_run(DryRun(args.preset, global_batch=args.batch))
    table = dry_run_markdown(report)
    write_json(args.out / "dry-run.json", report)
    with atomic_path(args.out / "dry-run.md") as tmp:
        tmp.write_text(table)
    print(table, end="")

"""The done-when numbers of the coarse design (an AR on coarse tokens, a DiT that adds the
detail), each with its measurement and a verdict, read from what `arlon eval --suite` and `arlon
bench` wrote:

    arlon eval --suite short --run arlon@5 --run ar-only --run baseline@30:g1 \\
        --run baseline@30:g3 --run baseline@30:g5 --out runs/eval/short
    arlon eval --suite long-600 --run arlon@5 --run ar-only --run baseline@30:g3 --out runs/eval/long-600
    arlon eval --suite stories --run arlon@5 --run ar-only --run baseline@30:g3 --out runs/eval/stories
    arlon bench --lengths 240 600 2400 --no-train --out runs/eval/bench
    python benchmarks/targets.py runs/eval/short runs/eval/long-600 runs/eval/stories \\
        --bench runs/eval/bench [--model PIPELINE]

Every mode is taken at its best guidance and strength (`arlon.evaluation.claims.best_runs`):
ARLON's best run at 5 denoising steps or fewer, the baseline's at 30.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arlon.evaluation.claims import arlon_at_few_steps, best_runs, pct, read_summaries
from arlon.pipeline import ARLONPipeline
from arlon.weights import ROOT
from arlon.world.metrics import METRICS

SINGLE = {"object_accuracy": 0.85, "colour": 0.97, "shape": 0.92, "motion": 0.90}  # short
CHANGING = {"identity": 0.92, "switched": 0.90, "kept": 0.90}  # long-600 and stories
LATENCY = 12  # frames, median over the switches
SECONDS_600 = 19.0  # `arlon generate PROMPT --frames 600` with the defaults
PEAK_RATIO = 1.15  # peak memory at 2,400 frames against 240
MODEL_MB = 40.0


def suite_targets(summary: dict) -> list[tuple[str, str, bool | None]]:
    """`(target, numbers, holds)` for one suite's summary (None: it lacks what the target needs)."""
    name, runs = summary["suite"], best_runs(summary)
    arlon, coarse, base = (
        arlon_at_few_steps(runs),
        runs.get(("ar-only", None)),
        runs.get(("baseline", 30)),
    )
    rows = []
    if arlon is None:
        return [(f"{name}: an ARLON run at 5 steps or fewer", "none in this suite", None)]
    if coarse is not None:
        for metric in ("object_accuracy", "shape"):
            a, c = arlon.get(metric), coarse.get(metric)
            ok = None if None in (a, c) else a >= c + 0.05
            rows.append(
                (f"{name}: ARLON {metric} >= AR-only's + 5 points", f"{pct(a)} vs {pct(c)}", ok)
            )
        for metric in ("motion", "identity"):
            a, c = arlon.get(metric), coarse.get(metric)
            ok = None if None in (a, c) else a >= c
            rows.append((f"{name}: ARLON {metric} >= AR-only's", f"{pct(a)} vs {pct(c)}", ok))
    if base is not None:
        pairs = [(m, arlon.get(m), base.get(m)) for m in METRICS]
        pairs = [(m, a, b) for m, a, b in pairs if a is not None and b is not None]
        worse = [f"{m} {pct(a)} vs {pct(b)}" for m, a, b in pairs if a < b]
        numbers = "; ".join(worse) if worse else f"{len(pairs)} metrics, none below"
        rows.append((f"{name}: ARLON >= the baseline at 30 on every metric", numbers, not worse))
    if name == "short":
        for metric, floor in SINGLE.items():
            value = arlon.get(metric)
            ok = None if value is None else value >= floor
            rows.append((f"short: ARLON {metric} >= {pct(floor)}", pct(value), ok))
    if summary["frames"] >= 600 or name == "stories":
        for metric, floor in CHANGING.items():
            value = arlon.get(metric)
            ok = None if value is None else value >= floor
            rows.append((f"{name}: ARLON {metric} >= {pct(floor)}", pct(value), ok))
        latency = arlon.get("switch_latency_median")
        ok = None if latency is None else latency <= LATENCY
        rows.append((f"{name}: median switch latency <= {LATENCY} frames", f"{latency}", ok))
    return rows


def bench_targets(report: dict) -> list[tuple[str, str, bool | None]]:
    runs = {r["frames"]: r for r in report["generation"]["runs"]}
    rows = []
    if 600 in runs:
        run = runs[600]
        numbers = f"{run['seconds']} s; matmul {run['matmul_gflops']} GFLOP/s"
        rows.append((f"600 frames in <= {SECONDS_600:g} s", numbers, run["seconds"] <= SECONDS_600))
    if 240 in runs and 2400 in runs:
        ratio = runs[2400]["peak_rss_mib"] / runs[240]["peak_rss_mib"]
        numbers = f"{ratio:.3f} ({runs[2400]['peak_rss_mib']} / {runs[240]['peak_rss_mib']} MiB)"
        rows.append(
            (f"peak memory at 2,400 frames <= {PEAK_RATIO}x 240's", numbers, ratio <= PEAK_RATIO)
        )
    return rows


def model_targets(folder: Path) -> list[tuple[str, str, bool | None]]:
    pipe = ARLONPipeline.from_pretrained(folder)
    per_frame = pipe.ar.tokens_per_frame / (pipe.vq.ratio[0] * pipe.temporal_ratio)
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20
    return [
        ("the AR's codes per video frame <= 4", f"{per_frame:g}", per_frame <= 4),
        (f"the model's weights < {MODEL_MB:g} MB", f"{size:.1f} MB", size < MODEL_MB),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", type=Path, help="`arlon eval --suite` output folders")
    parser.add_argument("--bench", type=Path, help="an `arlon bench` output folder")
    parser.add_argument(
        "--model", type=Path, default=ROOT, help="pipeline folder (default: embedded)"
    )
    args = parser.parse_args()
    rows = model_targets(args.model)
    for summary in read_summaries(args.suites):
        rows += suite_targets(summary)
    if args.bench is not None:
        rows += bench_targets(json.loads((args.bench / "bench.json").read_text()))
    print("| target | measured | verdict |\n|---|---|---|")
    for target, numbers, ok in rows:
        print(f"| {target} | {numbers} | **{ {True: 'met', False: 'not met', None: '-'}[ok] }** |")


if __name__ == "__main__":
    main()

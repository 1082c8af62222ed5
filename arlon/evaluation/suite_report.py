"""A suite's report: mean scores per run, a markdown table, and PNG plots.

runs = plan.runs(pipe.resolved)
summary = summarise_suite(out, "short", runs, videos=50, frames=120, backbone="thumbnail")
write_report(summary, out)              # out/metrics.json, metrics.md, *.png
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from arlon.evaluation import vbench
from arlon.evaluation.generation import summarise
from arlon.utils import atomic_path
from arlon.world.metrics import mean_judged

WINDOWS = 8  # windows of time for the metrics-over-time curves
OVER_TIME = ("object_accuracy", "identity", "motion")


def video_path(out: Path, label: str, index: int) -> Path:
    """Where a suite run writes the scores of one video (`label`: the run's, e.g. arlon-5-g1)."""
    return out / "videos" / label / f"{index:04d}.json"


def summarise_suite(
    out: Path, name: str, runs, videos: int, frames: int, backbone: str, tokens: str = "ar"
) -> dict:
    """Mean scores per run (`suite.Run`) of the videos written in `out`; `tokens` "truth": drawn
    from the scenes' true tokens, not the AR's (`suite.TOKENS`)."""
    summaries = []
    for run in runs:
        reports = [json.loads(video_path(out, run.label, i).read_text()) for i in range(videos)]
        summaries.append(asdict(run) | _summarise_run(reports))
    return {
        "suite": name,
        "frames": frames,
        "videos": videos,
        "backbone": backbone,
        "tokens": tokens,
        "date": time.strftime("%Y-%m-%d"),
        "runs": summaries,
    }


def _summarise_run(reports: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in reports)
    world = [r["world"] for r in reports if r["world"] is not None]
    run = {"videos": len(reports), "world_videos": len(world)}
    if world:
        run |= summarise(world, seconds)
        judged = [r["over_time"] for r in reports if r["world"] is not None]
        run["over_time"] = {
            k: [mean_judged(w[j][k] for w in judged) for j in range(WINDOWS)] for k in OVER_TIME
        }
    run["seconds_per_video"] = seconds / len(reports)
    dims = [r["vbench"] for r in reports]
    for dim in vbench.DIMENSIONS:
        if all(dim in d for d in dims):
            run[dim] = float(np.mean([d[dim] for d in dims]))
    if "temporal_flickering" in run and "dynamic_degree" in run:
        # VBench scores flickering on static videos only; over all of them, motion counts as
        # flicker too (what the 'static' suite's prompts, all at rest, want to see)
        run["temporal_flickering_all"] = run["temporal_flickering"]
        static = [d["temporal_flickering"] for d in dims if d["dynamic_degree"] == 0]
        run["temporal_flickering"] = float(np.mean(static)) if static else None
        run["static_videos"] = len(static)
    run["seam_ratio"] = mean_judged(r["seams"]["ratio"] for r in reports)
    return run


TABLE = (
    ("object acc.", "object_accuracy", 100),
    ("precision", "precision", 100),
    ("colour", "colour", 100),
    ("shape", "shape", 100),
    ("motion", "motion", 100),
    ("count", "count", 100),
    ("identity", "identity", 100),
    ("background", "background", 100),
    ("unchanged", "unchanged", 100),
    ("switched", "switched", 100),
    ("kept", "kept", 100),
    ("switch lat.", "switch_latency_median", 1),
    ("dynamic", "dynamic_degree", 100),
    ("smooth", "motion_smoothness", 100),
    ("flicker (static)", "temporal_flickering", 100),
    ("flicker (all)", "temporal_flickering_all", 100),
    ("subject", "subject_consistency", 100),
    ("bg consist.", "background_consistency", 100),
    ("seam ratio", "seam_ratio", 1),
    ("s/video", "seconds_per_video", 1),
)


def markdown_table(summary: dict) -> str:
    """One row per run (mode, steps, guidance, strength); accuracies and VBench-style scores in %."""
    head = ["mode", *SETTINGS, *(name for name, _, _ in TABLE)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in summary["runs"]:
        settings = (_setting(run, k) for k in SETTINGS)
        cells = [run["mode"], *("-" if v is None else f"{v:g}" for v in settings)]
        for _, key, scale in TABLE:
            value = run.get(key)
            cells.append("-" if value is None else f"{value * scale:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{summary['suite']}: {summary['videos']} videos x {summary['frames']} frames; "
        f"consistency backbone {summary['backbone']}; {summary['date']}.\n"
    )
    if summary.get("tokens") == "truth":
        note += (
            "The true tokens of each scene in place of the AR's: a ceiling, not a result "
            "(seconds without the AR's).\n"
        )
    return "\n".join(lines) + "\n" + note


SETTINGS = ("steps", "guidance", "strength")


def _setting(run: dict, key: str) -> float | None:
    """A run's DiT setting; None for AR-only (no DiT); strength 1 for summaries older than it."""
    if run["steps"] is None:
        return None
    return run.get(key, 1.0)


def label(run: dict) -> str:
    """A run's short name in plots: `arlon @5 g2`, `arlon @5 g1 s0.6`, `ar-only`."""
    if run["steps"] is None:
        return run["mode"]
    name = f"{run['mode']} @{run['steps']} g{run['guidance']:g}"
    return name + _strength(_setting(run, "strength"))


def _strength(strength: float) -> str:
    """` s0.6` after a run's name, nothing at strength 1 (from noise, as before strengths)."""
    return "" if strength == 1 else f" s{strength:g}"


def write_report(summary: dict, out: Path) -> None:
    """`metrics.json`, `metrics.md` and the PNG plots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text(markdown_table(summary))
    plot(summary, out)


def plot(summary: dict, out: Path) -> list[Path]:
    """Quality vs steps per mode, each world metric over time, and the seam ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, written = summary["runs"], []
    lines = list(dict.fromkeys((r["mode"], r["guidance"], r.get("strength", 1.0)) for r in runs))
    keys = [
        ("object_accuracy", "object accuracy"),
        ("motion", "motion accuracy"),
        ("identity", "identity persistence"),
        ("dynamic_degree", "dynamic degree"),
        ("subject_consistency", f"subject consistency ({summary['backbone']})"),
        ("motion_smoothness", "motion smoothness"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        for mode, guidance, strength in lines:
            points = [
                (r["steps"], r.get(key))
                for r in runs
                if (r["mode"], r["guidance"], r.get("strength", 1.0)) == (mode, guidance, strength)
                and r.get(key) is not None
            ]
            if points and points[0][0] is None:  # no DiT, no steps: a level to compare with
                ax.axhline(points[0][1], color="k", ls="--", lw=1, label=mode)
            elif points:
                name = f"{mode} g{guidance:g}{_strength(strength)}"
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("denoising steps")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"{summary['suite']}: quality vs steps ({summary['frames']} frames)")
    fig.tight_layout()
    written.append(_save(fig, out / "quality_vs_steps.png"))

    timed = [r for r in runs if "over_time" in r]
    if timed:
        fig, axes = plt.subplots(1, len(OVER_TIME), figsize=(4 * len(OVER_TIME), 3.5))
        centres = (np.arange(WINDOWS) + 0.5) / WINDOWS * summary["frames"]
        for ax, key in zip(axes, OVER_TIME, strict=True):
            for r in timed:
                values = [np.nan if v is None else v for v in r["over_time"][key]]
                ax.plot(centres, values, marker=".", label=label(r))
            ax.set_xlabel("frame")
            ax.set_title(key, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{summary['suite']}: world metrics over time")
        fig.tight_layout()
        written.append(_save(fig, out / "over_time.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [label(r).replace(" ", "\n", 1) for r in runs]
    ax.bar(labels, [r["seam_ratio"] or 0 for r in runs])
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_ylabel("change at seams / inside")
    ax.set_title(f"{summary['suite']}: seam ratio (1: seams invisible)", fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, out / "seam_ratio.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path

"""Evaluation suites: files of prompts and timelines -> generations -> one report.

    arlon eval --suite short --mode arlon,baseline --steps 1,3,5,10,30 --out runs/suite/short

    suite = read_suite("long-600")                        # a packaged suite, or any file
    report = run_suite(pipe, suite, ["arlon"], [5], Path("runs/suite/long-600"))

Each video is scored with the world metrics (when its prompts are in the world's vocabulary: other
prompts, such as VBench's, still run and get the VBench-style dimensions only), each world metric
over `WINDOWS` equal windows of time, the VBench-style dimensions (`arlon.evaluation.vbench`, long-video
protocol), and the seam ratio: the mean frame change across the DiT's segment seams over the mean
change inside segments (1: seams do not show). A video's scores are written to
`OUT/videos/MODE-STEPS/INDEX.json` as soon as it is done, so a re-run skips finished videos; then
`metrics.json`, `metrics.md` and PNG plots summarise them all.

A suite file (`.txt`) holds one video per line, `PROMPT`, or a timeline of `START_FRAME<TAB>PROMPT`
lines (a start of 0 begins a new timeline); `# frames: N` sets the suite's default length; blank
lines and other `#` lines are skipped. So VBench's prompt lists (one prompt per line) are suites as
they are, and so is VBench's `VBench_full_info.json` (a list of `{"prompt_en": ...}`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from arlon.errors import ArlonError
from arlon.evaluation import vbench
from arlon.evaluation.generation import summarise
from arlon.evaluation.heldout import HELDOUT_SEED
from arlon.pipeline.pipeline import MODES, DiTSampling
from arlon.timeline import Timeline
from arlon.utils import atomic_path
from arlon.world.captions import describe
from arlon.world.metrics import Expected, mean_judged, score_video
from arlon.world.simulate import random_episode

SUITES = Path(__file__).parent / "suites"
WINDOWS = 8  # windows of time for the metrics-over-time curves
OVER_TIME = ("attribute", "identity", "motion", "rerender_psnr")


@dataclass
class Suite:
    name: str
    videos: list[Timeline]  # in video frames
    frames: int  # the default length of each video


def packaged_suites() -> list[str]:
    return sorted(p.stem for p in SUITES.glob("*.txt"))


def read_suite(source: str | Path) -> Suite:
    """A packaged suite by name, or a suite file (`.txt`, or VBench's `.json` prompt list)."""
    path = Path(source)
    if not path.is_file():
        if str(source) not in packaged_suites():
            raise ArlonError(
                f"no suite {str(source)!r}: give a suite file or one of {', '.join(packaged_suites())}"
            )
        path = SUITES / f"{source}.txt"
    if path.suffix == ".json":
        return _read_vbench_json(path)
    videos: list[Timeline] = []
    frames, current = 120, None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            if m := re.fullmatch(r"#\s*frames:\s*(\S+)", text):
                if not m.group(1).isdigit() or int(m.group(1)) < 1:
                    raise ArlonError(f"{path}:{n}: '# frames:' takes a positive integer")
                frames = int(m.group(1))
            continue
        start, tab, prompt = line.partition("\t")
        if not tab:
            videos.append([(0, text)])
            current = None
            continue
        if not start.strip().isdigit() or not prompt.strip():
            raise ArlonError(f"{path}:{n}: expected 'PROMPT' or 'START_FRAME<TAB>PROMPT': {line!r}")
        start = int(start)
        if start == 0:
            current = [(0, prompt.strip())]
            videos.append(current)
        elif current is None or start <= current[-1][0]:
            raise ArlonError(
                f"{path}:{n}: start frame {start} does not continue a timeline (a timeline begins "
                "at 0 and its start frames increase)"
            )
        else:
            current.append((start, prompt.strip()))
    if not videos:
        raise ArlonError(f"{path}: no prompt in the suite")
    return Suite(path.stem, videos, frames)


def _read_vbench_json(path: Path) -> Suite:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArlonError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(entries, list):
        raise ArlonError(f"{path}: expected a list of {{'prompt_en': ...}} entries")
    videos = []
    for i, entry in enumerate(entries):
        prompt = entry.get("prompt_en") if isinstance(entry, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ArlonError(f"{path}: entry {i} has no 'prompt_en' text")
        videos.append([(0, prompt.strip())])
    if not videos:
        raise ArlonError(f"{path}: no prompt in the suite")
    return Suite(path.stem, videos, 120)


# ------------------------------------------------------------------------------------------------
# The packaged suites (held-out seeds: none of these episodes was trained on)
# ------------------------------------------------------------------------------------------------


def build_packaged_suites() -> dict[str, str]:
    """The text of each packaged suite, rebuilt from its seeds (the files in `SUITES` are this)."""

    def prompts(seed, count: int, heldout_words: bool = False, still: bool = False) -> list[str]:
        out = []
        for i in range(count):
            episode = random_episode((seed, i), 2, events=False)
            spec = episode.specs[0]
            if still:  # the same scene, every object at rest: what temporal flickering is for
                objects = tuple(replace(o, motion="still", speed=None) for o in spec.objects)
                spec = replace(spec, objects=objects)
            if heldout_words or still:
                rng = np.random.default_rng([seed, i, 1])
                out.append(describe(spec, rng, heldout=heldout_words))
            else:
                out.append(episode.timeline[0][1])
        return out

    def timelines(seed, count: int, frames: int) -> list[str]:
        blocks = []
        for i in range(count):
            timeline = random_episode((seed, i), frames).timeline
            blocks.append("\n".join(f"{start}\t{prompt}" for start, prompt in timeline))
        return blocks

    def text(title: str, frames: int, entries: list[str], separator: str) -> str:
        return f"# {title}\n# frames: {frames}\n" + separator.join(entries) + "\n"

    return {
        "short": text(
            "50 prompts of the world's vocabulary (held-out episodes)",
            120,
            prompts(HELDOUT_SEED, 50),
            "\n",
        ),
        "paraphrase": text(
            "30 prompts worded only with held-out words (never in a training caption)",
            120,
            prompts(HELDOUT_SEED + 2, 30, heldout_words=True),
            "\n",
        ),
        "static": text(
            "20 prompts whose objects all stay still (temporal flickering is scored on static videos)",
            120,
            prompts(HELDOUT_SEED + 4, 20, still=True),
            "\n",
        ),
        "long-600": text(
            "20 timelines with caption changes, 600 frames",
            600,
            timelines(HELDOUT_SEED + 1, 20, 600),
            "\n\n",
        ),
        "long-2400": text(
            "10 timelines with caption changes, 2,400 frames",
            2400,
            timelines(HELDOUT_SEED + 3, 10, 2400),
            "\n\n",
        ),
    }


# ------------------------------------------------------------------------------------------------
# Scoring one video
# ------------------------------------------------------------------------------------------------


def seam_ratio(frames: np.ndarray, seams: list[int]) -> dict:
    """Mean absolute change between frames t and t + 1 at the seams (t in `seams`) and elsewhere;
    frames `(T, H, W, 3)` uint8. The ratio is None without seams or without change elsewhere."""
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # (T - 1,)
    at = np.zeros(len(change), bool)
    at[[t for t in seams if t < len(change)]] = True
    if not at.any() or at.all():
        return {"ratio": None, "at_seams": None, "inside": None}
    inside, across = float(change[~at].mean()), float(change[at].mean())
    return {
        "ratio": across / inside if inside > 0 else None,
        "at_seams": across,
        "inside": inside,
    }


def score_one(
    frames: np.ndarray, timeline: Timeline, seams: list[int], backbone, dimensions=None
) -> dict:
    """Every score of one video `(T, H, W, 3)` uint8 made for `timeline` (VBench-style: the
    `dimensions`, default all)."""
    n, h, w = frames.shape[:3]
    out = {"frames": n, "timeline": timeline}
    try:
        expected = Expected.from_timeline(timeline, n, h, w)
    except ArlonError as e:  # a prompt outside the world: nothing for the world metrics to judge
        out["world"], out["world_skipped"] = None, str(e)
    else:
        score = score_video(frames, expected)
        out["world"] = score.report()
        edges = np.linspace(0, n, WINDOWS + 1).round().astype(int)
        out["over_time"] = [
            {k: v for k, v in score.summary(a, b).items() if k in OVER_TIME}
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    out["vbench"] = vbench.score_video(frames, dimensions, backbone)
    out["seams"] = seam_ratio(frames, seams)
    return out


# ------------------------------------------------------------------------------------------------
# Running a suite
# ------------------------------------------------------------------------------------------------


def run_suite(
    pipe,
    suite: Suite,
    modes: list[str],
    steps: list[int],
    out: Path,
    frames: int | None = None,
    videos: int | None = None,
    backbone=None,
    dimensions: list[str] | None = None,
    batch: int = 25,
    progress: bool = True,
) -> dict:
    """Generate and score every video of `suite` for each mode and step count (video i from seed
    i), skipping those already scored in `out`; write and return the summary. `dimensions`: the
    VBench-style ones to score (default all)."""
    for mode in modes:
        if mode not in MODES:
            raise ArlonError(f"unknown mode {mode!r}: use {' or '.join(MODES)}")
    if not steps or min(steps) < 1:
        raise ArlonError(f"steps must be positive integers, got {steps}")
    frames = frames or suite.frames
    backbone = backbone or vbench.load_backbone("thumbnail")
    vbench.check_dimensions(dimensions or list(vbench.DIMENSIONS))
    timelines = [[(s, p) for s, p in t if s < frames] for t in suite.videos[:videos]]
    settings = {"suite": suite.name, "frames": frames, "backbone": backbone.name}
    _check_out(out, settings | {"model": weights_digest(pipe)})
    seams = pipe.seams(frames)
    todo = [
        (mode, s, i)
        for mode in modes
        for s in steps
        for i in range(len(timelines))
        if not _video_path(out, mode, s, i).exists()
    ]
    bar = tqdm(total=len(todo), desc=f"suite {suite.name}", unit="video", disable=not progress)
    # The AR's codes do not depend on the DiT's steps: drawn once per video, in batches, and each
    # video's share of its batch's time is counted in each of its ARLON runs.
    codes: dict[int, list] = {}
    ar_seconds: dict[int, float] = {}
    for mode, s, i in todo:
        video_codes, shared = None, 0.0
        if mode == "arlon":
            if i not in codes:
                started = time.perf_counter()
                drawn = _sample(pipe, timelines, frames, i, batch, todo, progress)
                share = (time.perf_counter() - started) / len(drawn)
                codes |= drawn
                ar_seconds |= dict.fromkeys(drawn, share)
            video_codes, shared = codes[i], ar_seconds[i]
        started = time.perf_counter()
        video = np.stack(
            list(
                pipe.stream(
                    timeline=timelines[i],
                    num_frames=frames,
                    sampling=DiTSampling(s, mode=mode),
                    seed=i,
                    progress=False,
                    codes=video_codes,
                )
            )
        )
        report = score_one(video, timelines[i], seams, backbone, dimensions)
        seconds = time.perf_counter() - started + shared
        report |= {"mode": mode, "steps": s, "index": i, "seconds": seconds}
        path = _video_path(out, mode, s, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report))
        bar.update(1)
    bar.close()
    summary = summarise_suite(out, suite.name, modes, steps, len(timelines), frames, backbone.name)
    write_report(summary, out)
    return summary


def weights_digest(pipe) -> str:
    """A short digest of the pipeline's trained weights and settings: a suite folder holds the
    videos of one model only."""
    settings = {**pipe.config, "scheduler": dict(pipe.scheduler.config)}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in ("ar", "vq", "dit", "vae"):
        for key, tensor in getattr(pipe, name).state_dict().items():
            h.update(f"{name}.{key}".encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def _check_out(out: Path, settings: dict) -> None:
    """Record what `out` holds, or refuse to mix another run's videos into it."""
    path = out / "run.json"
    if path.exists():
        held = json.loads(path.read_text())
        if held != settings:
            raise ArlonError(
                f"{out} holds videos of another run ({held}, not {settings}): use another --out"
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings))


def _video_path(out: Path, mode: str, steps: int, index: int) -> Path:
    return out / "videos" / f"{mode}-{steps}" / f"{index:04d}.json"


def _sample(pipe, timelines, frames, first, batch, todo, progress) -> dict[int, list]:
    """AR codes of up to `batch` videos still to do in ARLON mode, from video `first` on."""
    wanted = sorted({i for mode, _, i in todo if mode == "arlon" and i >= first})[:batch]
    drawn = pipe.sample_codes([timelines[i] for i in wanted], frames, wanted, progress=progress)
    return dict(zip(wanted, drawn, strict=True))


# ------------------------------------------------------------------------------------------------
# Summary, table, plots
# ------------------------------------------------------------------------------------------------


def summarise_suite(out: Path, name, modes, steps, videos: int, frames: int, backbone: str) -> dict:
    """Mean scores per (mode, steps) of the videos written in `out`."""
    runs = []
    for mode in modes:
        for s in steps:
            reports = [json.loads(_video_path(out, mode, s, i).read_text()) for i in range(videos)]
            seconds = sum(r["seconds"] for r in reports)
            world = [r["world"] for r in reports if r["world"] is not None]
            run = {"mode": mode, "steps": s, "videos": len(reports), "world_videos": len(world)}
            if world:
                run |= summarise(world, seconds)
                judged = [r["over_time"] for r in reports if r["world"] is not None]
                run["over_time"] = {
                    k: [mean_judged(w[j][k] for w in judged) for j in range(WINDOWS)]
                    for k in OVER_TIME
                }
            run["seconds_per_video"] = seconds / len(reports)
            dims = [r["vbench"] for r in reports]
            for dim in vbench.DIMENSIONS:
                if all(dim in d for d in dims):
                    run[dim] = float(np.mean([d[dim] for d in dims]))
            if "temporal_flickering" in run and "dynamic_degree" in run:
                # VBench scores flickering on static videos only; over all of them, motion counts
                # as flicker too (what the 'static' suite's prompts, all at rest, want to see)
                run["temporal_flickering_all"] = run["temporal_flickering"]
                static = [d["temporal_flickering"] for d in dims if d["dynamic_degree"] == 0]
                run["temporal_flickering"] = float(np.mean(static)) if static else None
                run["static_videos"] = len(static)
            run["seam_ratio"] = mean_judged(r["seams"]["ratio"] for r in reports)
            runs.append(run)
    return {
        "suite": name,
        "frames": frames,
        "videos": videos,
        "backbone": backbone,
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }


TABLE = (
    ("attribute", "attribute", 100),
    ("motion", "motion", 100),
    ("count", "count", 100),
    ("identity", "identity", 100),
    ("PSNR", "rerender_psnr", 1),
    ("switch lat.", "switch_latency_median", 1),
    ("dynamic", "dynamic_degree", 100),
    ("smooth", "motion_smoothness", 100),
    ("flicker (static)", "temporal_flickering", 100),
    ("flicker (all)", "temporal_flickering_all", 100),
    ("subject", "subject_consistency", 100),
    ("background", "background_consistency", 100),
    ("seam ratio", "seam_ratio", 1),
    ("s/video", "seconds_per_video", 1),
)


def markdown_table(summary: dict) -> str:
    """One row per (mode, steps); accuracies and VBench-style scores in %."""
    head = ["mode", "steps", *(name for name, _, _ in TABLE)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in summary["runs"]:
        cells = [run["mode"], str(run["steps"])]
        for _, key, scale in TABLE:
            value = run.get(key)
            cells.append("-" if value is None else f"{value * scale:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{summary['suite']}: {summary['videos']} videos x {summary['frames']} frames; "
        f"consistency backbone {summary['backbone']}; {summary['date']}.\n"
    )
    return "\n".join(lines) + "\n" + note


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
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    keys = [
        ("attribute", "attribute accuracy"),
        ("motion", "motion accuracy"),
        ("identity", "identity persistence"),
        ("dynamic_degree", "dynamic degree"),
        ("subject_consistency", f"subject consistency ({summary['backbone']})"),
        ("motion_smoothness", "motion smoothness"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        for mode in modes:
            points = [(r["steps"], r.get(key)) for r in runs if r["mode"] == mode]
            points = [(s, v) for s, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=mode)
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
                ax.plot(centres, values, marker=".", label=f"{r['mode']} @{r['steps']}")
            ax.set_xlabel("frame")
            ax.set_title(key, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{summary['suite']}: world metrics over time")
        fig.tight_layout()
        written.append(_save(fig, out / "over_time.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['mode']}\n@{r['steps']}" for r in runs]
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

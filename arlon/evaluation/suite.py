"""Evaluation suites: files of prompts and timelines -> generations -> one report.

    arlon eval --suite short --steps 1,3,5,10,30 --guidance 1,2,4,7 --out runs/suite/short

    suite = read_suite("long-600")                        # a packaged suite, or any file
    report = run_suite(pipe, suite, SuitePlan(modes=("arlon", "ar-only")), Path("runs/long-600"))

Three modes are compared on the same videos (video i from seed i): ARLON, the baseline DiT, and
AR-only (the AR's codes decoded without the DiT, which shows what the DiT adds); ARLON and AR-only
share the AR's codes. The DiT's runs are made at every step count and text-guidance scale asked,
so each mode can be judged at its best guidance. With true tokens (`SuitePlan.tokens="truth"`, the
world's held-out suites only) each video's own scene, rendered and encoded, stands in for the AR's
tokens: what the decoders make of a perfect AR's, the chain's ceiling.

Each video is scored with the world metrics (when its prompts are in the world's vocabulary: other
prompts, such as VBench's, still run and get the VBench-style dimensions only), each world metric
over `WINDOWS` equal windows of time, the VBench-style dimensions (`arlon.evaluation.vbench`, long-video
protocol), and the seam ratio: the mean frame change across the DiT's segment seams over the mean
change inside segments (1: seams do not show). A video's scores are written to
`OUT/videos/RUN/INDEX.json` as soon as it is done, so a re-run skips finished videos; then
`metrics.json`, `metrics.md` and PNG plots summarise them all (`arlon.evaluation.suite_report`).

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from arlon.data.latent_cache import encode_frames, vq_windows
from arlon.errors import ArlonError
from arlon.evaluation import vbench
from arlon.evaluation.heldout import HELDOUT_SEED
from arlon.evaluation.suite_report import (
    OVER_TIME,
    WINDOWS,
    summarise_suite,
    video_path,
    write_report,
)
from arlon.models.ar_sampler import ARSampling, ar_dtype, precision_name
from arlon.pipeline.job import MODES, DiTSampling
from arlon.timeline import Timeline
from arlon.utils import atomic_path
from arlon.world.captions import describe, describe_change
from arlon.world.metrics import Expected, score_video
from arlon.world.render import render_states
from arlon.world.simulate import random_episode

SUITES = Path(__file__).parent / "suites"
# The packaged suites made of the world's held-out episodes: (seed, whether they have events).
# Their true tokens (`SuitePlan.tokens`) are those episodes rendered and encoded.
SCENES = {
    "short": (HELDOUT_SEED, False),
    "everyday": (HELDOUT_SEED, False),
    "paraphrase": (HELDOUT_SEED, False),
    "long-600": (HELDOUT_SEED + 1, True),
    "stories": (HELDOUT_SEED + 5, True),
    "long-2400": (HELDOUT_SEED + 3, True),
}
TOKENS = ("ar", "truth")


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

    def prompts(seed, count: int, wording: str = "training", still: bool = False) -> list[str]:
        out = []
        for i in range(count):
            spec = random_episode((seed, i), 2, events=False).specs[0]
            if still:  # the same scene, every object at rest: what temporal flickering is for
                objects = tuple(replace(o, motion="still", speed=None) for o in spec.objects)
                spec = replace(spec, objects=objects)
            out.append(describe(spec, np.random.default_rng([seed, i, 1]), wording))
        return out

    def timelines(seed, count: int, frames: int, changes: bool = False) -> list[str]:
        blocks = []
        for i in range(count):
            episode = random_episode((seed, i), frames)
            timeline = episode.timeline
            if changes:  # later prompts state only the change, as people write a story
                rng = np.random.default_rng([seed, i, 1])
                pairs = zip(episode.specs, episode.specs[1:], strict=False)
                later = [describe_change(a, b, rng) for a, b in pairs]
                starts = [start for start, _ in timeline[1:]]
                timeline = [timeline[0], *zip(starts, later, strict=True)]
            blocks.append("\n".join(f"{start}\t{prompt}" for start, prompt in timeline))
        return blocks

    def text(title: str, frames: int, entries: list[str], separator: str) -> str:
        return f"# {title}\n# frames: {frames}\n" + separator.join(entries) + "\n"

    return {
        "short": text(
            "50 prompts in the world's canonical words (held-out scenes)",
            120,
            prompts(SCENES["short"][0], 50, "canonical"),
            "\n",
        ),
        "everyday": text(
            "the 50 scenes of `short` in everyday words and sentence shapes of the training "
            "vocabulary, never the canonical ones",
            120,
            prompts(SCENES["everyday"][0], 50, "everyday"),
            "\n",
        ),
        "paraphrase": text(
            "the 50 scenes of `short` in evaluation-only words and sentence shapes (never in a "
            "training caption)",
            120,
            prompts(SCENES["paraphrase"][0], 50, "eval-only"),
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
            timelines(SCENES["long-600"][0], 20, 600),
            "\n\n",
        ),
        "stories": text(
            "20 stories of 600 frames: later prompts state only the change ('the circle turns "
            "blue'); what they do not mention must stay as it was",
            600,
            timelines(SCENES["stories"][0], 20, 600, changes=True),
            "\n\n",
        ),
        "long-2400": text(
            "10 timelines with caption changes, 2,400 frames",
            2400,
            timelines(SCENES["long-2400"][0], 10, 2400),
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


@dataclass(frozen=True)
class Run:
    """One way of making a suite's videos: a mode, and for the DiT its steps, text guidance and
    strength (`DiTSampling.strength`); None: the model's, filled in by `SuitePlan.runs`."""

    mode: str
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None

    @property
    def label(self) -> str:
        if self.steps is None:
            return self.mode
        label = f"{self.mode}-{self.steps}-g{self.guidance:g}"
        return label if self.strength in (None, 1) else f"{label}-s{self.strength:g}"

    @classmethod
    def of(cls, sampling: DiTSampling) -> Run:
        s = sampling
        return cls(s.mode, s.num_inference_steps, s.guidance_scale, s.strength)

    @property
    def sampling(self) -> DiTSampling:
        if self.steps is None:
            return DiTSampling(mode=self.mode)
        return DiTSampling(self.steps, self.guidance, self.mode, self.strength)


@dataclass(frozen=True)
class SuitePlan:
    """Which runs to make of a suite: every mode at every step count and guidance scale (AR-only,
    which has no DiT, once), or exactly the runs `only` lists; `frames` per video (None: the
    suite's), its first `videos`."""

    modes: tuple[str, ...] = MODES
    steps: tuple[int, ...] = (5,)
    guidance: tuple[float | None, ...] = (None,)  # None: the model's
    frames: int | None = None
    videos: int | None = None
    batch: int = 25  # videos whose AR codes are drawn together
    only: tuple[Run, ...] = ()
    # "truth": each video's true tokens (its scene rendered, through the VAE's and the VQ-VAE's
    # encoders) in place of the AR's: what the decoders make of a perfect AR's, the chain's ceiling
    tokens: str = "ar"
    ar_precision: str = "auto"  # the AR's arithmetic (`ARSampling.precision`)
    ar_window: str = "refill"  # what its full context does (`ARSampling.window`)

    def __post_init__(self):
        if self.tokens not in TOKENS:
            raise ArlonError(f"tokens are {' or '.join(TOKENS)}, got {self.tokens!r}")
        ARSampling(precision=self.ar_precision, window=self.ar_window)  # checks them
        if self.frames is not None and self.frames < 3:  # motion smoothness reads 3 at a time
            raise ArlonError(f"a video to score needs at least 3 frames, got {self.frames}")
        for mode in (*self.modes, *(run.mode for run in self.only)):
            if mode not in MODES:
                raise ArlonError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
        scales = [g for g in self.guidance if g is not None]
        if not self.steps or min(self.steps) < 1 or not self.guidance or min(scales, default=0) < 0:
            raise ArlonError("steps must be positive integers, guidance scales 0 or more")

    def runs(self, resolve: Callable[[DiTSampling], DiTSampling]) -> list[Run]:
        """The runs, those that leave the DiT's guidance or strength to the model given the model's
        by `resolve` (its `ARLONPipeline.resolved`)."""
        runs = list(self.only)
        if not runs:
            for mode in self.modes:
                if mode == "ar-only":
                    runs.append(Run(mode))
                else:
                    runs += [Run(mode, s, g) for s in self.steps for g in self.guidance]
        return [run if run.steps is None else Run.of(resolve(run.sampling)) for run in runs]


def run_suite(
    pipe,
    suite: Suite,
    plan: SuitePlan,
    out: Path,
    backbone=None,
    dimensions: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Generate and score every video of `suite` for each run of `plan` (video i from seed i),
    skipping those already scored in `out`; write and return the summary. `dimensions`: the
    VBench-style ones to score (default all)."""
    frames = plan.frames or suite.frames
    backbone = backbone or vbench.load_backbone("thumbnail")
    vbench.check_dimensions(dimensions or list(vbench.DIMENSIONS))
    timelines = [
        Timeline([(s, p) for s, p in t if s < frames]) for t in suite.videos[: plan.videos]
    ]
    settings = {"suite": suite.name, "frames": frames, "backbone": backbone.name}
    if plan.tokens != "ar":
        settings["tokens"] = plan.tokens
    if ar_dtype(pipe.ar, plan.ar_precision) != pipe.ar.dtype:  # another arithmetic, other codes
        settings["ar_precision"] = precision_name(pipe.ar, plan.ar_precision)
    if plan.ar_window != "refill":
        settings["ar_window"] = plan.ar_window
    # another suite is refused before anything is written
    truth = _TrueCodes(pipe, suite, frames) if plan.tokens == "truth" else None
    _check_out(out, settings | {"model": weights_digest(pipe)})
    runs = plan.runs(pipe.resolved)
    if any(run.mode == "baseline" for run in runs):
        pipe.dit_for("baseline")  # a model without one is refused now, not after other runs
    todo = [
        (run, i)
        for run in runs
        for i in range(len(timelines))
        if not video_path(out, run.label, i).exists()
    ]
    sampling = ARSampling(precision=plan.ar_precision, window=plan.ar_window)
    codes = truth or _Codes(pipe, timelines, frames, plan.batch, sampling, todo, progress)
    dit_seams = pipe.seams(frames)
    for run, i in tqdm(todo, desc=f"suite {suite.name}", unit="video", disable=not progress):
        video_codes, shared = codes.of(i) if run.mode != "baseline" else (None, 0.0)
        started = time.perf_counter()
        stream = pipe.stream(
            timeline=timelines[i],
            num_frames=frames,
            sampling=run.sampling,
            seed=i,
            progress=False,
            codes=video_codes,
        )
        video = np.stack(list(stream))
        seams = [] if run.mode == "ar-only" else dit_seams  # AR-only has no DiT segments
        report = score_one(video, timelines[i], seams, backbone, dimensions)
        seconds = time.perf_counter() - started + shared
        report |= {**asdict(run), "index": i, "seconds": seconds}
        path = video_path(out, run.label, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(report))
    summary = summarise_suite(
        out, suite.name, runs, len(timelines), frames, backbone.name, plan.tokens
    )
    write_report(summary, out)
    return summary


class _Codes:
    """The AR's codes of the suite's videos, drawn `batch` videos at a time when first needed and
    shared by every run that uses them (ARLON at any steps and guidance, AR-only); each video is
    charged its share of its batch's time."""

    def __init__(self, pipe, timelines, frames: int, batch: int, sampling, todo, progress: bool):
        self.pipe, self.timelines, self.frames, self.batch = pipe, timelines, frames, batch
        self.sampling = sampling
        self.wanted = sorted({i for run, i in todo if run.mode != "baseline"})
        self.progress = progress
        self.codes: dict[int, list] = {}
        self.seconds: dict[int, float] = {}

    def of(self, i: int) -> tuple[list, float]:
        if i not in self.codes:
            chunk = [j for j in self.wanted if j >= i][: self.batch]
            started = time.perf_counter()
            timelines = [self.timelines[j] for j in chunk]
            drawn = self.pipe.sample_codes(
                timelines, self.frames, chunk, self.sampling, progress=self.progress
            )
            share = (time.perf_counter() - started) / len(chunk)
            self.codes |= dict(zip(chunk, drawn, strict=True))
            self.seconds |= dict.fromkeys(chunk, share)
        return self.codes[i], self.seconds[i]


class _TrueCodes:
    """The true tokens of a suite's videos: each video's scene, rendered by the world and encoded
    through the pipeline's VAE and VQ-VAE (in the VQ-VAE's windows), as many token frames as the
    AR would draw."""

    def __init__(self, pipe, suite: Suite, frames: int):
        if suite.name not in SCENES or suite != read_suite(SUITES / f"{suite.name}.txt"):
            raise ArlonError(
                f"true tokens need a suite of the world's held-out scenes ({', '.join(SCENES)}), "
                f"not {suite.name!r}"
            )
        self.pipe = pipe
        self.seed, self.events = SCENES[suite.name]
        # the video frames whose latents the AR's token frames cover
        token_frames = pipe.token_frames(pipe.plan(frames)[1])
        self.needed = pipe.vae.video_frames(token_frames * pipe.vq.ratio[0])
        # an episode's changes depend on its length: rendered at the suite's, then cut or held; a
        # scene without changes goes on as the same scene
        self.length = suite.frames if self.events else self.needed
        self.size = pipe.default_size()
        self.window = pipe.ar.config.code_window * pipe.vq.ratio[0]  # latent frames a VQ window

    @torch.inference_mode()
    def of(self, i: int) -> tuple[list, float]:
        pipe, needed = self.pipe, self.needed
        episode = random_episode((self.seed, i), self.length, *self.size, events=self.events)
        video = np.stack(list(render_states(episode.frames(), *self.size)))[:needed]
        video = np.concatenate([video, np.repeat(video[-1:], needed - len(video), axis=0)])
        codes = vq_windows(encode_frames(pipe.vae, video), self.window, pipe.vq)["codes"]
        return list(codes.flatten(0, 1).long()), 0.0


def weights_digest(pipe) -> str:
    """A short digest of the pipeline's trained weights and settings: a suite folder holds the
    videos of one model only."""
    settings = {**pipe.config, "scheduler": dict(pipe.scheduler.config)}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in pipe.models:
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

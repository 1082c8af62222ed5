"""The web page's generations, without the page: its form checked as `arlon generate` checks its
arguments, and one generation run in a thread, with progress per stage, live direction and a stop
that keeps what was made.

    settings = read_form(Form("a red circle moves right", [["60", "the circle turns blue"]]), fps=8)
    run = Generation(pipe, settings, folder)
    run.start()                          # a worker thread writes folder/arlon.mp4
    run.snapshot()                       # Progress: per stage done/total, the latest frame
    run.direct("the circle turns red")   # takes effect at the next token frame the AR draws
    run.stop()                           # as Ctrl-C: the frames made so far stay a playable mp4
    result = run.result()                # once `run.join()`: files, the timeline it was made with

`result.timeline` with `settings.command()` regenerates the same video with `arlon generate`.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from arlon.cli.common import non_negative_float, positive_int, seed
from arlon.errors import ArlonError, Stopped
from arlon.models.ar_sampler import GUIDANCE_SCALE, ARSampling
from arlon.pipeline.coarse import coarse_frames
from arlon.pipeline.job import MODES, DiTSampling
from arlon.pipeline.output import VideoOutput, write_video
from arlon.pipeline.threads import StageTimes
from arlon.timeline import LiveTimeline, Timeline

VIDEO, COARSE, TIMELINE = "arlon.mp4", "coarse.mp4", "timeline.txt"


# -- the form -------------------------------------------------------------------------------------


@dataclass
class Form:
    """The page's fields as the browser sends them: `prompt` holds from frame 0, each row of `rows`
    is `[start, prompt]` with start a frame ("120") or a time ("15s"); numbers may be None."""

    prompt: str = ""
    rows: list[list] = field(default_factory=list)
    frames: float | None = 120
    steps: float | None = 5
    seed: float | None = 0
    mode: str = "arlon"
    guidance: float | None = 1.0
    ar_guidance: float | None = GUIDANCE_SCALE


@dataclass(frozen=True)
class Settings:
    """One generation, checked: `arlon generate`'s arguments of the same names."""

    timeline: Timeline
    frames: int
    steps: int = 5
    seed: int = 0
    mode: str = "arlon"
    guidance: float = 1.0
    ar_guidance: float = GUIDANCE_SCALE

    def command(self, timeline_file: str | Path = TIMELINE, model: Path | None = None) -> str:
        """The `arlon generate` command that makes the same video from the timeline's file: the
        page's stages take turns (a directed prompt takes hold sooner) on this process's torch
        threads, whose count the frames depend on (by a level or so)."""
        argv = ["arlon", "generate", "--timeline", str(timeline_file)]
        argv += ["--frames", str(self.frames), "--steps", str(self.steps), "--seed", str(self.seed)]
        argv += ["--mode", self.mode, "--guidance", f"{self.guidance:g}"]
        argv += ["--ar-guidance", f"{self.ar_guidance:g}", "--no-overlap"]
        argv += ["--threads", str(torch.get_num_threads()), "-o", VIDEO]
        return shlex.join(argv + (["--model", str(model)] if model is not None else []))


def read_form(form: Form, fps: float, max_frames: int | None = None) -> Settings:
    """The settings of `form`, or an `ArlonError` with the message `arlon generate` gives for the
    same mistake (a start time in seconds is rounded to a frame at `fps`)."""
    timeline = _timeline(form.prompt, form.rows, fps)
    frames = _argument("--frames", positive_int, form.frames)
    if max_frames is not None and frames > max_frames:
        raise ArlonError(f"argument --frames: at most {max_frames} here (arlon serve --max-frames)")
    if form.mode not in MODES:
        raise ArlonError(f"argument --mode: invalid choice: {form.mode!r}")
    return Settings(
        timeline,
        frames,
        _argument("--steps", positive_int, form.steps),
        _argument("--seed", seed, form.seed),
        form.mode,
        _argument("--guidance", non_negative_float, form.guidance),
        _argument("--ar-guidance", non_negative_float, form.ar_guidance),
    )


def _argument(name: str, kind, value):
    """`value` through the CLI's argument type, its mistakes worded as argparse words them."""
    text = "" if value is None else str(int(value) if float(value).is_integer() else value)
    try:
        return kind(text)
    except argparse.ArgumentTypeError as e:
        raise ArlonError(f"argument {name}: {e}") from None


def _timeline(prompt: str, rows: list[list], fps: float) -> Timeline:
    entries = [(0, prompt)] if prompt.strip() else []
    for n, row in enumerate(rows, 1):
        start, text = (list(row) + ["", ""])[:2]
        start, text = ("" if start is None else str(start).strip()), str(text or "")
        if not start and not text.strip():
            continue  # an empty row of the editor
        entries.append((start_frame(start, fps, n), text))
    if not entries:
        raise ArlonError("give a prompt (or a timeline)")
    return Timeline(entries)


def start_frame(text: str, fps: float, row: int = 1) -> int:
    """A start frame ("120") or time ("15s", "2.5 s") -> the frame (`row`: for the message)."""
    seconds = text.removesuffix("s").strip() if text.endswith("s") else None
    try:
        if seconds is None:
            value = float(text)
            if value.is_integer() and value >= 0:
                return int(value)
        elif float(seconds) >= 0:
            return round(float(seconds) * fps)
    except (ValueError, OverflowError):  # not a number; an infinite time
        pass
    raise ArlonError(
        f"timeline row {row}: expected a start frame (e.g. 120) or time (e.g. 15s), got {text!r}"
    )


# -- a generation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a generation is: `(done, total)` per stage (total 0: the mode leaves the stage out),
    the latest frame `(H, W, 3)` uint8 (None before the first) and the timeline so far."""

    token_frames: tuple[int, int]
    segments: tuple[int, int]
    frames: tuple[int, int]
    seconds: float
    frame: np.ndarray | None
    timeline: Timeline


@dataclass(frozen=True)
class Result:
    """A finished or stopped generation: its files and the timeline it was made with."""

    video: Path | None  # None: stopped before the first frame
    coarse: Path | None  # the AR's tokens decoded (modes arlon and ar-only)
    timeline_file: Path
    timeline: Timeline
    frames: int
    stopped: bool  # by the user: `frames` is what was made until then


class Generation:
    """One video from the page's settings, made in a worker thread (see the module docstring)."""

    def __init__(self, pipe, settings: Settings, folder: str | Path):
        self.pipe, self.settings, self.folder = pipe, settings, Path(folder)
        self.live = LiveTimeline(settings.timeline)
        self.times = StageTimes()  # filled by the pipeline as it works
        self._written = 0
        self._frame: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.perf_counter()
        self._outcome: Result | BaseException | None = None
        segments, new_latents = pipe.plan(settings.frames)
        self._totals = (
            0 if settings.mode == "baseline" else pipe.token_frames(new_latents),
            0 if settings.mode == "ar-only" else segments,
            settings.frames,
        )

    # -- control, from any thread -----------------------------------------------------------------

    def start(self) -> None:
        self._started = time.perf_counter()
        if self._stop.is_set():  # stopped while it waited in the queue: nothing to make
            self.folder.mkdir(parents=True, exist_ok=True)
            self.live.timeline.write(self.folder / TIMELINE)
            self._outcome = Result(None, None, self.folder / TIMELINE, self.live.timeline, 0, True)
            return
        self._thread = threading.Thread(target=self._work, name="arlon-generation", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the generation to end; whether it has (a generation
        stopped before it started has: it never will)."""
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._stop.is_set():
            return True
        return self._outcome is not None

    def direct(self, prompt: str) -> None:
        """A new prompt from the next token frame the AR draws (baseline: the next DiT segment)."""
        tokens, segments, _ = self._totals
        drawn = self.times.segments >= segments if not tokens else self.times.token_frames >= tokens
        if self._outcome is not None or self._stop.is_set() or drawn:
            raise ArlonError(
                "too late: a new prompt changes a video while its tokens are drawn, and this "
                "one's are all drawn"
            )
        self.live.direct(prompt)

    def stop(self) -> None:
        """Stop after the current frame, as Ctrl-C does: the frames made so far are kept."""
        self._stop.set()

    def snapshot(self) -> Progress:
        done = (self.times.token_frames, self.times.segments, self._written)
        token_frames, segments, frames = zip(done, self._totals, strict=True)
        seconds = time.perf_counter() - self._started
        return Progress(token_frames, segments, frames, seconds, self._frame, self.live.timeline)

    def result(self) -> Result:
        """The finished generation's files; its error, raised again, if it failed."""
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        if self._outcome is None:
            raise ArlonError("the generation has not finished")
        return self._outcome

    # -- the work ---------------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker thread's target: the outcome, an error included, is kept for `result`."""
        with contextlib.suppress(BaseException):  # `result()` raises it where it is read
            self.run()

    def run(self) -> Result:
        """Make the video in this thread (`start` runs this in a worker thread)."""
        try:
            self._outcome = self._make()
        except BaseException as e:  # kept for whoever reads the result
            self._outcome = e
            raise
        return self._outcome

    def _make(self) -> Result:
        s, pipe, fps = self.settings, self.pipe, self.pipe.config.fps
        self.folder.mkdir(parents=True, exist_ok=True)
        codes: list[torch.Tensor] = []  # the AR's token frames, for the coarse video
        stream = pipe.stream(
            timeline=self.live,
            num_frames=s.frames,
            sampling=DiTSampling(s.steps, s.guidance, s.mode),
            seed=s.seed,
            progress=False,
            codes=None if s.mode == "baseline" else self._kept(codes),
            times=self.times,
        )
        video, stopped = self.folder / VIDEO, False
        try:
            write_video(self._watched(stream), VideoOutput(video), fps)
        except Stopped:  # write_video kept the frames made so far, or had none to keep
            video, stopped = (video if self._written else None), True
        timeline = self.live.timeline
        timeline.write(self.folder / TIMELINE)
        coarse = None
        if video is not None and s.mode == "ar-only":
            coarse = video
        elif video is not None and s.mode == "arlon":
            coarse = self._coarse(codes, self._written, fps)
        return Result(video, coarse, self.folder / TIMELINE, timeline, self._written, stopped)

    def _kept(self, codes: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The AR's token frames as the pipeline pulls them, each also kept in `codes`."""
        s = self.settings
        ar = ARSampling(guidance_scale=s.ar_guidance)
        for frame in self.pipe.draw_codes(self.live, s.frames, ar, s.seed):
            codes.append(frame)
            yield frame
            if self._stop.is_set():  # the AR runs ahead of the frames: stop it too
                raise Stopped(130)

    def _watched(self, stream: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The frames of `stream`, counted and the latest kept; a stop ends them as Ctrl-C does."""
        for frame in stream:
            self._frame = frame
            yield frame
            self._written += 1  # the writer asks for the next frame once it has written this one
            if self._stop.is_set():
                stream.close()
                raise Stopped(130)

    def _coarse(self, codes: list[torch.Tensor], frames: int, fps: float) -> Path | None:
        """The coarse video of the first `frames` frames, from the AR's token frames in whole VQ
        windows (a stopped AR may have drawn part of one)."""
        window = self.pipe.ar.config.code_window
        whole = len(codes) // window * window
        if whole == 0:
            return None
        pipe, path = self.pipe, self.folder / COARSE
        write_video(
            coarse_frames(codes[:whole], pipe.vq, pipe.vae, window, frames), VideoOutput(path), fps
        )
        return path

"""Prompt timelines: which prompt holds from which video frame on (the paper's progressive prompts).

    Timeline.of("a red circle moves right")                       # one prompt from frame 0
    Timeline([(0, "a red circle moves right"), (120, "the circle turns blue")])
    Timeline.read("story.txt")                                    # lines: START_FRAME<TAB>prompt
    Timeline.every(["a red circle ...", "a blue square ..."], 120)

A `Timeline` is validated once, where it is made: it starts at frame 0, its starts strictly
increase, and no prompt is empty. It is an immutable tuple of `(start, prompt)` pairs, so code that
receives one trusts it; `Timeline.of` passes a Timeline through and validates anything else.

A `LiveTimeline` is one that a user changes while its video is being made (live direction, the
web page's): a prompt directed from another thread takes effect where the generation next looks,
and is recorded there, so the finished video's timeline regenerates it exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from arlon.errors import ArlonError


class Timeline(tuple[tuple[int, str], ...]):
    """`((start_frame, prompt), ...)`: starts from 0, strictly increasing; prompts non-empty."""

    def __new__(cls, entries: Iterable[tuple[int, str]]) -> Timeline:
        try:
            pairs = [(start, prompt) for start, prompt in entries]
        except (TypeError, ValueError):
            raise ArlonError("a timeline is a list of (start_frame, prompt) pairs") from None
        for start, prompt in pairs:
            if isinstance(start, bool) or not isinstance(start, int):
                raise ArlonError(f"a timeline's start frames are integers, got {start!r}")
            if not isinstance(prompt, str):
                raise ArlonError(f"a timeline's prompts are strings, got {prompt!r}")
        # a prompt's words, one space apart: a line break or tab would break its timeline file
        timeline = super().__new__(
            cls, ((start, " ".join(prompt.split())) for start, prompt in pairs)
        )
        timeline._check()
        return timeline

    def _check(self) -> None:
        if not self:
            raise ArlonError("empty timeline: give at least one (start_frame, prompt)")
        starts = self.starts
        if starts[0] != 0:
            raise ArlonError(f"a timeline must start at frame 0, this one starts at {starts[0]}")
        if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            raise ArlonError(f"timeline start frames must be strictly increasing, got {starts}")
        for start, prompt in self:
            if not prompt:
                raise ArlonError(
                    "the prompt is empty" if len(self) == 1 else f"the prompt at {start} is empty"
                )

    @classmethod
    def of(cls, value: Timeline | str | Iterable[tuple[int, str]]) -> Timeline:
        """A Timeline as it is, a single prompt from frame 0, or validated pairs."""
        if isinstance(value, Timeline):
            return value
        if isinstance(value, str):
            return cls([(0, value)])
        return cls(value)

    @classmethod
    def read(cls, path: str | Path) -> Timeline:
        """`START_FRAME<TAB>prompt` lines; blank lines and lines starting with '#' are skipped."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ArlonError(f"cannot read timeline {path}: not UTF-8 text") from None
        except OSError as e:
            raise ArlonError(f"cannot read timeline {path}: {e.strerror or e}") from None
        entries = []
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start, sep, prompt = line.partition("\t")
            start = start.strip()
            # isdecimal() alone accepts other scripts' digits ("٣"): a frame number is ASCII.
            if not sep or not (start.isascii() and start.isdecimal()):
                shown = line if len(line) <= 80 else line[:77] + "..."
                raise ArlonError(f"{path}:{n}: expected 'START_FRAME<TAB>prompt', got {shown!r}")
            entries.append((int(start), prompt))
        try:
            return cls(entries)
        except ArlonError as e:
            raise ArlonError(f"{path}: {e}") from None

    @classmethod
    def every(cls, prompts: list[str], frames: int) -> Timeline:
        """The prompts in turn, each for `frames` frames."""
        if frames <= 0:
            raise ArlonError(f"frames per prompt must be positive, got {frames}")
        return cls((i * frames, p) for i, p in enumerate(prompts))

    @property
    def starts(self) -> list[int]:
        return [start for start, _ in self]

    @property
    def prompts(self) -> list[str]:
        return [prompt for _, prompt in self]

    def switch_at(self, frame: int) -> str | None:
        """The prompt that starts at `frame`, or None when none does."""
        return next((prompt for start, prompt in self if start == frame), None)

    def prompt_at(self, frame: int) -> str:
        """The prompt that holds at video frame `frame`."""
        current = self[0][1]
        for start, prompt in self:
            if start > frame:
                break
            current = prompt
        return current

    def write(self, path: str | Path) -> None:
        """Write the file `read` reads back."""
        Path(path).write_text("".join(f"{start}\t{prompt}\n" for start, prompt in self))


class LiveTimeline:
    """A timeline that changes while its video is made: `direct(prompt)`, from any thread, queues a
    prompt; the generation calls `take(frame)` each time it starts drawing from a new frame (the AR:
    each token frame), which records the queued prompt from `frame` on, until the next planned
    start. `timeline` is the timeline so far; once the video is made, it regenerates that video.

        live = LiveTimeline("a red circle moves right")
        frames = pipe.stream(timeline=live, num_frames=600)   # consumed in one thread
        live.direct("the circle turns blue")                  # from another, while it runs
        live.timeline                                         # ((0, ...), (137, "the circle turns blue"))
    """

    def __init__(self, timeline: Timeline | str | Iterable[tuple[int, str]]):
        self._timeline = Timeline.of(timeline)
        self._queued: str | None = None
        self._lock = threading.Lock()

    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def direct(self, prompt: str) -> None:
        """Queue `prompt` for the next frame the generation starts (a later one replaces it)."""
        prompt = " ".join(prompt.split()) if isinstance(prompt, str) else ""
        if not prompt:
            raise ArlonError("the prompt is empty")
        with self._lock:
            self._queued = prompt

    def take(self, frame: int) -> None:
        """The generation starts drawing from `frame`: a queued prompt holds from there on."""
        with self._lock:
            prompt, self._queued = self._queued, None
            if prompt is not None:
                kept = [(start, p) for start, p in self._timeline if start != frame]
                self._timeline = Timeline(sorted([*kept, (frame, prompt)]))

"""Prompt timelines: `[(start_frame, prompt), ...]`, read from files of `START<TAB>prompt` lines."""

from __future__ import annotations

from pathlib import Path

from arlon.errors import ArlonError

Timeline = list[tuple[int, str]]


def check_timeline(timeline: Timeline) -> None:
    """A timeline starts at frame 0, its starts strictly increase, and no prompt is empty."""
    if not timeline:
        raise ArlonError("empty timeline: give at least one (start_frame, prompt)")
    starts = [s for s, _ in timeline]
    if starts[0] != 0:
        raise ArlonError(f"a timeline must start at frame 0, this one starts at {starts[0]}")
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise ArlonError(f"timeline start frames must be strictly increasing, got {starts}")
    for start, prompt in timeline:
        if not prompt.strip():
            raise ArlonError(f"the prompt starting at frame {start} is empty")


def read_timeline(path: str | Path) -> Timeline:
    """Read `START_FRAME<TAB>prompt` lines; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ArlonError(f"cannot read timeline {path}: {e.strerror or e}") from None
    timeline = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        start, sep, prompt = line.partition("\t")
        if not sep or not start.strip().isdigit():
            raise ArlonError(f"{path}:{n}: expected 'START_FRAME<TAB>prompt', got {line!r}")
        timeline.append((int(start), prompt.strip()))
    check_timeline(timeline)
    return timeline


def switch_every(prompts: list[str], every: int) -> Timeline:
    """A timeline that moves to the next prompt every `every` frames."""
    if every <= 0:
        raise ArlonError(f"--switch-every must be positive, got {every}")
    timeline = [(i * every, p) for i, p in enumerate(prompts)]
    check_timeline(timeline)
    return timeline

"""World metrics: how well a video shows what its timeline (or ground truth) asks for.

One pass over the frames detects every object; per-frame records are kept, so any metric can be
taken over any range of frames (drift: early vs late windows). Accuracies are in [0, 1], latencies
in frames. Every asked object counts in every frame: one that is missing is wrong, never left out
(only where the ground truth itself hides it behind another object is it not judged).

- object_accuracy (the headline): per asked object and frame, right only when an object of the
  asked colour is there with the asked shape and size (when asked; not judged while it is cut by
  the border) and, over the motion window holding the frame, the asked motion;
- precision: of the objects found, the share that were asked for (an extra object lowers it, and
  not object_accuracy);
- colour: the asked objects are there (colour is an object's identity in this world); shape / size:
  of those found, the right shape (and size when asked); background: the frame's, on its own;
- motion / speed: over windows of `motion_window` frames, each object's fitted velocity has the asked
  direction ('bounce' asks only that it moves) and speed class;
- count: the objects found are exactly the asked ones (as many, of the asked colours);
- identity: from one frame to the next within a segment, each asked object is there in both and
  keeps its shape and size, moving no more than `max_jump` of the frame;
- switch latency: frames from a caption change until the new caption holds (objects, shapes,
  background, count, motion) for `hold` frames in a row (a missed switch counts as its whole
  segment); onset: the same from frame 0 for the first caption, the latency's baseline;
- unchanged / kept: after a caption change, the object accuracy of the objects the change left as
  they were, and the share of changes after which those objects stay right in `kept_share` of
  the frames (what a prompt does not mention must stay as it was).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arlon.errors import ArlonError
from arlon.timeline import Timeline
from arlon.utils import read_json
from arlon.world import vocab
from arlon.world.captions import resolve
from arlon.world.detect import Detection, Detector, FrameDetection, size_class
from arlon.world.scene import FrameState, SceneSpec, WorldObject
from arlon.world.simulate import direction_of, occluded_ids


@dataclass
class Expected:
    """What each frame should show: a spec per segment, and objects not to judge per frame."""

    specs: list[SceneSpec]
    starts: list[int]
    num_frames: int
    height: int
    width: int
    # Per frame, colours hidden behind another object in the ground truth (not judged there).
    hidden: list[set[str]] | None = None

    @classmethod
    def from_truth(cls, truth: dict) -> Expected:
        """From an episode's ground-truth JSON (as written by `Episode.save_truth`)."""
        specs = [SceneSpec.from_dict(s) for s in truth["specs"]]
        hidden = []
        for frame in truth["frames"]:
            ids = set(frame["occluded"])
            hidden.append({o["colour"] for o in frame["objects"] if o["id"] in ids})
        starts = [s for s, _ in truth["timeline"]]
        return cls(specs, starts, truth["num_frames"], truth["height"], truth["width"], hidden)

    @classmethod
    def read(cls, path: Path) -> Expected:
        """From a ground-truth file (`arlon world render`'s JSON), or a one-line error."""
        try:
            return cls.from_truth(read_json(path, "ground truth"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ArlonError(f"{path} is not a shapes-world ground-truth file") from None

    @classmethod
    def from_timeline(
        cls, timeline: Timeline | list[tuple[int, str]], num_frames: int, height: int, width: int
    ) -> Expected:
        """From a prompt timeline: only what the captions say is judged; a later prompt that states
        only a change ("the circle turns blue") keeps the rest of the scene before it."""
        timeline = Timeline.of(timeline)
        specs = resolve(timeline.prompts)
        # prompts that start past the video's end have nothing to judge
        kept = [k for k, (start, _) in enumerate(timeline) if start < num_frames]
        starts = [timeline[k][0] for k in kept]
        return cls([specs[k] for k in kept], starts, num_frames, height, width)

    def segment_of(self) -> np.ndarray:
        """Segment index of every frame, (T,)."""
        seg = np.zeros(self.num_frames, np.int64)
        for k, s in enumerate(self.starts[1:], 1):
            seg[s:] = k
        return seg


@dataclass
class MetricSettings:
    motion_window: int = 8
    hold: int = 4
    max_jump: float = 0.1  # of the frame's shorter side, per frame
    still_below: float = 0.35  # of the slow speed, per frame
    kept_share: float = 0.9  # of a segment's frames in which the unchanged objects must be right


@dataclass
class WorldScore:
    """Per-frame records of one scored video; `summary()` aggregates them over any frame range."""

    expected: Expected
    settings: MetricSettings
    detections: list[FrameDetection]
    records: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self, start: int = 0, stop: int | None = None) -> dict:
        """Every metric over frames [start, stop); a metric with nothing to judge there is None."""
        r = {k: v[start:stop] for k, v in self.records.items()}

        def rate(name: str):
            total = r[f"{name}_total"].sum()
            return None if total == 0 else float(r[f"{name}_ok"].sum() / total)

        return {name: rate(name) for name in METRICS}

    def _segment(self, k: int) -> tuple[int, int]:
        starts = self.expected.starts
        return starts[k], starts[k + 1] if k + 1 < len(starts) else self.expected.num_frames

    def _take_hold(self, start: int, end: int) -> tuple[bool, int]:
        """Whether the caption of frames [start, end) comes to hold `hold` frames in a row, and the
        frames from `start` until it does (all of them if it never does)."""
        holds, hold = self.records["holds"].astype(bool), self.settings.hold
        found = next((f for f in range(start, end - hold + 1) if holds[f : f + hold].all()), None)
        return found is not None, (found if found is not None else end) - start

    def onset(self) -> dict:
        """Frames from frame 0 until the first caption holds: the same measure as a switch's
        latency, with nothing to switch from (how long a whole scene takes to get right)."""
        held, latency = self._take_hold(*self._segment(0))
        return {"held": held, "latency": latency}

    def switches(self) -> dict:
        """Prompt-switch latency over every caption change, and whether what a change left as it
        was stayed right (`kept`: over the changes that left some object or the background)."""
        latencies, switched, kept = [], [], []
        for k in range(1, len(self.expected.starts)):
            s, e = self._segment(k)
            if e - s < self.settings.hold:
                continue  # too short for any video to show it
            held, latency = self._take_hold(s, e)
            switched.append(held)
            latencies.append(latency)
            total = self.records["unchanged_total"][s:e].sum()
            if total:
                right = self.records["unchanged_ok"][s:e].sum() / total
                kept.append(bool(right >= self.settings.kept_share))
        return {
            "count": len(latencies),
            "median_latency": float(np.median(latencies)) if latencies else None,
            "mean_latency": float(np.mean(latencies)) if latencies else None,
            "switched": float(np.mean(switched)) if switched else None,
            "kept": float(np.mean(kept)) if kept else None,
            "latencies": latencies,  # frames, per caption change (a missed one: its length)
        }

    def report(self, drift_fraction: float = 0.25) -> dict:
        """The whole report: overall metrics, switch latency, and drift (first vs last windows)."""
        n = self.expected.num_frames
        w = max(int(n * drift_fraction), 1)
        return {
            "frames": n,
            **self.summary(),
            "switch": self.switches(),
            "onset": self.onset(),
            "drift": {"window": w, "early": self.summary(0, w), "late": self.summary(n - w, n)},
        }


def onset_summary(reports: list[dict]) -> dict:
    """Over many videos' reports: how often the first caption comes to hold at all, and the median
    frames until it does (a miss counts as its whole segment), the baseline of switch latency."""
    onsets = [r["onset"] for r in reports]
    if not onsets:
        return {"onset_held": None, "onset_latency_median": None}
    return {
        "onset_held": float(np.mean([o["held"] for o in onsets])),
        "onset_latency_median": float(np.median([o["latency"] for o in onsets])),
    }


def mean_judged(values: Iterable[float | None]) -> float | None:
    """The mean of the values that were judged (not None); None if none was."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def score_video(
    frames: Iterable[np.ndarray],
    expected: Expected,
    detector: Detector | None = None,
    settings: MetricSettings | None = None,
) -> WorldScore:
    """Score a stream of `(H, W, 3)` uint8 frames against what `expected` asks for."""
    detector = detector or Detector()
    settings = settings or MetricSettings()
    detections = []
    for frame in frames:
        detections.append(detector(frame))
        if len(detections) == expected.num_frames:
            break
    if len(detections) < expected.num_frames:
        raise ArlonError(
            f"the video has {len(detections)} frames, its timeline or truth {expected.num_frames}"
        )
    score = WorldScore(expected, settings, detections)
    score.records = _records(detections, expected, settings)
    return score


def compare_to_truth(
    found: FrameDetection, state: FrameState, height: int, width: int
) -> list[tuple[WorldObject, Detection | None, float | None]]:
    """Each ground-truth object not touching another, with its detection (by colour) and the centre
    error in pixels (on the torus); the detector's own accuracy is measured with this."""
    hidden, by_colour = set(occluded_ids(state, height, width)), found.by_colour()
    pairs = []
    for o in state.objects:
        if o.id in hidden:
            continue
        d = by_colour.get(o.colour)
        error = None if d is None else math.hypot(_wrap(d.x - o.x, width), _wrap(d.y - o.y, height))
        pairs.append((o, d, error))
    return pairs


def _wrap(d: float, extent: int) -> float:
    return (d + extent / 2) % extent - extent / 2


def _velocity(track: list, frames: range, height: int, width: int) -> tuple[float, float] | None:
    """Least-squares velocity (px/frame) of a colour's centre over `frames`; None if mostly unseen."""
    seen = [(f, track[f]) for f in frames if track[f] is not None]
    if len(seen) < max(2, 0.75 * len(frames)):
        return None
    t = np.array([f for f, _ in seen], np.float64)
    xs, ys = [seen[0][1][0]], [seen[0][1][1]]
    for (_, (x, y)), (_, (px, py)) in zip(seen[1:], seen[:-1], strict=True):
        xs.append(xs[-1] + _wrap(x - px, width))
        ys.append(ys[-1] + _wrap(y - py, height))
    return float(np.polyfit(t, xs, 1)[0]), float(np.polyfit(t, ys, 1)[0])


def _motion_ok(asked: str, v: tuple[float, float] | None, still_below: float) -> bool:
    if v is None:
        return False
    label = direction_of(*v, still_below)
    return label != "still" if asked == "bounce" else label == asked


def _speed_class(track: list, frames: range, height: int, width: int) -> str | None:
    """Slow or fast from the median distance per frame (unlike a fitted velocity, a bounce inside
    the window does not shorten it); None if the object is missing from a step of the window."""
    steps = [
        math.hypot(_wrap(b[0] - a[0], width), _wrap(b[1] - a[1], height))
        for a, b in zip(
            (track[f] for f in frames[:-1]), (track[f] for f in frames[1:]), strict=True
        )
        if a is not None and b is not None
    ]
    if len(steps) < 0.75 * (len(frames) - 1):
        return None
    speed = float(np.median(steps)) / min(height, width)
    return min(vocab.SPEEDS, key=lambda s: abs(vocab.SPEEDS[s] - speed))


METRICS = (
    "object_accuracy",
    "precision",
    "colour",
    "shape",
    "size",
    "background",
    "motion",
    "speed",
    "count",
    "identity",
    "unchanged",
)


class _Records:
    """Per-frame counts of what was judged and what was right, per metric (`colour_ok`,
    `colour_total`, ...), and whether the whole caption holds in each frame (`holds`)."""

    def __init__(self, dets: list[FrameDetection], exp: Expected, cfg: MetricSettings):
        self.dets, self.exp, self.cfg = dets, exp, cfg
        n = exp.num_frames
        self.side = min(exp.height, exp.width)
        self.still_below = cfg.still_below * vocab.SPEEDS["slow"] * self.side
        self.seg = exp.segment_of()
        starts = exp.starts
        self.seg_end = {
            k: min(starts[k + 1] if k + 1 < len(starts) else n, n) for k in range(len(starts))
        }
        self.rec = {f"{m}_{s}": np.zeros(n) for m in METRICS for s in ("ok", "total")}
        self.rec["holds"] = np.zeros(n)
        self.by_colour = [d.by_colour() for d in dets]
        self.tracks = {
            c: [(bc[c].x, bc[c].y) if c in bc else None for bc in self.by_colour]
            for c in vocab.COLOURS
        }
        # (segment, colour) -> per frame of the segment: the asked motion held over its window
        self.moves: dict[tuple[int, str], list[bool | None]] = {}
        # per segment, the colours of the objects its caption change left as they were
        self.unchanged = [set()] + [
            {o.colour for o in now.objects if any(_same_spec(o, p) for p in before.objects)}
            for before, now in zip(exp.specs, exp.specs[1:], strict=False)
        ]

    def add(self, name: str, f: int, ok: bool) -> bool:
        self.rec[f"{name}_ok"][f] += ok
        self.rec[f"{name}_total"][f] += 1
        return ok

    def hidden(self, f: int) -> set[str]:
        return self.exp.hidden[f] if self.exp.hidden else set()

    def windows(self, k: int) -> list[range]:
        """Segment k cut into motion windows; a tail shorter than a window joins the one before."""
        start, end, w = self.exp.starts[k], self.seg_end[k], self.cfg.motion_window
        cuts = list(range(start, end, w))
        if len(cuts) > 1 and end - cuts[-1] < w:
            cuts.pop()
        return [range(a, b) for a, b in zip(cuts, [*cuts[1:], end], strict=True)]

    def motion(self) -> None:
        """Judge motion and speed over each window of each segment, for every asked object."""
        exp = self.exp
        for k in range(len(exp.starts)):
            for o in exp.specs[k].objects:
                moves = self.moves[k, o.colour] = []
                for window in self.windows(k):
                    judged = o.motion is not None and len(window) >= 3
                    if not judged or any(o.colour in self.hidden(f) for f in window):
                        moves += [None] * len(window)
                        continue
                    track = self.tracks[o.colour]
                    v = _velocity(track, window, exp.height, exp.width)
                    ok = self.add("motion", window[0], _motion_ok(o.motion, v, self.still_below))
                    moves += [ok] * len(window)
                    if o.speed is not None and o.motion != "still":
                        speed = _speed_class(track, window, exp.height, exp.width)
                        self.add("speed", window[0], speed == o.speed)

    def frame(self, f: int) -> None:
        """Judge frame `f` against the caption of its segment."""
        exp, det, k = self.exp, self.dets[f], self.seg[f]
        spec, hidden = exp.specs[k], self.hidden(f)
        holds = True
        if spec.background is not None:
            holds &= self.add("background", f, det.background == spec.background)
        asked = {o.colour for o in spec.objects}
        if not hidden:
            found = sorted(d.colour for d in det.objects)
            holds &= self.add("count", f, found == sorted(asked))
            if det.objects:
                self.rec["precision_ok"][f] += len(asked & {d.colour for d in det.objects})
                self.rec["precision_total"][f] += len(det.objects)
        for o in spec.objects:
            d = self.by_colour[f].get(o.colour)
            if o.colour in hidden:
                # Overlapping objects are not judged, but the caption holds only if they are there.
                holds &= d is not None
                continue
            there = self.object(f, o, d)
            holds &= there and self.moving(f, o)
            right = there and self.moves[k, o.colour][f - exp.starts[k]] is not False
            self.add("object_accuracy", f, right)
            if o.colour in self.unchanged[k]:
                self.add("unchanged", f, right)
        self.rec["holds"][f] = holds

    def object(self, f: int, o, d: Detection | None) -> bool:
        """Judge the asked object `o`, found as `d` (or not) in frame `f`: whether it is there with
        the asked colour, shape and size."""
        end = self.seg_end[self.seg[f]]
        right = self.add("colour", f, d is not None)
        if f + 1 < end and o.colour not in self.hidden(f + 1):
            nxt = self.by_colour[f + 1].get(o.colour)
            self.add("identity", f, d is not None and nxt is not None and self.same(d, nxt))
        if d is None:
            return False
        if not d.partial:
            right &= self.add("shape", f, d.shape == o.shape)
            if o.size is not None:
                right &= self.add("size", f, size_class(d.size, self.side) == o.size)
        return right

    def moving(self, f: int, o) -> bool:
        """Whether `o` already moves as asked over the few frames from `f` (for switch latency)."""
        short = range(f, min(f + self.cfg.hold + 1, self.seg_end[self.seg[f]]))
        if o.motion is None or len(short) < 3:
            return True
        v = _velocity(self.tracks[o.colour], short, self.exp.height, self.exp.width)
        return _motion_ok(o.motion, v, self.still_below)

    def same(self, d: Detection, nxt: Detection) -> bool:
        """Whether `nxt` in the next frame is plausibly the same object as `d`."""
        jump = math.hypot(_wrap(nxt.x - d.x, self.exp.width), _wrap(nxt.y - d.y, self.exp.height))
        ok = jump <= self.cfg.max_jump * self.side and 0.75 <= nxt.size / d.size <= 1.33
        return ok and (d.partial or nxt.partial or nxt.shape == d.shape)


def _same_spec(a, b) -> bool:
    """Whether two captions' objects are the same object asked the same way (an attribute only
    one of them states does not tell them apart)."""
    pairs = [(getattr(a, f), getattr(b, f)) for f in ("colour", "shape", "motion", "size", "speed")]
    return all(x == y or None in (x, y) for x, y in pairs)


def _records(
    dets: list[FrameDetection], exp: Expected, cfg: MetricSettings
) -> dict[str, np.ndarray]:
    records = _Records(dets, exp, cfg)
    records.motion()
    for f in range(exp.num_frames):
        records.frame(f)
    return records.rec

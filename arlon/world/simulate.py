"""Episodes: a timeline of scene specs realised as per-frame ground truth, deterministic from a seed.

Objects moving in a straight line live on a torus (leaving on the right, they come back on the left),
so a caption like "a red circle moves right" holds for any number of frames; bouncing objects reflect
off the walls. A new caption segment starts with an event: an object turns, changes colour, enters or
leaves, or the background changes. `random_episode` draws events; `episode_from_timeline` follows a
user's timeline of prompts. Both go through `apply_spec`, which carries matching objects across the
switch so that identity persists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from arlon.errors import ArlonError
from arlon.timeline import Timeline
from arlon.utils import atomic_path
from arlon.world import vocab
from arlon.world.captions import describe, describe_change, resolve
from arlon.world.scene import FrameState, ObjectSpec, SceneSpec, WorldObject

EVENTS = ("turn", "recolour", "enter", "leave", "background")


@dataclass
class Episode:
    """A captioned episode: its timeline, the spec of each segment, and the state of frame 0."""

    seed: int | tuple[int, ...]
    num_frames: int
    height: int = 64
    width: int = 64
    fps: float = 8.0
    timeline: list[tuple[int, str]] | None = None
    specs: list[SceneSpec] | None = None
    initial: FrameState | None = None

    def frames(self) -> Iterator[FrameState]:
        """Yield the ground-truth state of every frame, computed as it goes (constant memory)."""
        rng = _rng(self.seed, 1)
        state = self.initial.copy()
        starts = [s for s, _ in self.timeline]
        segment = 0
        for f in range(self.num_frames):
            if segment + 1 < len(starts) and f == starts[segment + 1]:
                segment += 1
                state = apply_spec(state, self.specs[segment], rng, self.height, self.width)
            yield state
            state = step(state, self.height, self.width)

    def truth(self) -> dict:
        """Everything known about the episode, as JSON-ready data (per-frame ground truth included)."""
        return {
            "seed": self.seed,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "timeline": [[s, c] for s, c in self.timeline],
            "specs": [s.to_dict() for s in self.specs],
            "frames": [
                {**state.to_dict(), "occluded": occluded_ids(state, self.height, self.width)}
                for state in self.frames()
            ],
        }

    def save_truth(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.truth(), separators=(",", ":")))


def _rng(seed: int | tuple[int, ...], stream: int) -> np.random.Generator:
    """Independent seeded streams: 0 draws the timeline, 1 the events' choices, 2 the placement."""
    return np.random.default_rng([*(seed if isinstance(seed, tuple) else (seed,)), stream])


def check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0 or height % 8 or width % 8:
        raise ArlonError(f"frame size must be a positive multiple of 8, got {height}x{width}")


def _check_frames(num_frames: int) -> None:
    if num_frames <= 0:
        raise ArlonError(f"the number of frames must be positive, got {num_frames}")


def random_episode(
    seed: int | tuple[int, ...],
    num_frames: int,
    height: int = 64,
    width: int = 64,
    fps: float = 8.0,
    segment_frames: tuple[int, int] = (48, 160),
    events: bool = True,
    deltas: float = 0.0,
) -> Episode:
    """A random episode; with `events`, a new caption segment every `segment_frames` (min, max).
    A later caption states only the change ("the circle turns blue") with probability `deltas`,
    else the whole scene."""
    check_size(height, width)
    _check_frames(num_frames)
    rng = _rng(seed, 0)
    spec = random_spec(rng)
    starts = [0]
    while events:
        nxt = starts[-1] + int(rng.integers(segment_frames[0], segment_frames[1] + 1))
        if nxt + segment_frames[0] > num_frames:  # the last segment is full-length too
            break
        starts.append(nxt)
    specs = [spec]
    for _ in starts[1:]:
        specs.append(random_event(specs[-1], rng))
    captions = [describe(specs[0], rng)]
    for before, after in zip(specs, specs[1:], strict=False):
        delta = rng.random() < deltas
        captions.append(describe_change(before, after, rng) if delta else describe(after, rng))
    timeline = list(zip(starts, captions, strict=True))
    initial = place(specs[0], _rng(seed, 2), height, width)
    return Episode(seed, num_frames, height, width, fps, timeline, specs, initial)


def episode_from_timeline(
    timeline: Timeline | list[tuple[int, str]],
    num_frames: int,
    seed: int = 0,
    height: int = 64,
    width: int = 64,
    fps: float = 8.0,
) -> Episode:
    """The clean render of a prompt timeline: what a perfect generator would show for it."""
    check_size(height, width)
    _check_frames(num_frames)
    timeline = Timeline.of(timeline)
    rng = _rng(seed, 0)
    specs = resolve(timeline.prompts, fill=lambda spec: complete_spec(spec, rng))
    initial = place(specs[0], _rng(seed, 2), height, width)
    return Episode(seed, num_frames, height, width, fps, list(timeline), specs, initial)


def random_spec(rng: np.random.Generator, num_objects: int | None = None) -> SceneSpec:
    n = num_objects or int(rng.integers(1, vocab.MAX_OBJECTS + 1))
    colours = rng.choice(list(vocab.COLOURS), size=n, replace=False)
    objects = tuple(_random_object(str(c), rng) for c in colours)
    return SceneSpec(objects, str(rng.choice(list(vocab.BACKGROUNDS))))


def _random_object(colour: str, rng: np.random.Generator) -> ObjectSpec:
    motion = str(rng.choice(vocab.MOTIONS))
    speed = None if motion == "still" else str(rng.choice(list(vocab.SPEEDS)))
    return ObjectSpec(
        colour, str(rng.choice(vocab.SHAPES)), motion, str(rng.choice(list(vocab.SIZES))), speed
    )


def complete_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Fill what a caption left unsaid (size, speed, motion, background) with seeded choices."""
    objects = []
    for o in spec.objects:
        motion = o.motion or "still"
        speed = o.speed or (None if motion == "still" else str(rng.choice(list(vocab.SPEEDS))))
        objects.append(replace(o, motion=motion, size=o.size or "medium", speed=speed))
    background = spec.background or str(rng.choice(list(vocab.BACKGROUNDS)))
    return SceneSpec(tuple(objects), background)


def random_event(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """The spec after one random event (turn, recolour, enter, leave, background change)."""
    possible = ["turn", "recolour", "background"]
    if len(spec.objects) < vocab.MAX_OBJECTS:
        possible.append("enter")
    if len(spec.objects) > 1:
        possible.append("leave")
    event = str(rng.choice(possible))
    objects = list(spec.objects)
    unused = [c for c in vocab.COLOURS if c not in {o.colour for o in objects}]
    i = int(rng.integers(len(objects)))
    if event == "turn":
        motion = str(rng.choice([m for m in vocab.MOTIONS if m != objects[i].motion]))
        speed = None if motion == "still" else (objects[i].speed or "slow")
        objects[i] = replace(objects[i], motion=motion, speed=speed)
    elif event == "recolour":
        objects[i] = replace(objects[i], colour=str(rng.choice(unused)))
    elif event == "enter":
        objects.append(_random_object(str(rng.choice(unused)), rng))
    elif event == "leave":
        objects.pop(i)
    else:
        others = [b for b in vocab.BACKGROUNDS if b != spec.background]
        return SceneSpec(spec.objects, str(rng.choice(others)))
    return SceneSpec(tuple(objects), spec.background)


def _velocity(motion: str, speed: str | None, rng: np.random.Generator, scale: float):
    if motion == "still":
        return 0.0, 0.0
    v = vocab.SPEEDS[speed or "slow"] * scale
    if motion == "bounce":
        dx, dy = vocab.DIRECTIONS[
            str(rng.choice(["up-right", "up-left", "down-right", "down-left"]))
        ]
    else:
        dx, dy = vocab.DIRECTIONS[motion]
    return v * dx, v * dy


def _new_object(o: ObjectSpec, oid: int, state: FrameState, rng, height: int, width: int):
    scale = min(height, width)
    size = vocab.SIZES[o.size or "medium"] * scale
    vx, vy = _velocity(o.motion or "still", o.speed, rng, scale)
    # Rejection-sample a free spot; bouncing objects must start fully inside the walls.
    for _ in range(100):
        x = rng.uniform(size / 2 + 1, width - size / 2 - 1)
        y = rng.uniform(size / 2 + 1, height - size / 2 - 1)
        if all(_gap(x, y, size, p) > 1 for p in state.objects):
            break
    return WorldObject(
        oid, o.shape, o.colour, size, x, y, vx, vy, o.motion or "still", o.size or "medium", o.speed
    )


def _gap(x: float, y: float, size: float, other: WorldObject) -> float:
    return max(abs(x - other.x), abs(y - other.y)) - (size + other.size) / 2


def place(spec: SceneSpec, rng: np.random.Generator, height: int, width: int) -> FrameState:
    """Frame 0 of a scene: objects at random free positions, velocities from their motion."""
    state = FrameState(spec.background, [])
    for i, o in enumerate(spec.objects):
        state.objects.append(_new_object(o, i, state, rng, height, width))
    return state


def apply_spec(
    state: FrameState, spec: SceneSpec, rng: np.random.Generator, height: int, width: int
) -> FrameState:
    """The state after switching to `spec`: matching objects keep their id and position.

    Objects are matched by (colour, shape) first, then by shape alone (a colour change); objects of
    the new spec with no match enter at a free spot, old ones with no match leave.
    """
    scale = min(height, width)
    old = list(state.objects)
    matched: dict[int, WorldObject] = {}
    for key in (lambda o: (o.colour, o.shape), lambda o: o.shape):
        for i, o in enumerate(spec.objects):
            if i in matched:
                continue
            hit = next((p for p in old if key(p) == key(o)), None)
            if hit is not None:
                matched[i] = hit
                old.remove(hit)
    new = FrameState(spec.background or state.background, [])
    next_id = max((o.id for o in state.objects), default=-1) + 1
    for i, o in enumerate(spec.objects):
        if i not in matched:
            continue
        p = matched[i]
        same_motion = p.motion == o.motion and p.speed == o.speed
        vx, vy = (
            (p.vx, p.vy) if same_motion else _velocity(o.motion or "still", o.speed, rng, scale)
        )
        size = vocab.SIZES[o.size] * scale if o.size else p.size
        new.objects.append(
            replace(
                p,
                colour=o.colour,
                motion=o.motion or p.motion,
                speed=o.speed,
                vx=vx,
                vy=vy,
                size=size,
                size_name=o.size or p.size_name,
            )
        )
    for i, o in enumerate(spec.objects):
        if i not in matched:
            new.objects.append(_new_object(o, next_id, new, rng, height, width))
            next_id += 1
    return new


def step(state: FrameState, height: int, width: int) -> FrameState:
    """Advance one frame: straight movers wrap around the frame, bouncing ones reflect off walls."""
    objects = []
    for o in state.objects:
        x, y, vx, vy = o.x + o.vx, o.y + o.vy, o.vx, o.vy
        if o.motion == "bounce":
            half = o.size / 2
            x, vx = _reflect(x, vx, half, width - half)
            y, vy = _reflect(y, vy, half, height - half)
        else:
            x, y = x % width, y % height
        objects.append(replace(o, x=x, y=y, vx=vx, vy=vy))
    return FrameState(state.background, objects)


def _reflect(p: float, v: float, lo: float, hi: float) -> tuple[float, float]:
    if p < lo:
        return 2 * lo - p, abs(v)
    if p > hi:
        return 2 * hi - p, -abs(v)
    return p, v


def occluded_ids(state: FrameState, height: int, width: int) -> list[int]:
    """Ids of objects whose box touches another's (on the torus): partly hidden, or merged with it."""
    hidden = set()
    for i, a in enumerate(state.objects):
        for b in state.objects[i + 1 :]:
            dx = abs(a.x - b.x) % width
            dy = abs(a.y - b.y) % height
            gap = max(min(dx, width - dx), min(dy, height - dy)) - (a.size + b.size) / 2
            if gap <= 1:
                hidden.update((a.id, b.id))
    return sorted(hidden)


def direction_of(vx: float, vy: float, still_below: float) -> str:
    """The motion label of a velocity (image coordinates): one of 8 directions or 'still'."""
    if math.hypot(vx, vy) < still_below:
        return "still"
    angle = math.degrees(math.atan2(-vy, vx)) % 360
    return ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")[
        int(((angle + 22.5) % 360) // 45)
    ]

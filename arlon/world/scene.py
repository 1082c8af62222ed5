"""What a scene is: a caption-level spec (what a prompt asks for) and a frame-level state (what is drawn).

`SceneSpec` is what a caption says: which objects, their colour, shape and motion, the background.
Attributes a caption leaves out are `None` and match anything. `FrameState` is the ground truth of one
rendered frame: every object's exact size, centre and velocity in pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from arlon.errors import ArlonError
from arlon.world import vocab


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    motion: str | None = None
    size: str | None = None
    speed: str | None = None

    def __post_init__(self):
        _check(self.colour, vocab.COLOURS, "colour")
        _check(self.shape, vocab.SHAPES, "shape")
        _check(self.motion, vocab.MOTIONS, "motion")
        _check(self.size, vocab.SIZES, "size")
        _check(self.speed, vocab.SPEEDS, "speed")


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: str | None = None

    def __post_init__(self):
        _check(self.background, vocab.BACKGROUNDS, "background")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            # Colour is an object's identity in this world: the detector tracks objects by it.
            raise ArlonError(f"two objects share a colour in {colours}; each object needs its own")
        if not 1 <= len(self.objects) <= vocab.MAX_OBJECTS:
            raise ArlonError(f"a scene holds 1 to {vocab.MAX_OBJECTS} objects, got {len(colours)}")

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> SceneSpec:
        return cls(tuple(ObjectSpec(**o) for o in d["objects"]), d.get("background"))


def world_event(before: SceneSpec, after: SceneSpec) -> str:
    """The world event that turns scene `before` into `after` (one per caption change of an
    episode, `simulate.random_event`): 'background', 'enter', 'leave', 'recolour', else 'turn'."""
    if before.background != after.background:
        return "background"
    if len(after.objects) != len(before.objects):
        return "enter" if len(after.objects) > len(before.objects) else "leave"
    if {o.colour for o in before.objects} != {o.colour for o in after.objects}:
        return "recolour"
    return "turn"


@dataclass
class WorldObject:
    """One object in one frame; sizes, centres and velocities in pixels (x right, y down)."""

    id: int
    shape: str
    colour: str
    size: float
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    motion: str = "still"
    size_name: str = "medium"
    speed: str | None = None

    def spec(self) -> ObjectSpec:
        return ObjectSpec(self.colour, self.shape, self.motion, self.size_name, self.speed)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("size", "x", "y", "vx", "vy"):
            d[k] = round(d[k], 3)
        return d


@dataclass
class FrameState:
    background: str
    objects: list[WorldObject] = field(default_factory=list)

    def spec(self) -> SceneSpec:
        return SceneSpec(tuple(o.spec() for o in self.objects), self.background)

    def copy(self) -> FrameState:
        return FrameState(self.background, [replace(o) for o in self.objects])

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> FrameState:
        return cls(d["background"], [WorldObject(**o) for o in d["objects"]])


def _check(value, allowed, what: str) -> None:
    if value is not None and value not in allowed:
        raise ArlonError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")

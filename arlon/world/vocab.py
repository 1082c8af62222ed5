"""The shapes world's vocabulary: palette, shapes, sizes, motions, and the words for each.

Every fact has a *canonical* word (the `short` suite's), *training* words (everything the caption
generator draws from: the words people reach for first, compass directions, counts, a dozen sentence
shapes in `captions`) and *evaluation-only* words, rarer ones that no training caption uses (the
`paraphrase` suite's), so that evaluation can still ask whether the text path carries a meaning
onto a word it never saw. The parser reads all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Words:
    """The words for one fact: `train[0]` is the canonical word, `train` what training captions use,
    `eval_only` rarer words that no training caption uses (the `paraphrase` suite's)."""

    train: tuple[str, ...]
    eval_only: tuple[str, ...] = ()

    @property
    def canonical(self) -> str:
        return self.train[0]

    @property
    def all(self) -> tuple[str, ...]:
        return self.train + self.eval_only


# Object colours are saturated and far apart so that a blurred, noisy frame still segments cleanly.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "cyan": (40, 200, 220),
    "blue": (50, 90, 230),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}

# Backgrounds are dark or mid-grey so that every object colour stands out against each of them.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (96, 96, 96),
    "navy": (20, 28, 78),
    "brown": (72, 46, 24),
}

COLOUR_WORDS: dict[str, Words] = {
    "red": Words(("red", "scarlet", "ruby", "cherry", "bright red", "blood-red"), ("crimson",)),
    "orange": Words(
        ("orange", "tangerine", "pumpkin", "apricot", "bright orange", "carrot-orange"), ("amber",)
    ),
    "yellow": Words(("yellow", "golden", "gold", "lemon", "canary", "sunny yellow"), ("saffron",)),
    "green": Words(
        ("green", "emerald", "lime", "grass-green", "leaf-green", "bright green"), ("jade",)
    ),
    "cyan": Words(("cyan", "turquoise", "teal", "aqua", "light blue", "sky-blue"), ("aquamarine",)),
    "blue": Words(
        ("blue", "azure", "sapphire", "royal blue", "bright blue", "deep blue"), ("cobalt",)
    ),
    "purple": Words(("purple", "violet", "lilac", "lavender", "grape", "deep purple"), ("plum",)),
    "white": Words(
        ("white", "snowy", "snow-white", "milk-white", "pearl", "chalk-white"), ("ivory",)
    ),
}

BACKGROUND_WORDS: dict[str, Words] = {
    "black": Words(("black", "jet-black", "dark", "inky black"), ("pitch-black", "ebony")),
    "gray": Words(("gray", "grey", "ash-gray", "stone-grey"), ("slate", "pewter")),
    "navy": Words(("navy", "dark blue", "navy blue", "blue"), ("midnight-blue",)),
    "brown": Words(("brown", "chocolate", "dark brown", "coffee"), ("umber", "sepia")),
}

SHAPES = ("circle", "square", "triangle")
SHAPE_WORDS: dict[str, Words] = {
    "circle": Words(("circle", "ball", "dot", "sphere", "orb"), ("disc",)),
    "square": Words(("square", "box", "block", "cube", "tile"), ("slab",)),
    "triangle": Words(("triangle", "wedge", "pyramid", "arrowhead", "cone"), ("spike",)),
}


def plural(noun: str) -> str:
    """'box' -> 'boxes', 'circle' -> 'circles': the shape nouns' plurals."""
    return noun + ("es" if noun.endswith(("x", "s", "sh", "ch")) else "s")


# Numbers of objects in words ("two shapes: ...", "two squares: a red one ... and a blue one ...").
COUNT_WORDS: dict[int, Words] = {
    1: Words(("one",)),
    2: Words(("two", "a pair of"), ("a couple of",)),
    3: Words(("three",), ("a trio of",)),
}
COUNT_NOUNS = Words(("shapes", "objects", "things"), ("figures",))

# Side (or diameter) as a fraction of the frame's shorter side.
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.22, "large": 0.30}
SIZE_WORDS: dict[str, Words] = {
    "small": Words(("small", "little", "tiny"), ("petite",)),
    "medium": Words(("medium", "medium-sized", "mid-sized"), ("moderate-sized",)),
    "large": Words(("large", "big", "huge"), ("enormous",)),
}

# Distance per frame as a fraction of the frame's shorter side (at 64 px: 0.8 and 1.6 px/frame).
SPEEDS: dict[str, float] = {"slow": 0.0125, "fast": 0.025}
SPEED_WORDS: dict[str, Words] = {
    "slow": Words(("slowly", "gently", "lazily"), ("leisurely",)),
    "fast": Words(("quickly", "fast", "rapidly", "swiftly"), ("briskly",)),
}

# Unit direction per motion, in image coordinates (x right, y down).
_D = 1 / math.sqrt(2)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_D, -_D),
    "up-left": (-_D, -_D),
    "down-right": (_D, _D),
    "down-left": (-_D, _D),
}
MOTIONS = (*DIRECTIONS, "still", "bounce")

MOTION_WORDS: dict[str, Words] = {
    "right": Words(
        (
            "moves right",
            "moves to the right",
            "slides right",
            "travels rightward",
            "heads right",
            "heads east",
            "goes right",
            "moves across the frame to the right",
            "moves from left to right",
        ),
        ("drifts to the right", "glides rightward"),
    ),
    "left": Words(
        (
            "moves left",
            "moves to the left",
            "slides left",
            "travels leftward",
            "heads left",
            "heads west",
            "goes left",
            "moves across the frame to the left",
            "moves from right to left",
        ),
        ("drifts to the left", "glides leftward"),
    ),
    "up": Words(
        (
            "moves up",
            "rises",
            "moves upward",
            "travels up",
            "heads north",
            "goes up",
            "climbs",
            "moves toward the top",
            "moves from the bottom to the top",
        ),
        ("floats upward", "ascends"),
    ),
    "down": Words(
        (
            "moves down",
            "falls",
            "moves downward",
            "sinks",
            "heads south",
            "goes down",
            "drops",
            "moves toward the bottom",
            "moves from the top to the bottom",
        ),
        ("descends", "plummets"),
    ),
    **{
        f"{v}-{h}": Words(
            (
                f"moves {v} and to the {h}",
                f"moves diagonally {v}-{h}",
                f"heads to the {vv} {h}",
                f"heads {compass}",
                f"goes {v} and {h}",
                f"moves toward the {edge} {h}",
                f"{verb} to the {h}",
                f"travels diagonally toward the {vv} {h}",
            ),
            (f"drifts toward the {edge} {h}", f"slants {compass}ward"),
        )
        for v, vv, edge, verb in (
            ("up", "upper", "top", "rises"),
            ("down", "lower", "bottom", "sinks"),
        )
        for h in ("right", "left")
        for compass in [("north" if v == "up" else "south") + ("east" if h == "right" else "west")]
    },
    "still": Words(
        (
            "stays still",
            "does not move",
            "rests in place",
            "sits motionless",
            "stays put",
            "is not moving",
            "holds still",
            "is at rest",
        ),
        ("remains stationary", "stands immobile"),
    ),
    "bounce": Words(
        (
            "bounces around",
            "bounces off the walls",
            "ricochets around the frame",
            "bounces from wall to wall",
            "keeps bouncing",
            "bounces off the edges",
            "ricochets off the walls",
            "bounces all over the frame",
        ),
        ("rebounds off the edges", "caroms around"),
    ),
}

# Keywords the parser maps to a direction component; they cover every word list above and ordinary
# paraphrases ("leftward", "ascending"), so a user's own wording parses too.
HORIZONTAL_KEYWORDS = {
    **dict.fromkeys(("right", "rightward", "rightwards", "east"), "right"),
    **dict.fromkeys(("left", "leftward", "leftwards", "west"), "left"),
}
VERTICAL_KEYWORDS = {
    **dict.fromkeys(
        [
            "up",
            "upward",
            "upwards",
            "upper",
            "top",
            "north",
            "rise",
            "rises",
            "rising",
            "ascend",
            "ascends",
            "ascending",
            "climb",
            "climbs",
            "climbing",
        ],
        "up",
    ),
    **dict.fromkeys(
        [
            "down",
            "downward",
            "downwards",
            "lower",
            "bottom",
            "south",
            "fall",
            "falls",
            "falling",
            "sink",
            "sinks",
            "sinking",
            "descend",
            "descends",
            "descending",
            "drop",
            "drops",
            "dropping",
            "plummet",
            "plummets",
            "plummeting",
        ],
        "down",
    ),
}
# One-word diagonals: "northeast", "southwestward".
DIAGONAL_KEYWORDS = {
    f"{ns}{ew}{suffix}": f"{v}-{h}"
    for ns, v in (("north", "up"), ("south", "down"))
    for ew, h in (("east", "right"), ("west", "left"))
    for suffix in ("", "ward", "wards")
}

STILL_KEYWORDS = (
    "still",
    "motionless",
    "stationary",
    "immobile",
    "rests",
    "at rest",
    "not move",
    "not moving",
    "static",
    "in place",
    "stays put",
    "staying put",
)
BOUNCE_KEYWORDS = ("bounc", "ricochet", "rebound", "carom")

MAX_OBJECTS = 3

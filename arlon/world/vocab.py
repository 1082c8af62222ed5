"""The shapes world's vocabulary: palette, shapes, sizes, motions, and the words for each.

Every fact has *training* words (the caption generator draws from them) and *held-out* words (only
the parser and the paraphrase suite know them), so that evaluation can ask whether the text path
generalises beyond the wording it was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Words:
    train: tuple[str, ...]
    heldout: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.train + self.heldout


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
    "red": Words(("red", "scarlet"), ("crimson",)),
    "orange": Words(("orange", "tangerine"), ("amber",)),
    "yellow": Words(("yellow", "golden"), ("lemon",)),
    "green": Words(("green", "emerald"), ("lime",)),
    "cyan": Words(("cyan", "turquoise"), ("aqua",)),
    "blue": Words(("blue", "azure"), ("cobalt",)),
    "purple": Words(("purple", "violet"), ("plum",)),
    "white": Words(("white", "snowy"), ("ivory",)),
}

BACKGROUND_WORDS: dict[str, Words] = {
    "black": Words(("black", "jet-black"), ("pitch-black",)),
    "gray": Words(("gray", "grey"), ("slate",)),
    "navy": Words(("navy", "dark blue"), ("midnight-blue",)),
    "brown": Words(("brown", "chocolate"), ("umber",)),
}

SHAPES = ("circle", "square", "triangle")
SHAPE_WORDS: dict[str, Words] = {
    "circle": Words(("circle", "ball", "dot"), ("disc",)),
    "square": Words(("square", "box", "block"), ("tile",)),
    "triangle": Words(("triangle", "wedge"), ("pyramid",)),
}

# Side (or diameter) as a fraction of the frame's shorter side.
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.22, "large": 0.30}
SIZE_WORDS: dict[str, Words] = {
    "small": Words(("small", "little", "tiny"), ("petite",)),
    "medium": Words(("medium", "medium-sized"), ("mid-sized",)),
    "large": Words(("large", "big"), ("huge",)),
}

# Distance per frame as a fraction of the frame's shorter side (at 64 px: 0.8 and 1.6 px/frame).
SPEEDS: dict[str, float] = {"slow": 0.0125, "fast": 0.025}
SPEED_WORDS: dict[str, Words] = {
    "slow": Words(("slowly", "gently"), ("leisurely",)),
    "fast": Words(("quickly", "fast"), ("rapidly",)),
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
        ("moves right", "moves to the right", "slides right", "travels rightward", "heads right"),
        ("drifts to the right", "glides rightward"),
    ),
    "left": Words(
        ("moves left", "moves to the left", "slides left", "travels leftward", "heads left"),
        ("drifts to the left", "glides leftward"),
    ),
    "up": Words(("moves up", "rises", "moves upward", "travels up"), ("floats upward", "ascends")),
    "down": Words(
        ("moves down", "falls", "moves downward", "sinks"), ("descends", "drops downward")
    ),
    "up-right": Words(
        ("moves up and to the right", "moves diagonally up-right", "heads to the upper right"),
        ("drifts toward the top right",),
    ),
    "up-left": Words(
        ("moves up and to the left", "moves diagonally up-left", "heads to the upper left"),
        ("drifts toward the top left",),
    ),
    "down-right": Words(
        ("moves down and to the right", "moves diagonally down-right", "heads to the lower right"),
        ("drifts toward the bottom right",),
    ),
    "down-left": Words(
        ("moves down and to the left", "moves diagonally down-left", "heads to the lower left"),
        ("drifts toward the bottom left",),
    ),
    "still": Words(
        ("stays still", "does not move", "rests in place", "sits motionless"),
        ("remains stationary", "stands still"),
    ),
    "bounce": Words(
        ("bounces around", "bounces off the walls", "ricochets around the frame"),
        ("rebounds off the edges",),
    ),
}

# Keywords the parser maps to a direction component; they cover both word lists above and
# ordinary paraphrases ("leftward", "ascends"), so a user's own wording parses too.
HORIZONTAL_KEYWORDS = {
    "right": "right",
    "rightward": "right",
    "rightwards": "right",
    "east": "right",
    "left": "left",
    "leftward": "left",
    "leftwards": "left",
    "west": "left",
}
VERTICAL_KEYWORDS = {
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "upper": "up",
    "top": "up",
    "rises": "up",
    "rise": "up",
    "ascends": "up",
    "climbs": "up",
    "north": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
    "lower": "down",
    "bottom": "down",
    "falls": "down",
    "fall": "down",
    "sinks": "down",
    "descends": "down",
    "drops": "down",
    "south": "down",
}
# Words the parser also reads as a background: how people name the world's backgrounds; no caption
# uses them, so the CLI still lists them as words the model never saw.
BACKGROUND_KEYWORDS = {"dark": "black", "blue": "navy"}

STILL_KEYWORDS = ("still", "motionless", "stationary", "rests", "not move", "static", "in place")
BOUNCE_KEYWORDS = ("bounce", "ricochet", "rebound")

MAX_OBJECTS = 3

"""Captions from scene specs with varied wording, and the parser that reads a caption back into a spec.

`describe` draws every word and template at random (seeded), so the same scene has many wordings and
the text encoder has to carry meaning, not a template. `parse_caption` understands the training words,
the held-out words, and direction keywords, so user prompts and paraphrases map back onto the world.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from arlon.errors import ArlonError
from arlon.world import vocab
from arlon.world.scene import ObjectSpec, SceneSpec

_BACKGROUND_TEMPLATES = (
    "{objects} on a {bg} background",
    "on a {bg} background, {objects}",
    "{objects} against a {bg} backdrop",
    "{objects}; the background is {bg}",
    "{objects} over a {bg} background",
)


def describe(spec: SceneSpec, rng: np.random.Generator, heldout: bool = False) -> str:
    """One caption for `spec`, wording drawn from `rng`; `heldout=True` uses only held-out words."""

    def pick(words: vocab.Words) -> str:
        options = words.heldout if heldout and words.heldout else words.train
        return options[rng.integers(len(options))]

    clauses = []
    for obj in spec.objects:
        adjectives = []
        if obj.size is not None and rng.random() < 0.5:
            adjectives.append(pick(vocab.SIZE_WORDS[obj.size]))
        adjectives.append(pick(vocab.COLOUR_WORDS[obj.colour]))
        noun = " ".join([*adjectives, pick(vocab.SHAPE_WORDS[obj.shape])])
        clause = f"{_article(noun)} {noun}"
        if obj.motion is not None:
            verb = pick(vocab.MOTION_WORDS[obj.motion])
            if obj.speed is not None and obj.motion not in ("still",) and rng.random() < 0.5:
                speed = pick(vocab.SPEED_WORDS[obj.speed])
                # Adverbs in -ly read well either side of the verb ("slowly rises", "rises
                # slowly"); "fast" only after it.
                before = speed.endswith("ly") and rng.random() < 0.5
                verb = f"{speed} {verb}" if before else f"{verb} {speed}"
            clause = f"{clause} {verb}"
        clauses.append(clause)
    objects = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    if spec.background is None:
        text = objects
    else:
        template = _BACKGROUND_TEMPLATES[rng.integers(len(_BACKGROUND_TEMPLATES))]
        text = template.format(objects=objects, bg=pick(vocab.BACKGROUND_WORDS[spec.background]))
    return text[0].upper() + text[1:]


@functools.cache
def training_words() -> frozenset[str]:
    """Every word a training caption can use (`describe` without held-out words), lower case."""
    tables = (
        vocab.COLOUR_WORDS,
        vocab.BACKGROUND_WORDS,
        vocab.SHAPE_WORDS,
        vocab.SIZE_WORDS,
        vocab.SPEED_WORDS,
        vocab.MOTION_WORDS,
    )
    phrases = [w for table in tables for words in table.values() for w in words.train]
    phrases += [t.format(objects="a an and", bg="") for t in _BACKGROUND_TEMPLATES]
    return frozenset(word for phrase in phrases for word in words_of(phrase))


def words_of(text: str) -> list[str]:
    """The words of `text`, lower case, in order; hyphens and digits split words."""
    return re.findall(r"[^\W\d_]+", text.lower())


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` that no training caption uses, each once, in order."""
    known = training_words()
    return list(dict.fromkeys(w for w in words_of(prompt) if w not in known))


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _phrase_table(words: dict[str, vocab.Words]) -> list[tuple[str, str]]:
    """(phrase, meaning) pairs, longest phrase first so that 'dark blue' wins over 'blue'."""
    pairs = [(w.lower(), name) for name, ws in words.items() for w in ws.all]
    return sorted(pairs, key=lambda p: -len(p[0]))


_COLOURS = _phrase_table(vocab.COLOUR_WORDS)
_BACKGROUNDS = _phrase_table(vocab.BACKGROUND_WORDS)
_SHAPES = _phrase_table(vocab.SHAPE_WORDS)
_SIZES = _phrase_table(vocab.SIZE_WORDS)
_SPEEDS = _phrase_table(vocab.SPEED_WORDS)
_BG_PATTERNS = (
    re.compile(
        r"\b(?:on|against|over|in front of)\s+(?:a|an|the)?\s*(?P<bg>[\w\s-]+?)\s+"
        r"(?:background|backdrop)\b"
    ),
    re.compile(r"\b(?:the\s+)?(?:background|backdrop)\s+is\s+(?P<bg>[\w\s-]+)$"),
    re.compile(r"\b(?:the\s+)?(?:background|backdrop)\s+(?:turns|becomes)\s+(?P<bg>[\w\s-]+)$"),
)
# A new object starts at a comma, a semicolon, or an "and" followed by an article; the "and" in
# "moves up and to the right" is not followed by an article, so it stays inside its clause.
_CLAUSE_SPLIT = re.compile(r"\s*(?:;|,\s*and\s+(?=(?:a|an|the)\b)|,|\band\s+(?=(?:a|an|the)\b))\s*")


def parse_caption(text: str) -> SceneSpec:
    """Read a caption (or a user's prompt) back into a `SceneSpec`; unsaid attributes stay `None`."""
    if not isinstance(text, str) or not text.strip():
        raise ArlonError("empty prompt: describe the scene, e.g. 'a red circle moves right'")
    s = " " + re.sub(r"[^\w\s,;-]", " ", text.lower()) + " "
    background = None
    for pattern in _BG_PATTERNS:
        for clause in re.split(r"[;,]", s):
            m = pattern.search(clause.strip())
            if m:
                background = _find(_BACKGROUNDS, m.group("bg"))
                if background is None:
                    raise ArlonError(f"unknown background {m.group('bg').strip()!r} in {text!r}")
                s = s.replace(m.group(0), " ")
                break
        if background is not None:
            break
    objects = [spec for part in _CLAUSE_SPLIT.split(s) if (spec := _parse_object(part))]
    if not objects:
        raise ArlonError(
            f"no object found in {text!r}: name a colour and a shape, e.g. 'a red circle moves right'"
        )
    return SceneSpec(tuple(objects), background)


def _parse_object(clause: str) -> ObjectSpec | None:
    clause = f" {clause.strip()} "
    shape_at = _locate(_SHAPES, clause)
    if shape_at is None:
        return None
    shape, pos = shape_at
    before, after = clause[:pos], clause[pos:]
    colour = _find(_COLOURS, before)
    if colour is None:
        raise ArlonError(
            f"no known colour for the {shape} in {clause.strip()!r}; "
            f"known: {', '.join(vocab.COLOURS)}"
        )
    return ObjectSpec(
        colour, shape, _parse_motion(after), _find(_SIZES, before), _find(_SPEEDS, after)
    )


def _parse_motion(text: str) -> str | None:
    words = re.findall(r"[\w-]+", text.replace("-", " "))
    if any(k in text for k in vocab.BOUNCE_KEYWORDS):
        return "bounce"
    if any(f" {k} " in f" {' '.join(words)} " for k in vocab.STILL_KEYWORDS):
        return "still"
    horizontal = next(
        (vocab.HORIZONTAL_KEYWORDS[w] for w in words if w in vocab.HORIZONTAL_KEYWORDS), None
    )
    vertical = next(
        (vocab.VERTICAL_KEYWORDS[w] for w in words if w in vocab.VERTICAL_KEYWORDS), None
    )
    if horizontal and vertical:
        return f"{vertical}-{horizontal}"
    return horizontal or vertical


def _locate(table: list[tuple[str, str]], text: str) -> tuple[str, int] | None:
    """The earliest whole-word phrase of `table` in `text`, as (meaning, position)."""
    best = None
    for phrase, name in table:
        m = re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text)
        if m and (best is None or m.start() < best[1]):
            best = (name, m.start())
    return best


def _find(table: list[tuple[str, str]], text: str) -> str | None:
    found = _locate(table, text)
    return found[0] if found else None

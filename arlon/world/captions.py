"""Captions from scene specs with varied wording, and the parser that reads a caption back into a spec.

`describe` draws every word and sentence shape at random (seeded), so the same scene has many
wordings and the text encoder has to carry meaning, not a template; its `wording` also writes the
suites' canonical, everyday and evaluation-only prompts. `parse_caption` reads all of them, counts
("two squares: a red one ... and a blue one ...") and direction keywords, so user prompts map back
onto the world.

A story's later prompts may state only a change ("the circle turns blue", "the square stops", "a
green triangle comes in and moves left", "a green triangle comes in from the left", which heads
right, "the background turns gray"): `describe_change` writes one, `apply_change` reads one against
the scene before it, and `resolve` reads a timeline's prompts into the scene of each, keeping
whatever a change does not mention as it was.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace

import numpy as np

from arlon.errors import ArlonError
from arlon.world import vocab
from arlon.world.scene import ObjectSpec, SceneSpec, world_event

WORDINGS = ("training", "canonical", "everyday", "eval-only")
"""How `describe` words a scene. `training`: any training word and sentence shape, size and speed
said half the time (what training captions are). The suites' wordings state every fact:
`canonical`, the first word of each list in the plain sentence; `everyday`, training words and
shapes other than the canonical ones; `eval-only`, the words and shapes no training caption uses."""

# Sentence shapes. {objects}: "a red circle moves right and a blue square moves up" (the two joined
# by "while" as often); {ing}: "a red circle moving right and ..."; {that}: "a red circle that moves
# right and ..."; {count}: "two shapes", or "two squares" with each object "a red one ...".
CANONICAL = "{objects} on a {bg} background"
TEMPLATES = (
    CANONICAL,
    "on a {bg} background, {objects}",
    "{objects} against a {bg} backdrop",
    "{objects}; the background is {bg}",
    "{objects} over a {bg} background",
    "{objects} in front of a {bg} background",
    "a {bg} background with {ing}",
    "there {be} {ing} on a {bg} background",
    "the background is {bg}. {objects}",
    "{that} on a {bg} background",
    "we see {ing} against a {bg} backdrop",
    "{count} on a {bg} background: {objects}",
    "{count} against a {bg} backdrop: {that}",
)
EVAL_ONLY_TEMPLATES = (
    "{objects} upon a {bg} background",
    "amid a {bg} backdrop, {objects}",
    "{count}, set against a {bg} backdrop: {that}",
)

# A motion's participle: "moves right" -> "moving right"; whole phrases where it is not one verb.
_PARTICIPLES = {
    "does not move": "not moving",
    "is not moving": "not moving",
    "is at rest": "at rest",
    "keeps bouncing": "bouncing",
    "moves": "moving",
    "slides": "sliding",
    "travels": "traveling",
    "heads": "heading",
    "goes": "going",
    "rises": "rising",
    "climbs": "climbing",
    "falls": "falling",
    "sinks": "sinking",
    "drops": "dropping",
    "stays": "staying",
    "rests": "resting",
    "sits": "sitting",
    "holds": "holding",
    "bounces": "bouncing",
    "ricochets": "ricocheting",
    "drifts": "drifting",
    "glides": "gliding",
    "floats": "floating",
    "ascends": "ascending",
    "descends": "descending",
    "plummets": "plummeting",
    "slants": "slanting",
    "remains": "remaining",
    "stands": "standing",
    "rebounds": "rebounding",
    "caroms": "caroming",
}


def describe(spec: SceneSpec, rng: np.random.Generator, wording: str = "training") -> str:
    """One caption for `spec` in `wording` (one of `WORDINGS`), its words drawn from `rng`."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    shapes = {o.shape for o in spec.objects}
    templates = {
        "canonical": (CANONICAL,),
        "training": TEMPLATES,
        "everyday": TEMPLATES[1:],
        "eval-only": EVAL_ONLY_TEMPLATES,
    }[wording]
    if len(spec.objects) == 1:  # a count of one reads oddly
        templates = tuple(t for t in templates if "{count}" not in t) or (CANONICAL,)
    template = templates[rng.integers(len(templates))]
    one = None  # "two squares: a red one ...": the shape is said once, in the count
    count = ""
    if "{count}" in template:
        number = _pick(vocab.COUNT_WORDS[len(spec.objects)], rng, wording)
        if len(shapes) == 1 and rng.random() < 0.5:
            (shape,) = shapes
            count = f"{number} {vocab.plural(_pick(vocab.SHAPE_WORDS[shape], rng, wording))}"
            one = "one"
        else:
            count = f"{number} {_pick(vocab.COUNT_NOUNS, rng, wording)}"
    parts = [describe_object(o, rng, wording, noun=one) for o in spec.objects]
    joiner = (
        " while " if len(parts) == 2 and wording != "canonical" and rng.random() < 0.3 else None
    )
    fields = {
        "objects": _join([" ".join(filter(None, p)) for p in parts], joiner),
        "ing": _join([f"{n} {participle(v)}" if v else n for n, v in parts]),
        "that": _join([f"{n} that {v}" if v else n for n, v in parts]),
        "be": "is" if len(parts) == 1 else "are",
        "count": count,
    }
    if spec.background is None:
        text = fields["objects"]
    else:
        bg = _pick(vocab.BACKGROUND_WORDS[spec.background], rng, wording)
        text = template.format(bg=bg, **fields)
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an ash-gray background"
    return re.sub(r"(^|\. )(\w)", lambda m: m.group(1) + m.group(2).upper(), text)


def _join(clauses: list[str], joiner: str | None = None) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + (joiner or " and ") + clauses[-1]


def participle(verb_phrase: str) -> str:
    """'moves right slowly' -> 'moving right slowly', 'slowly rises' -> 'slowly rising'."""
    for phrase, ing in _PARTICIPLES.items():
        m = re.search(rf"\b{phrase}\b", verb_phrase)
        if m:
            return verb_phrase[: m.start()] + ing + verb_phrase[m.end() :]
    raise ValueError(f"no participle for {verb_phrase!r}")


def describe_object(
    obj: ObjectSpec, rng: np.random.Generator, wording: str = "training", noun: str | None = None
) -> tuple[str, str | None]:
    """`(noun phrase, verb phrase or None)` for one object: ("a small red ball", "moves left").
    The `training` wording says the size and speed half the time, the others always; `noun`
    replaces the shape's word ("a red one")."""
    adjectives = []
    says_all = wording != "training"
    if obj.size is not None and (says_all or rng.random() < 0.5):
        adjectives.append(_pick(vocab.SIZE_WORDS[obj.size], rng, wording))
    adjectives.append(_pick(vocab.COLOUR_WORDS[obj.colour], rng, wording))
    noun = " ".join([*adjectives, noun or _pick(vocab.SHAPE_WORDS[obj.shape], rng, wording)])
    if obj.motion is None:
        return f"{_article(noun)} {noun}", None
    verb = _pick(vocab.MOTION_WORDS[obj.motion], rng, wording)
    if obj.speed is not None and obj.motion != "still" and (says_all or rng.random() < 0.5):
        speed = _pick(vocab.SPEED_WORDS[obj.speed], rng, wording)
        # Adverbs in -ly read well either side of the verb ("slowly rises", "rises slowly");
        # "fast" only after it.
        before = speed.endswith("ly") and rng.random() < 0.5
        verb = f"{speed} {verb}" if before else f"{verb} {speed}"
    return f"{_article(noun)} {noun}", verb


def _pick(words: vocab.Words, rng: np.random.Generator, wording: str = "training") -> str:
    if wording == "canonical":
        return words.canonical
    if wording == "eval-only" and words.eval_only:
        options = words.eval_only
    elif wording == "everyday" and (others := _not_canonical(words)):
        options = others
    else:
        options = words.train
    return options[rng.integers(len(options))]


@functools.cache
def _not_canonical(words: vocab.Words) -> tuple[str, ...]:
    """The training words that do not say the canonical one: "scarlet", not "bright red"."""
    return tuple(w for w in words.train[1:] if not says(w, words.canonical))


def says(text: str, phrase: str) -> bool:
    """Whether `text` holds `phrase` as whole words ("blue" is not in "sky-blue")."""
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text.lower()) is not None


@functools.cache
def training_words() -> frozenset[str]:
    """Every word a training caption can use (`describe` and `describe_change`), lower case."""
    tables = (
        vocab.COLOUR_WORDS,
        vocab.BACKGROUND_WORDS,
        vocab.SHAPE_WORDS,
        vocab.SIZE_WORDS,
        vocab.SPEED_WORDS,
        vocab.MOTION_WORDS,
        vocab.COUNT_WORDS,
    )
    phrases = [w for table in tables for words in table.values() for w in words.train]
    phrases += [vocab.plural(w) for words in vocab.SHAPE_WORDS.values() for w in words.train]
    phrases += [*vocab.COUNT_NOUNS.train, *_PARTICIPLES.values(), *_CHANGE_WORDS]
    fields = {"objects": "a an and while", "ing": "", "that": "that", "be": "is are", "count": ""}
    phrases += [t.format(bg="", **fields) for t in TEMPLATES]
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


def _phrase_table(
    words: dict[str, vocab.Words], keywords: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(phrase, meaning) pairs, longest phrase first so that 'dark blue' wins over 'blue'."""
    pairs = [(w.lower(), name) for name, ws in words.items() for w in ws.all]
    pairs += list((keywords or {}).items())
    return sorted(pairs, key=lambda p: -len(p[0]))


_COLOURS = _phrase_table(vocab.COLOUR_WORDS)
_BACKGROUNDS = _phrase_table(vocab.BACKGROUND_WORDS)
_SHAPES = _phrase_table(vocab.SHAPE_WORDS)
_SIZES = _phrase_table(vocab.SIZE_WORDS)
_SPEEDS = _phrase_table(vocab.SPEED_WORDS)
# A background's name is one to three words: "over the frame and ... backdrop" is no background.
BG = r"(?:[\w-]+\s+){0,2}?[\w-]+"
_BG_PATTERNS = (
    re.compile(
        rf"\b(?:on|against|over|upon|amid|in front of)\s+(?:a|an|the)?\s*(?P<bg>{BG})\s+"
        r"(?:background|backdrop)\b"
    ),
    re.compile(r"\b(?:the\s+)?(?:background|backdrop)\s+is\s+(?P<bg>[\w\s-]+)$"),
    re.compile(r"\b(?:the\s+)?(?:background|backdrop)\s+(?:turns|becomes)\s+(?P<bg>[\w\s-]+)$"),
    re.compile(rf"^(?:a|an|the)?\s*(?P<bg>{BG})\s+(?:background|backdrop)\s+with\b"),
)
# A new object starts at a comma, a semicolon, or an "and" or "while" followed by an article; the
# "and" in "moves up and to the right" is not followed by an article, so it stays in its clause.
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:;|,\s*(?:and|while)\s+(?=(?:a|an|the)\b)|,|\b(?:and|while)\s+(?=(?:a|an|the)\b))\s*"
)
# "two shapes", "three things", "two squares" (whose objects are each "a red one ...")
_NUMBERS = {
    **{w: n for n, words in vocab.COUNT_WORDS.items() for w in words.all},
    **{str(n): n for n in vocab.COUNT_WORDS},
}
_PLURALS = {vocab.plural(w): shape for shape, ws in vocab.SHAPE_WORDS.items() for w in ws.all}
_COUNT = re.compile(
    rf"\b(?P<n>{'|'.join(sorted(_NUMBERS, key=len, reverse=True))})\s+"
    rf"(?P<adjectives>(?:[\w-]+\s+){{0,2}}?)"
    rf"(?P<noun>{'|'.join(sorted([*vocab.COUNT_NOUNS.all, *_PLURALS], key=len, reverse=True))})\b"
)


def parse_caption(text: str) -> SceneSpec:
    """Read a caption (or a user's prompt) back into a `SceneSpec`; unsaid attributes stay `None`."""
    if not isinstance(text, str) or not text.strip():
        raise ArlonError("empty prompt: describe the scene, e.g. 'a red circle moves right'")
    # Sentences and a colon's list are clauses too.
    s = " " + re.sub(r"[^\w\s,;-]", " ", re.sub(r"[.:!?]", ";", text.lower())) + " "
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
    s, count = _count(s, text)
    objects = [spec for part in _CLAUSE_SPLIT.split(s) if (spec := _parse_object(part))]
    if not objects:
        raise ArlonError(
            f"no object found in {text!r}: name a colour and a shape, e.g. 'a red circle moves right'"
        )
    if count is not None and count != len(objects):
        raise ArlonError(f"{text!r} counts {count} objects but describes {len(objects)}")
    return SceneSpec(tuple(objects), background)


def _count(s: str, text: str) -> tuple[str, int | None]:
    """The words without their count ("two squares: a red one ..." -> "a red square ..."), and the
    count."""
    m = _COUNT.search(s)
    if m is None:
        return s, None
    if _find(_COLOURS, m.group("adjectives")):
        raise ArlonError(
            f"{m.group(0).strip()!r} in {text!r}: every object of this world has its own colour; "
            "name each, e.g. 'two squares: a red one moves left and a blue one moves up'"
        )
    rest = s[m.end() :]
    shape = _PLURALS.get(m.group("noun"))
    if shape is not None:
        rest = re.sub(r"\bone\b", shape, rest)
    return s[: m.start()] + " ; " + rest, _NUMBERS[m.group("n")]


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


# "from left to right": the way it goes is where it goes to, not where it starts
_FROM_TO = re.compile(r"\bfrom\s+(?:the\s+)?[\w\s-]+?\s+(?=to\b)")


def _parse_motion(text: str) -> str | None:
    text = _FROM_TO.sub(" ", text)
    words = re.findall(r"[\w-]+", text.replace("-", " "))
    if any(k in text for k in vocab.BOUNCE_KEYWORDS):
        return "bounce"
    if any(f" {k} " in f" {' '.join(words)} " for k in vocab.STILL_KEYWORDS):
        return "still"
    diagonal = next(
        (vocab.DIAGONAL_KEYWORDS[w] for w in words if w in vocab.DIAGONAL_KEYWORDS), None
    )
    if diagonal:
        return diagonal
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


# ------------------------------------------------------------------------------------------------
# Changes
# ------------------------------------------------------------------------------------------------

ENTER = re.compile(r"\b(?:comes? in|enters|appears|joins(?: in)?)\b")
LEAVE = re.compile(r"\b(?:leaves|disappears|exits|goes away)\b")
STOP = re.compile(r"\b(?:stops|halts|comes to a (?:stop|halt)|stands still|stays still)\b")
RECOLOUR = re.compile(r"\b(?:turns|becomes|changes to|goes)\b")
BACKGROUND = re.compile(
    r"^the (?:background|backdrop) (?:turns|becomes|changes to|is now|is) (.+)$"
)
SLOWER = re.compile(r"\bslows(?: down)?\b")
FASTER = re.compile(r"\b(?:speeds up|goes faster)\b")


_ENTERS = ("comes in", "enters", "appears", "joins in")
_LEAVES = ("leaves", "disappears", "exits", "goes away", "leaves the frame")
_RECOLOURS = ("turns", "becomes", "changes to")
_STOPS = ("stops", "halts", "comes to a stop", "stays still", "stands still")
_TURNS = ("now", "turns and", "changes direction and")
_BACKGROUND_CHANGES = ("turns", "becomes", "changes to", "is now")
# The side an object comes in from, for each way it heads: "comes in from the left" heads right.
_SIDES = {
    "right": ("left",),
    "left": ("right",),
    "up": ("bottom",),
    "down": ("top",),
    "up-right": ("bottom left", "lower left"),
    "up-left": ("bottom right", "lower right"),
    "down-right": ("top left", "upper left"),
    "down-left": ("top right", "upper right"),
}
_CHANGE_WORDS = (
    *_ENTERS,
    *_LEAVES,
    *_RECOLOURS,
    *_STOPS,
    *_TURNS,
    *_BACKGROUND_CHANGES,
    *(side for sides in _SIDES.values() for side in sides),
    "the background backdrop from",
)


def describe_change(before: SceneSpec, after: SceneSpec, rng: np.random.Generator) -> str:
    """One prompt that states only what turns `before` into `after` (one world event), in the
    training words: "the circle turns blue", "the square stops", "a green triangle comes in from
    the left"."""

    def one_of(options: tuple[str, ...]) -> str:
        return options[rng.integers(len(options))]

    event = world_event(before, after)
    if event == "background":
        bg = _pick(vocab.BACKGROUND_WORDS[after.background], rng)
        return f"the {one_of(('background', 'backdrop'))} {one_of(_BACKGROUND_CHANGES)} {bg}"
    if event == "enter":
        (new,) = [o for o in after.objects if o.colour not in {p.colour for p in before.objects}]
        noun, verb = describe_object(new, rng)
        if new.motion in _SIDES and rng.random() < 0.4:
            return f"{noun} {one_of(_ENTERS[:2])} from the {one_of(_SIDES[new.motion])}"
        return f"{noun} {one_of(_ENTERS)}" + (f" and {verb}" if verb else "")
    if event == "leave":
        (gone,) = [o for o in before.objects if o.colour not in {p.colour for p in after.objects}]
        return f"the {_name(gone, before, rng)} {one_of(_LEAVES)}"
    old, new = next((p, o) for p, o in zip(before.objects, after.objects, strict=True) if p != o)
    name = _name(old, before, rng)
    if event == "recolour":
        return f"the {name} {one_of(_RECOLOURS)} {_pick(vocab.COLOUR_WORDS[new.colour], rng)}"
    if new.motion == "still":
        return f"the {name} {one_of(_STOPS)}"
    return f"the {name} {one_of(_TURNS)} {_pick(vocab.MOTION_WORDS[new.motion], rng)}"


def _name(o: ObjectSpec, scene: SceneSpec, rng: np.random.Generator) -> str:
    """The shortest name that picks out `o` in `scene`: its shape noun, with its colour when
    another object has the same shape."""
    noun = _pick(vocab.SHAPE_WORDS[o.shape], rng)
    if sum(p.shape == o.shape for p in scene.objects) > 1:
        return f"{_pick(vocab.COLOUR_WORDS[o.colour], rng)} {noun}"
    return noun


def apply_change(spec: SceneSpec, text: str) -> SceneSpec | None:
    """The scene after the change `text` states; None when `text` describes a whole scene."""
    s = " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())
    m = BACKGROUND.match(s)
    if m and _locate(_SHAPES, f" {m.group(1)} ") is None:  # not "the background is black. a ..."
        background = _find(_BACKGROUNDS, m.group(1))
        if background is None:
            raise ArlonError(f"unknown background in {text!r}")
        return SceneSpec(spec.objects, background)
    if ENTER.search(s):
        rest, origin = _origin(ENTER.sub(" ", s))
        return _enter(spec, parse_caption(rest), text, origin)
    if not s.startswith("the ") or _whole_scene(s):
        return None
    i, rest = _referent(spec, s[4:], text)
    objects = list(spec.objects)
    colour = _find(_COLOURS, rest)
    if LEAVE.search(rest):
        objects.pop(i)
    elif STOP.search(rest):
        objects[i] = replace(objects[i], motion="still", speed=None)
    elif RECOLOUR.search(rest) and colour:
        objects[i] = replace(objects[i], colour=colour)
    elif SLOWER.search(rest) or FASTER.search(rest):
        if objects[i].motion in (None, "still"):
            raise ArlonError(f"{text!r}: the {objects[i].shape} is not moving")
        objects[i] = replace(objects[i], speed="slow" if SLOWER.search(rest) else "fast")
    else:
        motion = _parse_motion(f" {rest} ")
        if motion is None:
            raise ArlonError(f"{text!r} says no change the world knows (a colour, a motion, ...)")
        speed = None if motion == "still" else _find(_SPEEDS, rest) or objects[i].speed
        objects[i] = replace(objects[i], motion=motion, speed=speed)
    return SceneSpec(tuple(objects), spec.background)


def _whole_scene(s: str) -> bool:
    """Whether words that start with "the" describe a whole scene: a background, two objects."""
    return any(p.search(s) for p in _BG_PATTERNS) or len(_CLAUSE_SPLIT.split(s)) > 1


# "comes in from the left": the side it comes from, and where it heads unless it is said
_FROM = re.compile(r"\bfrom\s+(?:the\s+)?(?P<side>(?:upper|lower|top|bottom|left|right|[\s-])+)")
_OPPOSITE = {
    name: next(other for other, (u, w) in vocab.DIRECTIONS.items() if (u, w) == (-x, -y))
    for name, (x, y) in vocab.DIRECTIONS.items()
}


def _origin(s: str) -> tuple[str, str | None]:
    """The words of an entrance without its "from the <side>", and the motion away from that side."""
    m = _FROM.search(s)
    if m is None:
        return s, None
    side = _parse_motion(f" {m.group('side')} ")
    return s[: m.start()] + " " + s[m.end() :], _OPPOSITE.get(side)


def _enter(spec: SceneSpec, entering: SceneSpec, text: str, origin: str | None) -> SceneSpec:
    if len(entering.objects) != 1:
        raise ArlonError(f"{text!r}: one object comes in at a time")
    (new,) = entering.objects
    if new.colour in {o.colour for o in spec.objects}:
        raise ArlonError(f"{text!r}: the scene already has a {new.colour} object")
    new = replace(new, motion=new.motion or origin or "still")
    return SceneSpec((*spec.objects, new), spec.background)


def _referent(spec: SceneSpec, s: str, text: str) -> tuple[int, str]:
    """The object the words `s` start by naming ("red circle ..."), and the words after its name."""
    words = s.split()
    for end in range(1, min(len(words), 4) + 1):
        head = " ".join(words[:end])
        shape = _find(_SHAPES, head)
        if shape is None:
            continue
        colour, size = _find(_COLOURS, head), _find(_SIZES, head)
        hits = [
            i
            for i, o in enumerate(spec.objects)
            if o.shape == shape and colour in (None, o.colour) and o.size in (None, size or o.size)
        ]
        if len(hits) == 1:
            return hits[0], " ".join(words[end:])
        break
    raise ArlonError(f"{text!r} names no one object of the scene ({_scene(spec)})")


def _scene(spec: SceneSpec) -> str:
    return ", ".join(f"{o.colour} {o.shape}" for o in spec.objects)


def resolve(prompts: list[str], fill=None) -> list[SceneSpec]:
    """The scene each prompt of a timeline asks for: a whole scene, or the one before changed.
    `fill(spec) -> spec`, when given, completes each scene before the next change applies to it
    (what a renderer needs: a size the first prompt left unsaid stays the same afterwards)."""
    specs: list[SceneSpec] = []
    for text in prompts:
        changed = apply_change(specs[-1], text) if specs else None
        spec = parse_caption(text) if changed is None else changed
        specs.append(spec if fill is None else fill(spec))
    return specs

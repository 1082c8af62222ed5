"""The shapes world: rendering, episodes, captions, detector."""

import math
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from arlon.errors import ArlonError
from arlon.timeline import Timeline
from arlon.world import vocab
from arlon.world.captions import (
    EVAL_ONLY_TEMPLATES,
    TEMPLATES,
    WORDINGS,
    _pick,
    describe,
    describe_change,
    parse_caption,
    resolve,
    says,
    unknown_words,
)
from arlon.world.detect import Detector
from arlon.world.metrics import compare_to_truth
from arlon.world.prompts import whole_scenes
from arlon.world.render import degrade, render_frame, render_states
from arlon.world.scene import FrameState, ObjectSpec, SceneSpec, WorldObject
from arlon.world.simulate import (
    episode_from_timeline,
    random_episode,
    random_spec,
)


def _frames(episode):
    return np.stack(list(render_states(episode.frames(), episode.height, episode.width)))


def test_same_seed_same_episode_and_different_seed_differs():
    a, b, c = (random_episode(s, 300) for s in (7, 7, 8))
    assert a.timeline == b.timeline
    assert np.array_equal(_frames(a), _frames(b))
    assert a.timeline != c.timeline


@pytest.mark.parametrize("height,width", [(64, 64), (48, 96), (128, 64)])
def test_render_size_and_antialiasing(height, width):
    episode = random_episode(3, 5, height=height, width=width)
    frame = next(render_states(episode.frames(), height, width))
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
    # Anti-aliased edges: some pixels are neither the background nor any object colour.
    palette = {tuple(c) for c in vocab.COLOURS.values()} | {
        tuple(vocab.BACKGROUNDS[episode.initial.background])
    }
    pixels = {tuple(p) for p in frame.reshape(-1, 3)}
    assert pixels - palette


def test_size_not_multiple_of_8_and_bad_frames_are_errors():
    with pytest.raises(ArlonError, match="multiple of 8"):
        random_episode(0, 10, height=60)
    with pytest.raises(ArlonError, match="positive"):
        random_episode(0, 0)


def test_long_episode_has_events_and_every_caption_parses_to_its_spec():
    episode = random_episode(11, 10_000, deltas=0.0)
    assert len(episode.timeline) > 50
    starts = [s for s, _ in episode.timeline]
    assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:], strict=False))
    for (_, caption), spec in zip(episode.timeline, episode.specs, strict=True):
        parsed = parse_caption(caption)
        assert [(o.colour, o.shape, o.motion) for o in parsed.objects] == [
            (o.colour, o.shape, o.motion) for o in spec.objects
        ]
        assert parsed.background == spec.background
    # Every kind of event happens in a long episode.
    changes = set()
    for a, b in zip(episode.specs, episode.specs[1:], strict=False):
        if a.background != b.background:
            changes.add("background")
        elif len(b.objects) > len(a.objects):
            changes.add("enter")
        elif len(b.objects) < len(a.objects):
            changes.add("leave")
        elif {o.colour for o in a.objects} != {o.colour for o in b.objects}:
            changes.add("recolour")
        else:
            changes.add("turn")
    assert changes == {"background", "enter", "leave", "recolour", "turn"}


def test_ten_thousand_frames_stream_in_constant_memory():
    episode = random_episode(2, 10_000)
    tracemalloc.start()
    count = sum(1 for _ in render_states(episode.frames()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 10_000
    # The whole video would be 123 MB; streaming holds about one frame.
    assert peak < 2_000_000


def test_captions_vary_in_wording():
    spec = SceneSpec((ObjectSpec("red", "circle", "left", "small", "slow"),), "black")
    rng = np.random.default_rng(0)
    captions = {describe(spec, rng) for _ in range(50)}
    assert len(captions) >= 20
    assert all(parse_caption(c).objects[0].motion == "left" for c in captions)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a red circle moves right", [("red", "circle", "right")]),
        ("a crimson disc drifts to the left", [("red", "circle", "left")]),
        (
            "A blue square moves up and to the right and a green triangle falls",
            [("blue", "square", "up-right"), ("green", "triangle", "down")],
        ),
        (
            "a white ball stays still, an orange box bounces around",
            [("white", "circle", "still"), ("orange", "square", "bounce")],
        ),
        ("a yellow wedge", [("yellow", "triangle", None)]),
    ],
)
def test_parse_caption(text, expected):
    spec = parse_caption(text)
    assert [(o.colour, o.shape, o.motion) for o in spec.objects] == expected


@pytest.mark.parametrize(
    "text, objects, background",
    [
        (
            "a red circle moves right while a blue square moves up",
            [("red", "right"), ("blue", "up")],
            None,
        ),
        ("a red circle moves across the frame from left to right", [("red", "right")], None),
        ("a blue square travels from the bottom to the top", [("blue", "up")], None),
        ("there is a red circle moving right on a dark background", [("red", "right")], "black"),
        ("on a blue background, a white dot stays still", [("white", "still")], "navy"),
        ("a red circle sinks on a dark blue background", [("red", "down")], "navy"),
    ],
)
def test_everyday_wordings_parse(text, objects, background):
    """Wordings a person reaches for: "while" between two objects, "from left to right", a dark
    or a blue background."""
    spec = parse_caption(text)
    assert [(o.colour, o.motion) for o in spec.objects] == objects
    assert spec.background == background


def _facts(spec: SceneSpec, wording: str) -> tuple:
    """What a caption in `wording` must say of `spec`: training captions may leave out a size or a
    speed, the suites' wordings say every fact."""
    full = wording != "training"
    return spec.background, [
        (o.colour, o.shape, o.motion, o.size if full else None, o.speed if full else None)
        for o in spec.objects
    ]


def test_the_parser_reads_back_ten_thousand_captions_of_every_wording():
    rng = np.random.default_rng(0)
    for i in range(10_000):
        wording = WORDINGS[i % len(WORDINGS)]
        spec = random_spec(rng)
        caption = describe(spec, rng, wording)
        parsed = parse_caption(caption)
        if wording == "training":  # what it says must be right; what it leaves out is None
            parsed = SceneSpec(
                tuple(replace(o, size=None, speed=None) for o in parsed.objects), parsed.background
            )
            for o, truth in zip(parse_caption(caption).objects, spec.objects, strict=True):
                assert o.size in (None, truth.size) and o.speed in (None, truth.speed), caption
        assert _facts(parsed, "canonical") == _facts(spec, wording), caption


def test_a_story_of_change_prompts_resolves_to_its_scenes():
    """Training episodes state half their later captions as changes ("the dot turns teal"); read
    against the scene before, each means the episode's scene."""
    episode = random_episode(12, 10_000, deltas=0.5)
    prompts = [caption for _, caption in episode.timeline]
    changes = sum(prompt.startswith(("the ", "a ", "an ")) for prompt in prompts[1:])
    assert 0.3 < changes / (len(prompts) - 1) < 0.7
    for resolved, truth in zip(resolve(prompts), episode.specs, strict=True):
        assert resolved.background == truth.background
        assert [(o.colour, o.shape, o.motion) for o in resolved.objects] == [
            (o.colour, o.shape, o.motion) for o in truth.objects
        ]


def test_a_change_is_read_as_the_whole_scene_it_asks_for():
    """What the models read: each prompt of a story that states only a change becomes a prompt of
    the whole scene, which alone means what the change meant after the prompts before it; a
    whole-scene prompt is read as written."""
    rewritten = []
    for seed in range(20):
        timeline = Timeline(random_episode(seed, 2000, deltas=0.5).timeline)
        read = whole_scenes(timeline)
        assert read.starts == timeline.starts
        # each prompt as read, alone, is its scene: so none that states only a change is kept
        assert [parse_caption(p) for p in read.prompts] == resolve(timeline.prompts)
        rewritten += [
            told != seen for told, seen in zip(timeline.prompts[1:], read.prompts[1:], strict=True)
        ]
    assert 0.3 < np.mean(rewritten) < 0.7  # the changes: about half the later prompts


def test_whole_scenes_stop_at_the_first_prompt_not_in_the_worlds_words():
    """After a prompt the world cannot read, the scene is unknown: it and the prompts after it are
    read as written; and a prompt's reading depends only on the prompts before it, so a prompt
    directed later changes nothing already read."""
    timeline = Timeline(
        [
            (0, "a red circle moves right"),
            (50, "the circle turns blue"),
            (90, "a dog barks"),
            (120, "the circle stops"),
        ]
    )
    read = whole_scenes(timeline)
    assert read.prompts == [
        "a red circle moves right",
        "A blue circle moves right",
        "a dog barks",
        "the circle stops",
    ]
    assert all(whole_scenes(Timeline(timeline[:k])) == read[:k] for k in range(1, 5))
    impossible = Timeline([(0, "a red circle moves right"), (9, "the square turns blue")])
    assert whole_scenes(impossible) == impossible


def test_the_language_has_the_words_people_use_and_keeps_eval_only_words_out_of_training():
    minimum = {
        "COLOUR_WORDS": 6,
        "SHAPE_WORDS": 5,
        "SIZE_WORDS": 3,
        "MOTION_WORDS": 8,
        "BACKGROUND_WORDS": 4,
    }
    for table, least in minimum.items():
        assert all(len(w.train) >= least and w.eval_only for w in getattr(vocab, table).values())
    assert len(TEMPLATES) >= 12
    # Every evaluation-only word and sentence shape has a word that no training caption uses ...
    tables = [getattr(vocab, t) for t in minimum] + [vocab.SPEED_WORDS, vocab.COUNT_WORDS]
    eval_only = [w for table in tables for words in table.values() for w in words.eval_only]
    blank = dict.fromkeys(("objects", "ing", "that", "be", "count", "bg"), "")
    eval_only += [*vocab.COUNT_NOUNS.eval_only, *(t.format(**blank) for t in EVAL_ONLY_TEMPLATES)]
    assert all(unknown_words(phrase) for phrase in eval_only)
    # ... and the training captions, whole scenes and changes, use no other word.
    rng = np.random.default_rng(1)
    for i in range(300):
        episode = random_episode((3, i), 1200, deltas=0.5)
        assert not [
            unknown_words(caption) for _, caption in episode.timeline if unknown_words(caption)
        ]
        before, after = episode.specs[:2]
        assert not unknown_words(describe_change(before, after, rng))


def test_everyday_words_are_never_the_canonical_ones():
    rng = np.random.default_rng(2)
    for table in (
        vocab.COLOUR_WORDS,
        vocab.SHAPE_WORDS,
        vocab.MOTION_WORDS,
        vocab.BACKGROUND_WORDS,
    ):
        for words in table.values():
            picked = {_pick(words, rng, "everyday") for _ in range(100)}
            assert len(picked) >= 2 and not [w for w in picked if says(w, words.canonical)]


@pytest.mark.parametrize(
    "text, objects, background",
    [
        (
            "two squares: a red one moves left and a blue one moves up",
            [("red", "square", "left"), ("blue", "square", "up")],
            None,
        ),
        (
            "three shapes on a dark background: a red ball, a teal box and a gold cone",
            [("red", "circle", None), ("cyan", "square", None), ("yellow", "triangle", None)],
            "black",
        ),
        (
            "a pair of balls against a grey backdrop: a white one that heads northeast and a "
            "light blue one that is not moving",
            [("white", "circle", "up-right"), ("cyan", "circle", "still")],
            "gray",
        ),
        (
            "The background is navy blue. We see a lilac orb moving toward the top",
            [("purple", "circle", "up")],
            "navy",
        ),
        (
            "a black backdrop with a ruby cube heading west and a lime wedge bouncing all over",
            [("red", "square", "left"), ("green", "triangle", "bounce")],
            "black",
        ),
        (
            "there is a sky-blue sphere staying put in front of a coffee background",
            [("cyan", "circle", "still")],
            "brown",
        ),
    ],
)
def test_counts_compass_words_and_sentence_shapes_parse(text, objects, background):
    spec = parse_caption(text)
    assert [(o.colour, o.shape, o.motion) for o in spec.objects] == objects
    assert spec.background == background


@pytest.mark.parametrize(
    "text, message",
    [
        ("two red squares move right", "every object of this world has its own colour"),
        ("three shapes: a red circle and a blue square", "counts 3 objects but describes 2"),
    ],
)
def test_a_count_the_world_cannot_show_is_a_clear_error(text, message):
    with pytest.raises(ArlonError, match=message):
        parse_caption(text)


def test_parse_caption_background_and_held_out_words():
    spec = parse_caption("On a midnight-blue background, a huge lemon tile rapidly ascends")
    assert spec.background == "navy"
    (o,) = spec.objects
    assert (o.colour, o.shape, o.motion, o.size, o.speed) == (
        "yellow",
        "square",
        "up",
        "large",
        "fast",
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty prompt: describe the scene"),
        ("   ", "empty prompt"),
        ("a mauve circle moves left", "no known colour for the circle .* known: red, orange"),
        ("something moves", "no object found in 'something moves': name a colour and a shape"),
        ("a red circle and a red square", "two objects share a colour"),
    ],
)
def test_bad_prompts_are_clear_errors(bad, message):
    with pytest.raises(ArlonError, match=message):
        parse_caption(bad)


def test_timeline_switch_keeps_matching_objects():
    timeline = [
        (0, "a red circle moves right on a black background"),
        (40, "a red circle moves down and a blue square stays still on a black background"),
    ]
    episode = episode_from_timeline(timeline, 80, seed=1)
    states = list(episode.frames())
    before, after = states[39], states[40]
    red_before = next(o for o in before.objects if o.colour == "red")
    red_after = next(o for o in after.objects if o.colour == "red")
    assert red_after.id == red_before.id
    assert math.isclose(red_after.x, (red_before.x + red_before.vx) % 64, abs_tol=1e-6)
    assert red_after.vx == 0 and red_after.vy > 0
    assert {o.colour for o in after.objects} == {"red", "blue"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty timeline"),
        ([(5, "a red circle")], "must start at frame 0, this one starts at 5"),
        ([(0, "a red circle"), (0, "a blue square")], r"strictly increasing, got \[0, 0\]"),
    ],
)
def test_bad_timelines_are_clear_errors(bad, message):
    with pytest.raises(ArlonError, match=message):
        episode_from_timeline(bad, 10)


@pytest.mark.parametrize("degraded", [False, True])
def test_detector_recovers_ground_truth(degraded):
    detector, rng = Detector(), np.random.default_rng(0)
    judged = colour_ok = shape_ok = 0
    errors = []
    for seed in range(40):
        state = next(random_episode(seed, 1, events=False).frames())
        frame = render_frame(state)
        found = detector(degrade(frame, rng) if degraded else frame)
        assert found.background == state.background
        for o, d, error in compare_to_truth(found, state, 64, 64):
            judged += 1
            if d is not None:
                colour_ok += 1
                shape_ok += d.shape == o.shape
                errors.append(error)
    assert judged > 60
    assert colour_ok / judged >= 0.99 and shape_ok / judged >= (0.95 if degraded else 0.99)
    assert np.mean(errors) <= 1.5 and max(errors) <= 3


def test_detector_merges_an_object_wrapped_around_the_border():
    state = FrameState("gray", [WorldObject(0, "square", "red", 14.0, 2.0, 62.0)])
    found = Detector()(render_frame(state))
    (d,) = found.objects
    assert d.shape == "square" and not d.partial
    assert abs(d.x - 2.0) < 0.5 and abs(d.y - 62.0) < 0.5


def test_random_specs_have_distinct_colours():
    rng = np.random.default_rng(0)
    for _ in range(100):
        spec = random_spec(rng)
        assert len({o.colour for o in spec.objects}) == len(spec.objects)


@pytest.mark.parametrize(
    "change, message",
    [
        ("a red triangle comes in", "already has a red object"),
        ("a green triangle and a white ball come in", "one object comes in at a time"),
        ("the square speeds up", "the square is not moving"),
        ("the triangle turns blue", "names no one object"),
        ("the square hums", "says no change the world knows"),
    ],
)
def test_a_change_that_cannot_apply_is_a_clear_error(change, message):
    from arlon.errors import ArlonError
    from arlon.world.captions import resolve

    scene = "a red ball moves right and a blue square stays still on a black background"
    with pytest.raises(ArlonError, match=message):
        resolve([scene, change])


def test_changes_keep_what_they_do_not_mention_and_whole_scenes_replace_it():
    from arlon.world.captions import resolve

    scene = "a red ball moves right and a blue square stays still on a black background"
    later = [
        "the ball slows down",
        "the background is gray",
        "the red ball moves up and the blue square moves down",
    ]
    slow, gray, whole = resolve([scene, *later])[1:]
    assert [(o.colour, o.motion, o.speed) for o in slow.objects] == [
        ("red", "right", "slow"),
        ("blue", "still", None),
    ]
    assert gray.background == "gray" and gray.objects == slow.objects
    assert [o.motion for o in whole.objects] == ["up", "down"] and whole.background is None


@pytest.mark.parametrize(
    "entrance, motion",
    [
        ("a green triangle comes in from the left", "right"),
        ("a green triangle enters from the upper right", "down-left"),
        ("a green triangle comes in from the top and moves left", "left"),  # said: it wins
        ("a green triangle comes in from the bottom edge", "up"),
        ("a green triangle comes in", "still"),
    ],
)
def test_an_object_that_comes_in_from_a_side_heads_away_from_it(entrance, motion):
    from arlon.world.captions import resolve

    _, after = resolve(["a red ball moves right on a black background", entrance])
    assert [(o.colour, o.motion) for o in after.objects] == [("red", "right"), ("green", motion)]

"""World metrics: near 1 on ground-truth renders, and each falls on a video built to violate it."""

import numpy as np
import pytest

from arlon.world.metrics import Expected, onset_summary, score_video
from arlon.world.render import render_states
from arlon.world.simulate import episode_from_timeline, random_episode

ACCURACIES = (
    "object_accuracy",
    "precision",
    "colour",
    "shape",
    "size",
    "background",
    "motion",
    "count",
    "identity",
    "unchanged",
)


@pytest.fixture(scope="module")
def episode():
    # A long episode whose objects all move, so frozen or reversed frames are visible.
    for seed in range(100):
        ep = random_episode(seed, 480)
        if len(ep.timeline) >= 4 and all(
            o.motion not in ("still", "bounce") for s in ep.specs for o in s.objects
        ):
            return ep
    raise AssertionError("no suitable episode")


@pytest.fixture(scope="module")
def frames(episode):
    return list(render_states(episode.frames()))


@pytest.fixture(scope="module")
def expected(episode):
    return Expected.from_truth(episode.truth())


@pytest.fixture(scope="module")
def clean(frames, expected):
    return score_video(frames, expected).report()


def test_ground_truth_scores_near_one(clean):
    for name in ACCURACIES:
        assert clean[name] >= 0.99, name
    assert clean["switch"]["switched"] == 1.0 and clean["switch"]["median_latency"] == 0
    assert clean["onset"] == {"held": True, "latency": 0}
    assert clean["switch"]["kept"] == 1.0
    for window in ("early", "late"):
        assert clean["drift"][window]["object_accuracy"] >= 0.99


def test_wrong_colour_lowers_colour_accuracy(frames, expected, clean):
    swapped = [f[..., ::-1].copy() for f in frames]  # RGB -> BGR: red objects turn blue, and so on
    report = score_video(swapped, expected).report()
    assert report["colour"] < 0.5 < clean["colour"]


def test_frozen_frames_lower_motion_accuracy(frames, expected):
    report = score_video([frames[0]] * len(frames), expected).report()
    assert report["motion"] < 0.2


def test_reversed_motion_lowers_motion_accuracy(frames, expected):
    report = score_video(frames[::-1], expected).report()
    assert report["motion"] < 0.3


def test_shuffled_frames_lower_identity_persistence(frames, expected):
    order = np.random.default_rng(0).permutation(len(frames))
    report = score_video([frames[i] for i in order], expected).report()
    assert report["identity"] < 0.5


def test_switch_that_never_happens_is_caught():
    timeline = [
        (0, "a red circle moves right on a black background"),
        (60, "a blue square moves left on a gray background"),
    ]
    stuck = episode_from_timeline(timeline[:1], 120, seed=3)
    expected = Expected.from_timeline(timeline, 120, 64, 64)
    report = score_video(render_states(stuck.frames()), expected).report()
    assert report["switch"]["switched"] == 0.0 and report["switch"]["median_latency"] == 60
    assert report["onset"] == {"held": True, "latency": 0}  # the first caption was right
    honest = episode_from_timeline(timeline, 120, seed=3)
    report = score_video(render_states(honest.frames()), expected).report()
    assert report["switch"]["switched"] == 1.0 and report["switch"]["median_latency"] <= 1


def test_first_caption_that_never_holds_counts_its_whole_segment(clean):
    red = episode_from_timeline([(0, "a red circle moves right on a black background")], 80, seed=3)
    timeline = [(0, "a blue square moves left on a gray background"), (50, "a red circle")]
    expected = Expected.from_timeline(timeline, 80, 64, 64)
    report = score_video(render_states(red.frames()), expected).report()
    assert report["onset"] == {"held": False, "latency": 50}
    # over many videos: how often the first caption held, and the median frames until it did
    summary = onset_summary([report, clean])
    assert summary == {"onset_held": 0.5, "onset_latency_median": 25.0}


def test_late_corruption_shows_as_drift(frames, expected):
    # The late half loses its colours to noise: early metrics stay, late ones fall.
    rng = np.random.default_rng(0)
    half = len(frames) // 2
    noisy = frames[:half] + [rng.integers(0, 256, f.shape, dtype=np.uint8) for f in frames[half:]]
    drift = score_video(noisy, expected).report()["drift"]
    assert drift["early"]["object_accuracy"] >= 0.99 and drift["late"]["object_accuracy"] < 0.5


def test_prompt_scoring_judges_only_what_the_prompt_says():
    episode = episode_from_timeline([(0, "a green triangle moves up")], 64, seed=0)
    expected = Expected.from_timeline(episode.timeline, 64, 64, 64)
    report = score_video(render_states(episode.frames()), expected).report()
    assert report["size"] is None and report["background"] is None  # neither was asked for
    assert report["colour"] == report["shape"] == report["motion"] == 1.0


# -- the strict score: what a user reads as "the video shows what I asked" ------------------------

ASKED = "a red circle moves right on a black background"


def prompt_score(frames, prompt: str = ASKED) -> dict:
    return score_video(frames, Expected.from_timeline([(0, prompt)], len(frames), 64, 64)).report()


@pytest.fixture(scope="module")
def asked():
    return list(render_states(episode_from_timeline([(0, ASKED)], 64, seed=1).frames()))


def test_the_true_render_scores_full_marks(asked):
    report = prompt_score(asked)
    assert report["object_accuracy"] >= 0.95 and report["precision"] == 1.0


def test_a_frozen_first_frame_of_a_moving_prompt_scores_at_most_half(asked):
    report = prompt_score([asked[0]] * len(asked))
    assert report["object_accuracy"] <= 0.5
    assert report["colour"] == 1.0  # the object is there, it just does not move


def test_an_all_black_video_scores_zero(asked):
    report = prompt_score([np.zeros_like(f) for f in asked])
    assert report["object_accuracy"] == 0 and report["identity"] == 0 and report["count"] == 0


def test_a_wrong_object_scores_zero():
    wrong = episode_from_timeline([(0, "a blue square moves left on a black background")], 64)
    report = prompt_score(list(render_states(wrong.frames())))
    assert report["object_accuracy"] == 0 and report["count"] == 0 and report["precision"] == 0


def test_an_unasked_object_lowers_precision_not_object_accuracy():
    both = "a red circle moves right and a blue square stays still on a black background"
    frames = list(render_states(episode_from_timeline([(0, both)], 64, seed=1).frames()))
    report = prompt_score(frames)
    assert report["object_accuracy"] >= 0.95
    assert 0.4 <= report["precision"] <= 0.6  # one object of the two found was asked for


def test_a_change_keeps_what_it_does_not_mention():
    """A story's later prompt states only the change; the rest of the scene is judged as before."""
    story = [
        (0, "a red circle moves right and a blue square stays still on a black background"),
        (40, "the circle turns green"),
    ]
    expected = Expected.from_timeline(story, 96, 64, 64)
    assert [o.colour for o in expected.specs[1].objects] == ["green", "blue"]
    assert (
        expected.specs[1].objects[1].motion == "still" and expected.specs[1].background == "black"
    )
    honest = episode_from_timeline(story, 96, seed=2)
    report = score_video(render_states(honest.frames()), expected).report()
    assert report["object_accuracy"] >= 0.95 and report["switch"]["kept"] == 1.0
    # the square is lost at the change, which did not mention it: the change is not kept
    lost = episode_from_timeline([story[0], (40, "a green circle moves right")], 96, seed=2)
    report = score_video(render_states(lost.frames()), expected).report()
    assert report["switch"]["kept"] == 0.0 and report["unchanged"] <= 0.1


def test_prompts_that_start_after_the_video_ends_are_not_judged(asked):
    timeline = [(0, ASKED), (500, "the circle turns blue")]
    report = score_video(asked, Expected.from_timeline(timeline, len(asked), 64, 64)).report()
    assert report["object_accuracy"] >= 0.95 and report["switch"]["count"] == 0


def test_a_video_shorter_than_its_timeline_is_a_clear_error(asked):
    from arlon.errors import ArlonError

    with pytest.raises(ArlonError, match="the video has 64 frames"):
        score_video(asked, Expected.from_timeline([(0, ASKED)], 100, 64, 64))

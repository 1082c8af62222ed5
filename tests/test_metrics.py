"""World metrics: near 1 on ground-truth renders, and each falls on a video built to violate it."""

import numpy as np
import pytest

from arlon.world.metrics import Expected, onset_summary, score_video
from arlon.world.render import render_states
from arlon.world.simulate import episode_from_timeline, random_episode

ACCURACIES = ("colour", "shape", "size", "background", "attribute", "motion", "count", "identity")


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
    assert clean["rerender_psnr"] > 35
    for window in ("early", "late"):
        assert clean["drift"][window]["attribute"] >= 0.99


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
    assert drift["early"]["attribute"] >= 0.99 and drift["late"]["attribute"] < 0.5


def test_prompt_scoring_judges_only_what_the_prompt_says():
    episode = episode_from_timeline([(0, "a green triangle moves up")], 64, seed=0)
    expected = Expected.from_timeline(episode.timeline, 64, 64, 64)
    report = score_video(render_states(episode.frames()), expected).report()
    assert report["size"] is None and report["background"] is None  # neither was asked for
    assert report["colour"] == report["shape"] == report["motion"] == 1.0

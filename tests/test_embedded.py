"""The embedded shapes-tiny weights load and work: the detector still finds what was encoded."""

import numpy as np
import pytest
import torch

from arlon.errors import ArlonError
from arlon.frames import from_frames, to_frames
from arlon.weights import embedded, load_embedded
from arlon.world.detect import Detector
from arlon.world.metrics import compare_to_truth
from arlon.world.render import render_states
from arlon.world.simulate import random_episode


@pytest.fixture(scope="module")
def clip():
    episode = random_episode((7919, 3), 17, events=False)  # a held-out clip
    states = list(episode.frames())
    frames = np.stack(list(render_states(states)))
    return states, from_frames(frames)[None]  # (1, 3, T, H, W)


def _found_fraction(states, video) -> float:
    frames = to_frames(video[0])
    detector = Detector()
    pairs = [
        p
        for s, f in zip(states, frames, strict=True)
        for p in compare_to_truth(detector(f), s, 64, 64)
    ]
    return sum(d is not None for _, d, _ in pairs) / len(pairs)


@torch.no_grad()
@pytest.mark.parametrize("vq", [None, "vq", "vq-coarse"])
def test_embedded_round_trip_keeps_the_objects(clip, vq):
    states, video = clip
    vae = load_embedded("vae")
    latents = vae.encode(video)
    if vq is not None:
        model = load_embedded(vq)
        latents = model.decode_codes(model.encode(latents), num_frames=latents.shape[2])
    reconstruction = vae.decode(latents)
    assert reconstruction.shape == video.shape
    # Every object survives the round trip (found by its colour); the coarse tokens are meant to be
    # blurry. Shape accuracy is measured, not asserted: docs/RESULTS.md.
    assert _found_fraction(states, reconstruction) >= (0.5 if vq == "vq-coarse" else 0.95)


@pytest.mark.parametrize("background", ["gray", "brown"])
def test_embedded_ar_draws_the_asked_background(background):
    """The first AR run is far from its targets (docs/RESULTS.md) but gets the background right;
    its codes decode through the embedded fine VQ-VAE and VAE into a video of the asked length."""
    from arlon.models.ar_sampler import ARSampler, ARSampling
    from arlon.models.text_encoder import TextEncoder
    from arlon.pipeline.coarse import coarse_video

    sampler = ARSampler(load_embedded("ar"), TextEncoder.from_pretrained(), ARSampling(top_k=20))
    prompt = f"a red circle moves right on a {background} background"
    frames = list(
        coarse_video(sampler, load_embedded("vq"), load_embedded("vae"), [(0, prompt)], 30)
    )
    assert len(frames) == 30 and frames[0].shape == (64, 64, 3)
    detector = Detector()
    assert all(detector(f).background == background for f in frames[::4])


def test_coarse_video_streamed_equals_decoded_from_codes_drawn_beforehand():
    from arlon.models.ar_sampler import ARSampler
    from arlon.models.text_encoder import TextEncoder
    from arlon.pipeline.coarse import coarse_frames, coarse_video, sample_codes, windows_for

    ar, vq, vae = load_embedded("ar"), load_embedded("vq"), load_embedded("vae")
    text_encoder = TextEncoder.from_pretrained()
    timeline = [(0, "a red circle moves right"), (20, "a red circle moves up")]
    streamed = list(coarse_video(ARSampler(ar, text_encoder, seed=3), vq, vae, timeline, 40))
    window, time = ar.config.code_window, (vae, vq.ratio[0])
    token_frames = windows_for(40, *time, window) * window
    codes = sample_codes(ARSampler(ar, text_encoder, seed=[3]), [timeline], token_frames, *time)
    decoded = list(coarse_frames(codes[0], vq, vae, window, 40))
    assert len(streamed) == len(decoded) == 40
    assert all(np.array_equal(a, b) for a, b in zip(streamed, decoded, strict=True))


def test_unknown_component():
    with pytest.raises(ArlonError, match="embedded"):
        embedded("unet")


def test_eval_ar_reports_world_metrics_of_coarse_videos(tmp_path, capsys):
    import json

    from arlon import cli
    from arlon.models.ar_sampler import GUIDANCE_SCALE

    argv = ["eval", "ar", "--prompts", "2", "--prompt-frames", "20", "--timelines", "1"]
    out = tmp_path / "ar.json"
    assert cli.main([*argv, "--timeline-frames", "120", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"]["prompts"] == 2 and report["prompts"]["background"] == 1.0
    assert report["timelines"]["frames"] == 120
    # the embedded AR's coarse videos show the asked objects and keep them (2026-12-07, these
    # seeds: object accuracy 0.975 and 1.0, identity 0.96 and 0.98)
    for part in ("prompts", "timelines"):
        assert report[part]["object_accuracy"] >= 0.7 and report[part]["identity"] >= 0.8, part
    assert report["sampling"]["guidance_scale"] == GUIDANCE_SCALE  # the default

"""ARLONPipeline: segments chained, seeds, save/load, the AR drawing beside the DiT, prompt switches
reaching both the AR and the DiT, modes, strength, continuation, bad inputs (`arlon generate`:
test_generate.py)."""

import json
import threading

import numpy as np
import pytest
import torch
from conftest import FRAMES, PROMPT

from arlon import cli
from arlon.errors import ArlonError
from arlon.frames import from_frames
from arlon.models.ar_sampler import ARSampler
from arlon.pipeline import ARLONPipeline, DiTSampling


def test_two_segments_make_the_asked_frames_and_the_same_seed_repeats(pipe):
    out = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, generator=3, progress=False)
    assert out.frames.shape == (1, FRAMES, 32, 32, 3) and out.frames.dtype == np.uint8
    assert pipe.last_times.segments == 2 and pipe.last_times.frames == FRAMES
    again = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, generator=3, progress=False)
    assert np.array_equal(out.frames, again.frames)
    other = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, generator=4, progress=False)
    assert not np.array_equal(out.frames, other.frames)
    streamed = list(pipe.stream(PROMPT, num_frames=FRAMES, sampling=DiTSampling(2), seed=3))
    assert np.array_equal(np.stack(streamed), out.frames[0])


@pytest.mark.parametrize("mode", ["arlon", "ar-only"])
def test_the_ar_drawing_beside_the_dit_makes_the_same_video(pipe, mode):
    """The stages overlapped (the AR in a thread of its own) or taking turns: the same frames, and
    every stage's seconds are counted."""
    settings = dict(num_frames=FRAMES, sampling=DiTSampling(2, mode=mode), seed=3, progress=False)
    together = np.stack(list(pipe.stream(PROMPT, **settings, overlap=True)))
    times = pipe.last_times
    assert times.ar > 0 and times.vae > 0 and times.total > times.vae
    in_turn = np.stack(list(pipe.stream(PROMPT, **settings)))
    assert np.array_equal(together, in_turn)
    assert pipe.last_times.waited >= pipe.last_times.ar  # in turn, the DiT waits out the AR
    assert not _ar_threads()  # the AR's thread has ended


def _ar_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "arlon-ar"]


def test_an_error_in_the_ar_thread_is_raised_where_the_frames_are_read(pipe, monkeypatch):
    def broken(self, *args, **kwargs):
        yield from []
        raise ArlonError("the AR broke")

    monkeypatch.setattr(ARSampler, "frames", broken)
    with pytest.raises(ArlonError, match="the AR broke"):
        list(pipe.stream(PROMPT, num_frames=FRAMES, progress=False, overlap=True))


def test_closing_the_stream_early_stops_the_ar_thread(pipe):
    """Ctrl-C or a Stop between frames closes the stream: the AR's thread ends after the token
    frame it is drawing, not at the end of the video."""
    from arlon.pipeline.coarse import SEAM_CONTEXT

    stream = pipe.stream(PROMPT, num_frames=200, sampling=DiTSampling(1), overlap=True)
    next(stream)
    assert _ar_threads()
    stream.close()
    drawn = pipe.last_times.token_frames
    assert not _ar_threads()
    # the window read, one queued, one being drawn, each out once the next one's first frames
    # (its seam context) are in: 11 of the video's 51 token frames at most
    assert drawn <= 3 * pipe.ar.config.code_window + SEAM_CONTEXT


def test_save_and_load_round_trip(pipe, folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["dit"] == ["arlon.models.stdit", "STDiT"] and index["segment_frames"] == 3
    loaded = ARLONPipeline.from_pretrained(folder)
    settings = dict(num_frames=FRAMES, num_inference_steps=2, generator=1, progress=False)
    assert np.array_equal(loaded(PROMPT, **settings).frames, pipe(PROMPT, **settings).frames)


def _ar_prompts(monkeypatch) -> list[str]:
    """The prompts the AR sampler is told from now on, in order, as it reads them."""
    told, original = [], ARSampler._prefix

    def prefix(self, prompts):
        told.extend(prompts)
        return original(self, prompts)

    monkeypatch.setattr(ARSampler, "_prefix", prefix)
    return told


def test_a_timeline_switch_reaches_the_ar_and_the_dit(pipe, monkeypatch):
    second = "a blue square moves up on a gray background"
    ar_prompts, dit_states = _ar_prompts(monkeypatch), []
    forward = pipe.dit.forward

    def spy(x, timestep, text_states=None, text_mask=None, **kwargs):
        dit_states.append(text_states[0, : int(text_mask[0].sum())].clone())
        return forward(x, timestep, text_states, text_mask, **kwargs)

    monkeypatch.setattr(pipe.dit, "forward", spy)
    frames = FRAMES + 8  # 3 segments
    timeline = [(0, PROMPT), (12, second)]
    pipe(timeline=timeline, num_frames=frames, num_inference_steps=1, progress=False)
    assert ar_prompts == [PROMPT, second]
    expected = [pipe.text_encoder.encode([p]).states[0] for p in (PROMPT, second)]
    used = [next(i for i, e in enumerate(expected) if torch.equal(s, e)) for s in dit_states]
    assert used == [0, 1, 1]  # the segment that holds the switch already renders the new prompt


def test_a_prompt_that_states_a_change_is_read_as_the_whole_scene(pipe, monkeypatch):
    """A change after PROMPT ("the circle turns blue"): the AR and the DiT are told the scene it asks for,
    so the video is the one the whole scene makes."""
    whole = "A blue circle moves right on a black background"
    ar_prompts = _ar_prompts(monkeypatch)
    videos = [
        pipe(
            timeline=[(0, PROMPT), (12, second)],
            num_frames=FRAMES + 8,
            num_inference_steps=1,
            progress=False,
        )
        for second in ("the circle turns blue", whole)
    ]
    assert ar_prompts == [PROMPT, whole] * 2
    assert np.array_equal(videos[0].frames[0], videos[1].frames[0])


def test_codes_sampled_as_a_batch_give_each_video_its_own_frames(pipe):
    timelines = [[(0, PROMPT)], [(0, PROMPT), (12, "a blue square moves up on a gray background")]]
    batch = pipe.sample_codes(timelines, FRAMES + 8, seeds=[5, 6])
    for timeline, codes, seed in zip(timelines, batch, [5, 6], strict=True):
        settings = dict(
            timeline=timeline, num_frames=FRAMES + 8, sampling=DiTSampling(1), seed=seed
        )
        alone = np.stack(list(pipe.stream(**settings, progress=False)))
        given = np.stack(list(pipe.stream(**settings, progress=False, codes=codes)))
        assert np.array_equal(alone, given)


def test_seams_are_where_segments_meet(pipe):
    # smoke segments: 3 latent frames, the first the previous segment's last: the first segment
    # ends at video frame 8, each later one 8 frames further
    assert pipe.seams(17) == [8]
    assert pipe.seams(40) == [8, 16, 24, 32]
    pipe(PROMPT, num_frames=40, num_inference_steps=1, mode="baseline", progress=False)
    assert pipe.last_times.segments == len(pipe.seams(40)) + 1


def test_baseline_mode_runs_without_the_ar(pipe, monkeypatch):
    def no_ar(*args, **kwargs):
        raise AssertionError("the baseline must not run the AR")

    monkeypatch.setattr(ARSampler, "frames", no_ar)
    out = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, mode="baseline", progress=False)
    assert out.frames.shape == (1, FRAMES, 32, 32, 3)
    wide = pipe(PROMPT, num_frames=5, num_inference_steps=1, width=48, mode="baseline")
    assert wide.frames.shape == (1, 5, 32, 48, 3)  # the DiT alone takes other sizes


def test_mode_baseline_runs_the_folders_baseline_where_the_dit_trained_its_backbone(
    pipe, folder, tmp_path
):
    """An ARLON DiT whose backbone was trained with its condition is not its baseline without it:
    mode baseline refuses it, saying what to do, and runs the folder's `baseline` DiT once
    `arlon assemble --baseline` gives it one (and it travels with the folder when saved)."""
    from arlon.models.stdit import STDiT

    trained = STDiT.from_baseline(pipe.dit, injection_blocks=1)  # its own backbone, then moved
    with torch.no_grad():
        for p in trained.backbone_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    trained.register_to_config(backbone_trained=True)
    trained.save_pretrained(tmp_path / "trained")
    parts = [arg for name in ("ar", "vq", "vae") for arg in (f"--{name}", folder / name)]
    argv = [*parts, "--dit", tmp_path / "trained", "--segment-frames", 3, "--reference-frames", 1]
    assert cli.main([str(a) for a in ["assemble", "--out", tmp_path / "alone", *argv]]) == 0
    alone = ARLONPipeline.from_pretrained(tmp_path / "alone")
    with pytest.raises(ArlonError, match="arlon assemble --baseline DIR"):
        alone(PROMPT, num_frames=5, num_inference_steps=1, mode="baseline", progress=False)
    alone(PROMPT, num_frames=5, num_inference_steps=1, progress=False)  # mode arlon: its own DiT
    with_baseline = [*argv, "--baseline", folder / "dit"]
    assert cli.main([str(a) for a in ["assemble", "--out", tmp_path / "both", *with_baseline]]) == 0
    both = ARLONPipeline.from_pretrained(tmp_path / "both")
    both.save_pretrained(tmp_path / "saved")
    assert ARLONPipeline.from_pretrained(tmp_path / "saved").models[-1] == "baseline"
    run = dict(num_frames=FRAMES, num_inference_steps=2, mode="baseline", progress=False)
    frames = both(PROMPT, **run).frames
    assert np.array_equal(frames, pipe(PROMPT, **run).frames)  # the baseline's own frames
    with pytest.raises(ArlonError, match="trained its backbone with a condition"):
        ARLONPipeline.from_pretrained(folder, baseline=trained)  # a baseline is a baseline
    wider = STDiT.from_config({**pipe.dit.config, "in_channels": 8})
    with pytest.raises(ArlonError, match="in_channels is 8, the DiT's 4"):
        ARLONPipeline.from_pretrained(folder, baseline=wider)
    unmarked = STDiT.from_pretrained(tmp_path / "trained")
    unmarked.register_to_config(backbone_trained=False)
    assert not np.array_equal(
        frames, ARLONPipeline.from_pretrained(folder, dit=unmarked)(PROMPT, **run).frames
    )  # the trained backbone without F draws others


def test_a_strength_starts_each_segment_from_the_ar_latent_in_fewer_steps(pipe, monkeypatch):
    """Below 1, every DiT segment starts from its coarse latent (the AR's, as ARLON's condition)
    and runs round(steps * strength) of the steps."""
    from arlon.pipeline import pipeline as module

    starts, strengths = [], []
    real = module.sample

    def spy(velocity, noise, steps, *args, start=None, strength=1.0, **kwargs):
        starts.append(start)
        strengths.append(strength)
        return real(velocity, noise, steps, *args, start=start, strength=strength, **kwargs)

    monkeypatch.setattr(module, "sample", spy)
    conditions = []  # the coarse latent the DiT is guided by, at each forward

    def hook(module, args, kwargs, output):
        conditions.append(kwargs["condition"])

    handle = pipe.dit.register_forward_hook(hook, with_kwargs=True)
    segments = len(pipe.seams(FRAMES)) + 1
    try:
        for strength in (1.0, 0.5):
            conditions.clear()
            starts.clear()
            out = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=4, strength=strength)
            assert out.frames.shape == (1, FRAMES, 32, 32, 3)
            assert strengths[-segments:] == [strength] * segments
            steps = 4 if strength == 1 else 2
            assert len(conditions) == segments * steps
            # each segment starts from the very latent that guides its DiT: the AR's
            for segment, start in enumerate(starts):
                condition = conditions[segment * steps]
                assert torch.equal(condition[: start.shape[0]], start.to(condition.dtype))
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt=PROMPT, num_frames=0), "positive integer"),
        (dict(prompt=PROMPT, num_inference_steps=0), "positive integer"),
        (dict(prompt=PROMPT, height=40), "multiples of 16"),
        (dict(prompt=PROMPT, width=48), "draws 32x32 videos"),
        (dict(timeline=[(5, PROMPT)]), "start at frame 0"),
        (dict(prompt=PROMPT, mode="fast"), "mode must be"),
        (dict(prompt=PROMPT, strength=0), "strength must lie in"),
        (dict(prompt=PROMPT, strength=0.5, mode="baseline"), "mode arlon"),
        (dict(prompt=PROMPT, strength=0.9), "keeps all 5 steps"),  # refused before the AR runs
    ],
)
def test_pipeline_bad_inputs(pipe, kwargs, message):
    with pytest.raises(ArlonError, match=message):
        pipe(**{"num_frames": FRAMES, **kwargs})


def test_continuation_starts_from_the_given_video(pipe, monkeypatch):
    video = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=1, progress=False).frames[0]
    histories, calls = [], []
    frames = ARSampler.frames

    def ar_spy(self, timeline, num_frames, history=None):
        histories.append(history)
        return frames(self, timeline, num_frames, history)

    forward = pipe.dit.forward

    def dit_spy(x, timestep, *args, frame_mask=None, **kwargs):
        calls.append((x.clone(), frame_mask.clone()))
        return forward(x, timestep, *args, frame_mask=frame_mask, **kwargs)

    monkeypatch.setattr(ARSampler, "frames", ar_spy)
    monkeypatch.setattr(pipe.dit, "forward", dit_spy)
    out = pipe(PROMPT, num_frames=8, num_inference_steps=1, init_video=video, progress=False)
    assert out.frames.shape == (1, 8, 32, 32, 3)
    tail = pipe.vae.encode(from_frames(video)[None])[
        :, :, -1:
    ]  # the last latent frame: the reference
    assert torch.equal(histories[0][0], pipe.vq.encode(tail)[0, 0])  # the AR's history
    x, frame_mask = calls[0]
    assert frame_mask[0].tolist() == [True, False, False]
    assert torch.allclose(x[:, :, :1], tail, atol=1e-6)
    # longer than the AR's window: the history and the new frames slide through it together
    longer = pipe(PROMPT, num_frames=40, num_inference_steps=1, init_video=video, progress=False)
    assert longer.frames.shape == (1, 40, 32, 32, 3)
    with pytest.raises(ArlonError, match="no such video"):
        pipe(PROMPT, num_frames=8, init_video="missing.mp4")
    with pytest.raises(ArlonError, match="the video to continue is 32x32: its continuation cannot"):
        pipe(PROMPT, num_frames=8, init_video=video, height=64, width=64)
    for bad in (video / 255.0, video[..., 0], video[:0]):  # floats, no colour, no frames
        with pytest.raises(ArlonError, match=r"uint8 frames \(T, H, W, 3\)"):
            pipe(PROMPT, num_frames=8, init_video=bad)


def test_ar_only_mode_is_the_coarse_video_of_the_same_codes(pipe):
    """Mode ar-only decodes the AR's codes straight through the VQ-VAE and the VAE: the video
    `coarse_frames` makes of the same codes, and no DiT step runs."""
    from arlon.pipeline.coarse import coarse_frames

    codes = pipe.sample_codes([[(0, PROMPT)]], FRAMES, seeds=[2])[0]
    settings = dict(num_frames=FRAMES, sampling=DiTSampling(mode="ar-only"), seed=2)
    alone = np.stack(list(pipe.stream(PROMPT, **settings, progress=False)))
    given = np.stack(list(pipe.stream(PROMPT, **settings, progress=False, codes=codes)))
    window = pipe.ar.config.code_window
    coarse = np.stack(list(coarse_frames(codes, pipe.vq, pipe.vae, window, FRAMES)))
    assert alone.shape == (FRAMES, 32, 32, 3)
    assert np.array_equal(alone, given) and np.array_equal(alone, coarse)
    assert pipe.last_times.segments == 0 and pipe.last_times.dit == 0
    with pytest.raises(ArlonError, match="does not continue"):
        next(pipe.stream(PROMPT, **settings, init_video=alone))


@pytest.mark.parametrize("mode,overlap", [("arlon", False), ("arlon", True), ("baseline", True)])
def test_a_prompt_directed_mid_stream_takes_effect_at_the_next_token_frame(
    pipe, folder, tmp_path, mode, overlap
):
    """Live direction: a prompt given while the frames stream holds from the next token frame the
    AR draws (baseline: the next DiT segment), and the timeline recorded with it regenerates the
    same video frame for frame, in Python and with `arlon generate --timeline`. With the stages
    overlapped, the AR may draw on between the count read here and the prompt given: a later
    token frame."""
    from arlon.pipeline.coarse import token_start
    from arlon.pipeline.output import VideoOutput, write_video
    from arlon.timeline import LiveTimeline, Timeline

    second = "a blue square moves up on a gray background"
    # smoke: 41 frames, 5 segments, 11 token frames; overlapped, the AR may be 3 VQ windows (9
    # token frames) ahead of the first frame: a longer video leaves it token frames to direct
    frames = 81 if overlap else 41
    settings = dict(num_frames=frames, sampling=DiTSampling(1, mode=mode), seed=4, progress=False)
    live = LiveTimeline(PROMPT)
    stream = pipe.stream(timeline=live, **settings, overlap=overlap)
    made = [next(stream)]
    times = pipe.last_times
    drawn, rendered = times.token_frames, times.segments
    live.direct(second)
    made += list(stream)
    token_frames = pipe.token_frames(pipe.plan(frames)[1])
    starts = [token_start(t, pipe.vae, pipe.vq.ratio[0]) for t in range(drawn, token_frames)]
    if mode == "arlon" and overlap:
        start = live.timeline[-1][0]
        assert start in starts  # a token frame the AR had not begun when the prompt came
    elif mode == "arlon":  # the AR's next token frame, which it draws ahead of the frames out
        start = starts[0]
    else:  # the next segment's first new frame
        start = pipe.seams(frames)[rendered - 1] + 1
    assert live.timeline == Timeline([(0, PROMPT), (start, second)]) and 1 <= start < frames
    again = list(pipe.stream(timeline=live.timeline, **settings))
    assert np.array_equal(np.stack(made), np.stack(again))
    plain = list(pipe.stream(PROMPT, **settings))
    assert not np.array_equal(np.stack(made), np.stack(plain))

    live.timeline.write(tmp_path / "timeline.txt")
    write_video(made, VideoOutput(tmp_path / "made.mp4"), fps=pipe.config.fps)
    argv = ["--timeline", tmp_path / "timeline.txt", "--model", folder, "--mode", mode]
    argv += ["--frames", frames, "--steps", 1, "--seed", 4, "--threads", torch.get_num_threads()]
    argv += ["-o", tmp_path / "cli.mp4"]
    assert cli.main(["generate", *map(str, argv)]) == 0
    assert (tmp_path / "made.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes()

"""ARLONPipeline and `arlon generate`: segments chained, seeds, save/load, prompt switches reaching
both the AR and the DiT, the embedded default, and every bad input as a one-line error (exit 2)."""

import json
import threading

import numpy as np
import pytest
import torch
from conftest import smoke_pipeline

from arlon import cli
from arlon.data.video_io import video_info
from arlon.errors import ArlonError
from arlon.frames import from_frames
from arlon.models.ar_sampler import GUIDANCE_SCALE, LOOKAHEAD, ARSampler, ARSampling
from arlon.pipeline import ARLONPipeline, DiTSampling

PROMPT = "a red circle moves right on a black background"
# smoke sizes: 32x32 frames, 4x4 latents, 2x2 token frames; segments of 3 latent frames, 1 kept
# as reference: 17 frames = 5 latent frames = 2 segments.
FRAMES = 17


@pytest.fixture(scope="module")
def pipe():
    return smoke_pipeline()


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "smoke"
    pipe.save_pretrained(out)
    return out


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


def generate(capsys, *argv):
    code = cli.main(["generate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_the_video_and_a_summary(folder, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, stdout, _ = generate(
        capsys, PROMPT, "--model", folder, "--frames", FRAMES, "--steps", 1, "-o", out, "--gif"
    )
    assert code == 0 and "17 frames" in stdout and "frames/s" in stdout
    assert video_info(out).num_frames == FRAMES and video_info(out.with_suffix(".gif")).num_frames
    timeline = tmp_path / "t.txt"
    timeline.write_text(f"0\t{PROMPT}\n8\ta blue square moves up\n")
    code, _, _ = generate(
        capsys, "--timeline", timeline, "--model", folder, "--frames", 9, "-o", out
    )
    assert code == 0 and video_info(out).num_frames == 9


def test_the_ar_is_guided_unless_told_otherwise(folder, tmp_path, capsys, monkeypatch):
    """The AR's guidance and lookahead are its defaults unless the command line sets them."""
    settings = []
    build = ARSampler.__init__

    def spy(self, model, text_encoder, sampling=ARSampling(), *args, **kwargs):
        settings.append((sampling.guidance_scale, sampling.lookahead))
        build(self, model, text_encoder, sampling, *args, **kwargs)

    monkeypatch.setattr(ARSampler, "__init__", spy)
    argv = [PROMPT, "--model", folder, "--frames", 9, "--steps", 1, "-o", tmp_path / "v.mp4"]
    assert generate(capsys, *argv)[0] == 0
    assert generate(capsys, *argv, "--ar-guidance", 1, "--ar-lookahead", 3)[0] == 0
    pipe = ARLONPipeline.from_pretrained(folder)
    pipe(PROMPT, num_frames=9, num_inference_steps=1, progress=False)
    default = (GUIDANCE_SCALE, LOOKAHEAD)
    assert settings == [default, (1.0, 3), default] and GUIDANCE_SCALE > 1 and LOOKAHEAD > 1


def test_the_dit_guidance_is_the_models_unless_told_otherwise(
    folder, tmp_path, capsys, monkeypatch
):
    """A pipeline folder carries its DiT's best text guidance: generation, the suite's runs and the
    web page take it when they are not given one."""
    import shutil

    from arlon.evaluation.suite import SuitePlan
    from arlon.pipeline import pipeline as module
    from arlon.serve.app import build

    model = tmp_path / "guided"
    shutil.copytree(folder, model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "guidance_scale": 2.5}))
    scales = []
    real = module.guided

    def spy(dit, scale, **kwargs):
        scales.append(scale)
        return real(dit, scale, **kwargs)

    monkeypatch.setattr(module, "guided", spy)
    argv = [PROMPT, "--model", model, "--frames", 9, "--steps", 1, "-o", tmp_path / "v.mp4"]
    assert generate(capsys, *argv)[0] == 0
    assert generate(capsys, *argv, "--guidance", 1)[0] == 0
    assert set(scales) == {2.5, 1.0} and scales[0] == 2.5 and scales[-1] == 1.0
    pipe = ARLONPipeline.from_pretrained(model)
    assert pipe.config.guidance_scale == 2.5
    assert ARLONPipeline.from_pretrained(folder).config.guidance_scale == 1.0  # no setting: none
    runs = SuitePlan(modes=("arlon", "ar-only"), guidance=(None, 4.0)).runs(pipe.resolved)
    assert [run.label for run in runs] == ["arlon-5-g2.5", "arlon-5-g4", "ar-only"]
    page = build(pipe, tmp_path / "page")
    fields = {c.elem_id: c for c in page.blocks.values() if getattr(c, "elem_id", None)}
    assert fields["guidance"].value == 2.5


def test_the_models_strength_starts_its_arlon_runs_from_the_ar_latent(folder, tmp_path, capsys):
    """`arlon assemble --strength` gives a pipeline folder the strength its ARLON runs take when a
    call, a suite run or the CLI leaves it to the model; the other modes start from noise, and a
    step count that the model's strength would keep whole is refused, saying so."""
    from arlon.evaluation.suite import Run, SuitePlan

    model = tmp_path / "from-the-ar"
    parts = [arg for name in ("ar", "vq", "dit", "vae") for arg in (f"--{name}", folder / name)]
    argv = ["assemble", "--out", model, *parts, "--segment-frames", 3, "--reference-frames", 1]
    assert cli.main([str(a) for a in [*argv, "--guidance", 2.5, "--strength", 0.6]]) == 0
    pipe = ARLONPipeline.from_pretrained(model)
    assert (pipe.config.guidance_scale, pipe.config.strength) == (2.5, 0.6)
    assert pipe.resolved(DiTSampling(5)).strength == 0.6
    assert pipe.resolved(DiTSampling(5, strength=1.0)).strength == 1.0  # the call's own
    assert pipe.resolved(DiTSampling(5, mode="baseline")).strength == 1.0
    runs = SuitePlan(modes=("arlon", "baseline")).runs(pipe.resolved)
    assert [run.label for run in runs] == ["arlon-5-g2.5-s0.6", "baseline-5-g2.5"]
    only = (Run("arlon", 5), Run("baseline", 30, 1.0))
    runs = SuitePlan(only=only).runs(pipe.resolved)
    assert [run.label for run in runs] == ["arlon-5-g2.5-s0.6", "baseline-30-g1"]
    args = [PROMPT, "--model", model, "--frames", 9, "-o", tmp_path / "v.mp4"]
    code, _, err = generate(capsys, *args, "--steps", 2)
    assert code == 2 and "the model's strength 0.6 keeps all 2 steps" in err
    assert generate(capsys, *args, "--steps", 3)[0] == 0
    assert ARLONPipeline.from_pretrained(folder).config.strength == 1.0  # no setting: from noise


def test_the_ar_temperature_is_the_models_unless_told_otherwise(
    folder, tmp_path, capsys, monkeypatch
):
    """`arlon assemble --ar-temperature` gives a pipeline folder the temperature its AR draws at
    when a call or the CLI leaves it to the model: at 0 (greedy) two seeds draw the same codes,
    where a folder without the setting draws at 1 and they differ; a call's own wins."""
    model = tmp_path / "greedy"
    parts = [arg for name in ("ar", "vq", "dit", "vae") for arg in (f"--{name}", folder / name)]
    argv = ["assemble", "--out", model, *parts, "--segment-frames", 3, "--reference-frames", 1]
    assert cli.main([str(a) for a in [*argv, "--ar-temperature", 0]]) == 0
    greedy, plain = ARLONPipeline.from_pretrained(model), ARLONPipeline.from_pretrained(folder)
    assert (greedy.config.ar_temperature, plain.config.ar_temperature) == (0.0, 1.0)
    timelines = [[(0, PROMPT)]] * 2
    a, b = greedy.sample_codes(timelines, FRAMES, seeds=[0, 1])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    a, b = plain.sample_codes(timelines, FRAMES, seeds=[0, 1])
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    a, b = greedy.sample_codes(timelines, FRAMES, [0, 1], ARSampling(temperature=1.0))
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # the call's own

    temperatures = []
    build = ARSampler.__init__

    def spy(self, model, text_encoder, sampling=ARSampling(), *args, **kwargs):
        temperatures.append(sampling.temperature)
        build(self, model, text_encoder, sampling, *args, **kwargs)

    monkeypatch.setattr(ARSampler, "__init__", spy)
    argv = [PROMPT, "--model", model, "--frames", 9, "--steps", 1, "-o", tmp_path / "v.mp4"]
    assert generate(capsys, *argv)[0] == 0
    assert generate(capsys, *argv, "--ar-temperature", 0.5)[0] == 0
    assert temperatures == [0.0, 0.5]
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "ar_temperature": -1}))
    with pytest.raises(ArlonError, match="AR temperature must be >= 0"):
        ARLONPipeline.from_pretrained(model)


def test_embedded_default_generates(tmp_path, capsys):
    out = tmp_path / "e.mp4"
    code, stdout, _ = generate(capsys, PROMPT, "--frames", 12, "-o", out, "--quiet")  # its steps
    assert code == 0 and video_info(out).num_frames == 12
    assert (video_info(out).height, video_info(out).width) == (64, 64)


@pytest.mark.parametrize(
    "argv,message",
    [
        ([""], "empty"),
        ([PROMPT, "--frames", "0"], "--frames: must be a positive integer"),
        ([PROMPT, "--frames", "-4"], "--frames: must be a positive integer"),
        ([PROMPT, "--frames", "ten"], "--frames: expected a number"),
        ([PROMPT, "--steps", "0"], "--steps: must be a positive integer"),
        ([PROMPT, "--seed", str(2**64)], "a seed is an integer in [0, 2**63)"),
        ([PROMPT, "--fps", "0"], "--fps: must be positive"),
        ([PROMPT, "-o", "video.avi"], "the suffix must be one of"),
        ([PROMPT, "--height", "40"], "multiples of 16"),
        ([PROMPT, "-o", "missing/out.mp4"], "does not exist"),
        ([PROMPT, "-o", "folder.mp4"], "it is a folder"),
        ([PROMPT, "--model", "nowhere"], "does not exist"),
        (["--timeline", "empty.txt"], "empty timeline"),
        (["--timeline", "unsorted.txt"], "strictly increasing"),
        (["--timeline", "malformed.txt"], "malformed.txt:1: expected"),
        (["--timeline", "arabic.txt"], "arabic.txt:1: expected"),
        (["--timeline", "superscript.txt"], "superscript.txt:2: expected"),
        (["--timeline", "random.txt"], "not UTF-8 text"),
        (["--prompt", PROMPT, "--prompt", "a blue square"], "--switch-every"),
        ([PROMPT, "--init-video", "none.mp4"], "no such video"),
        ([PROMPT, "--init-video", "earlier.gif", "-o", "earlier.gif"], "is the video to continue"),
        ([PROMPT, "--init-video", "folder.mp4"], "is a folder, not a file"),
    ],
)
def test_generate_bad_input_is_one_line_exit_2_and_leaves_no_file(
    folder, tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "unsorted.txt").write_text(f"0\t{PROMPT}\n20\tb\n10\tc\n")
    (tmp_path / "malformed.txt").write_text(f"zero\t{PROMPT}\n")
    (tmp_path / "arabic.txt").write_text(f"\u0660\t{PROMPT}\n")  # an Arabic-Indic zero
    (tmp_path / "superscript.txt").write_text(f"0\t{PROMPT}\n\u00b2\tb\n")
    (tmp_path / "random.txt").write_bytes(bytes(range(128, 256)) * 8)
    (tmp_path / "folder.mp4").mkdir()  # an output path that cannot be written
    (tmp_path / "earlier.gif").write_bytes(b"GIF89a")  # a video to continue
    model = [] if "--model" in argv else ["--model", folder]
    out = [] if "-o" in argv else ["-o", "o.mp4"]
    code, _, err = generate(capsys, *argv, *model, *out)
    assert code == 2, err
    assert err.startswith("arlon: error:") and message in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.glob("*.mp4")] == ["folder.mp4"]
    assert not list(tmp_path.glob(".*.mp4"))


def _damage(folder, damage: str) -> str:
    """Damage a copy of a pipeline folder; the message its loading must give."""
    import shutil

    index = folder / "model_index.json"
    if damage == "no_index":
        index.unlink()
        return "no model_index.json"
    if damage == "no_component":
        shutil.rmtree(folder / "dit")
        return "no dit/ folder"
    if damage == "corrupt":
        (folder / "dit" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
        return "cannot load the DiT"
    if damage == "random_index":
        index.write_bytes(bytes(range(256)) * 4)
        return "not UTF-8 text"
    if damage == "string_index":
        index.write_text('"ARLONPipeline"')
        return "holds a JSON str, not an object"
    if damage == "planted_class":  # a class that runs code when built: never imported
        index.write_text(index.read_text().replace('"arlon.models.stdit"', '"subprocess"'))
        return "names ['subprocess', 'STDiT'] for dit"
    config = folder / "dit" / "config.json"  # damage == "other_model"
    config.write_text(config.read_text().replace('"STDiT"', '"Popen"'))
    return "holds a Popen, not a DiT"


DAMAGES = [
    "no_index", "no_component", "corrupt", "random_index", "string_index", "planted_class",
    "other_model",
]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES)
def test_generate_damaged_model_folder(folder, tmp_path, capsys, damage):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    message = _damage(broken, damage)
    code, _, err = generate(capsys, PROMPT, "--model", broken, "-o", tmp_path / "o.mp4")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o.mp4").exists()


def test_ctrl_c_keeps_a_playable_video_of_the_frames_done(folder, tmp_path, capsys, monkeypatch):
    stream = ARLONPipeline.stream

    def interrupted(self, *args, **kwargs):
        for i, frame in enumerate(stream(self, *args, **kwargs)):
            if i == 7:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(ARLONPipeline, "stream", interrupted)
    out = tmp_path / "cut.mp4"
    code = cli.main(["generate", PROMPT, "--model", str(folder), "--frames", "17", "-o", str(out)])
    assert code == 130
    assert "kept the 7 frames" in capsys.readouterr().err
    assert video_info(out).num_frames == 7


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


def test_eval_generate_scores_whole_generations(folder, tmp_path, capsys):
    out = tmp_path / "gen.json"
    argv = ["eval", "generate", "--model", str(folder), "--prompts", "2", "--timelines", "1"]
    assert cli.main([*argv, "--frames", "17", "--steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"]["videos"] == 2 and report["timelines"]["videos"] == 1
    assert report["mode"] == "arlon" and report["ar_guidance"] == GUIDANCE_SCALE  # the default
    # the held-out prompts' videos (video i from seed i) scored one by one give the same means
    from arlon.evaluation.heldout import HELDOUT_SEED, heldout_prompts
    from arlon.world.metrics import METRICS, Expected, mean_judged, score_video

    pipe = ARLONPipeline.from_pretrained(folder)
    sampling = DiTSampling(num_inference_steps=1)
    reports = []
    for seed, prompt in enumerate(heldout_prompts(2, HELDOUT_SEED)):
        frames = pipe.stream(timeline=prompt, num_frames=17, seed=seed, sampling=sampling)
        expected = Expected.from_timeline(prompt, 17, *pipe.default_size())
        reports.append(score_video(frames, expected).report())
    means = {m: mean_judged(r[m] for r in reports) for m in METRICS}
    assert means == pytest.approx({m: report["prompts"][m] for m in METRICS}, abs=1e-6)
    assert any(means.values())  # not all zero or unjudged: the background, at least, is judged


def test_sigterm_keeps_the_frames_done_and_exits_143(folder, tmp_path, capsys, monkeypatch):
    import os
    import signal

    stream = ARLONPipeline.stream

    def terminated(self, *args, **kwargs):
        for i, frame in enumerate(stream(self, *args, **kwargs)):
            if i == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a job scheduler sends it
            yield frame

    monkeypatch.setattr(ARLONPipeline, "stream", terminated)
    out = tmp_path / "cut.mp4"
    code = cli.main(["generate", PROMPT, "--model", str(folder), "--frames", "17", "-o", str(out)])
    assert code == 143 and "kept the 5 frames" in capsys.readouterr().err
    assert video_info(out).num_frames == 5
    assert [p.name for p in tmp_path.iterdir()] == ["cut.mp4"]  # no temporary file left


def test_ctrl_c_before_the_first_frame_leaves_nothing_and_exits_130(
    folder, tmp_path, capsys, monkeypatch
):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(ARLONPipeline, "stream", interrupted)
    out = tmp_path / "none.mp4"
    code = cli.main(["generate", PROMPT, "--model", str(folder), "--frames", "17", "-o", str(out)])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_mistakes_are_reported_before_torch_is_imported(tmp_path):
    """Arguments and files are checked before the models (and torch, seconds to import) load."""
    import subprocess
    import sys

    script = (
        "import sys; from arlon.cli import main\n"
        "codes = [main(argv) for argv in (['generate', '', '-o', 'x.mp4'], "
        "['generate', 'a red circle', '--frames', '0'], ['generate', 'a', '--timeline', 't.txt'], "
        "['world', 'render', '--out', 'x.avi'], ['train', 'ar', '--out', 'r', '--data', 'none'])]\n"
        "assert codes == [2] * 5, codes\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    assert done.stderr.decode().count("arlon: error:") == 5


def test_words_the_model_never_saw_are_named(folder, tmp_path, capsys):
    argv = ["--model", folder, "--frames", 9, "--steps", 1, "-o", tmp_path / "v.mp4"]
    code, _, err = generate(capsys, "a cat playing piano on a black background", *argv)
    assert code == 0 and "never saw these words in training: cat, playing, piano" in err
    code, _, err = generate(capsys, PROMPT, *argv)
    assert code == 0 and "warning" not in err
    code, _, err = generate(capsys, " ".join([PROMPT] * 20), *argv)
    assert code == 0 and "is cut to its first 64 tokens" in err and "never saw" not in err
    story = ["--prompt", PROMPT, "--prompt", "the circle turns blue", "--switch-every", 5]
    code, _, err = generate(capsys, *story, *argv)
    read = "A blue circle moves right on a black background"
    assert code == 0 and f"frame 5: 'the circle turns blue' is read as '{read}'" in err


def test_the_same_seed_writes_the_same_bytes(folder, tmp_path, capsys):
    argv = [PROMPT, "--model", folder, "--frames", FRAMES, "--steps", 1, "--seed", 7]
    for name in ("a.mp4", "b.mp4"):
        assert generate(capsys, *argv, "-o", tmp_path / name)[0] == 0
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


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
    pipe, folder, tmp_path, capsys, mode, overlap
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
    starts = [
        token_start(t, pipe.temporal_ratio, pipe.vq.ratio[0]) for t in range(drawn, token_frames)
    ]
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
    assert generate(capsys, *argv)[0] == 0
    assert (tmp_path / "made.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes()

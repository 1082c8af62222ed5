"""`arlon generate`: the video and its summary, the model's defaults (guidance, strength, temperature),
the embedded model, every bad input or damaged model folder as a one-line error (exit 2), Ctrl-C
and SIGTERM keeping the frames made, the same bytes for the same seed."""

import json

import pytest
import torch
from conftest import FRAMES, PROMPT

from arlon import cli
from arlon.data.video_io import video_info
from arlon.errors import ArlonError
from arlon.models.ar_sampler import GUIDANCE_SCALE, LOOKAHEAD, ARSampler, ARSampling
from arlon.pipeline import ARLONPipeline, DiTSampling


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


def test_a_terminal_is_told_the_model_loads_before_the_first_progress_bar(
    folder, tmp_path, capsys, monkeypatch
):
    """The imports and the model take seconds before any progress: at a terminal (not in a log or a
    pipe, not with --quiet) one line says what loads."""
    argv = [PROMPT, "--model", folder, "--frames", 9, "--steps", 1, "-o", tmp_path / "v.mp4"]
    code, _, err = generate(capsys, *argv)
    assert code == 0 and "loading" not in err  # captured: not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    code, _, err = generate(capsys, *argv)
    assert code == 0 and err.startswith(f"arlon: loading {folder}\n")
    code, _, err = generate(capsys, *argv, "--quiet")
    assert code == 0 and "loading" not in err


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
    import signal

    stream = ARLONPipeline.stream

    def terminated(self, *args, **kwargs):
        for i, frame in enumerate(stream(self, *args, **kwargs)):
            if i == 5:
                signal.raise_signal(signal.SIGTERM)  # as `kill` sends it, handled at once here
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

"""`arlon recipe`: one command trains a whole pipeline from an empty folder, every budget in one file,
and continues an interrupted run without redoing a finished stage."""

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import arlon.weights
from arlon import cli
from arlon.data.video_io import read_video
from arlon.errors import ArlonError, Stopped
from arlon.models.ar_transformer import ar_transformer
from arlon.pipeline import ARLONPipeline
from arlon.training import parallel
from arlon.training import recipe as recipe_module
from arlon.training.parallel import run_parallel, thread_shares
from arlon.training.recipe import plan, read_recipe


def test_the_smoke_recipe_trains_a_pipeline_that_generates_and_resumes(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "recipe"
    assert cli.main(["recipe", "smoke", "--out", str(out)]) == 0
    stages = [s.name for s in read_recipe("smoke").stages]
    finished = {name: json.loads((out / name / "done.json").read_text()) for name in stages}
    assert "flow_loss_heldout" in finished["dit"]["heldout"]  # the curve's end, for its budget
    assert finished["ar"]["best"]["metric"] == "perplexity_heldout"  # the AR's model is its best
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert (index["guidance_scale"], index["strength"]) == (2.0, 0.6)  # as the recipe chose
    pipe = ARLONPipeline.from_pretrained(out / "pipeline")
    assert pipe.dit.config.backbone_trained and pipe.baseline is not None  # mode baseline's own
    video = tmp_path / "story.mp4"
    assert (
        cli.main(
            [
                "generate",
                "a red ball moves right",
                "--model",
                str(out / "pipeline"),
                "--frames",
                "9",
                "-o",
                str(video),
            ]
        )
        == 0
    )
    assert read_video(video).shape == (3, 9, 64, 64)  # (C, T, H, W): the smoke pipeline's frames

    # Without --resume a finished run is never overwritten.
    assert cli.main(["recipe", "smoke", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err

    # Interrupted after the DiT: --resume redoes only ARLON's DiT (from its checkpoint) and the
    # assembly, and keeps every finished stage as it was.
    redo = ("arlon", "pipeline")
    for name in stages:  # mark each record: a stage run again writes its record anew
        if name in redo:
            (out / name / "done.json").unlink()
        else:
            (out / name / "done.json").write_text(json.dumps({**finished[name], "kept": True}))
    capsys.readouterr()
    assert cli.main(["recipe", "smoke", "--out", str(out), "--resume", "--stages", "arlon"]) == 0
    assert capsys.readouterr().out.endswith("smoke: still to do pipeline (--resume continues)\n")
    assert cli.main(["recipe", "smoke", "--out", str(out), "--resume"]) == 0
    assert capsys.readouterr().out.endswith(f"recipe smoke: {out / 'pipeline'}\n")
    for name in stages:
        again = json.loads((out / name / "done.json").read_text())
        assert again.get("kept", False) == (name not in redo), name
    states = [row["state"] for row in plan(read_recipe("smoke"), out)]
    assert all(state.startswith("done in") for state in states)

    # A finished stage whose budget has since changed is not taken for the new one.
    more = ["recipe", "smoke", "--out", str(out), "--resume", "--set", "data.clips=7"]
    assert cli.main(more) == 2
    assert "stage 'data'" in capsys.readouterr().err
    data = plan(read_recipe("smoke", ["data.clips=7"]), out)[0]
    assert data["state"].endswith("with other settings: clips: 6 -> 7")

    # A time budget pauses a stage; only its last step finishes it.
    shutil.rmtree(out / "ar")
    paused = ["recipe", "smoke", "--out", str(out), "--resume", "--stages", "ar"]
    assert cli.main([*paused, "--set", "ar.max_steps=50", "ar.max_minutes=0.001"]) == 2
    assert "stopped at step" in capsys.readouterr().err and not (out / "ar" / "done.json").exists()
    ar = next(row for row in plan(read_recipe("smoke"), out) if row["stage"] == "ar")
    # its last checkpoint and evaluation
    assert re.fullmatch(
        r"in progress, step \d+ \(held out at \d+: .*perplexity_heldout .*\)", ar["state"]
    )

    # --preview: a pipeline from where the run stands, without touching it: the paused AR's best
    # evaluation, or without one its last checkpoint's EMA weights (stored in fp16, as the recipe's).
    checkpoints = out / "ar" / "checkpoints"
    checkpoint = checkpoints / (checkpoints / "latest").read_text().strip()
    kept = {
        "best": out / "ar" / "best" / "diffusion_pytorch_model.safetensors",
        "checkpoint": checkpoint / "ema.safetensors",
    }
    for source, weights in kept.items():
        expected = load_file(weights)
        if source == "checkpoint":
            shutil.move(out / "ar" / "best", tmp_path / "best")
        files = sorted(out.rglob("*"))
        preview = tmp_path / f"preview-{source}"
        assert cli.main(["recipe", "smoke", "--out", str(out), "--preview", str(preview)]) == 0
        assert sorted(out.rglob("*")) == files
        ar = ARLONPipeline.from_pretrained(preview).ar.state_dict()
        assert ar.keys() == expected.keys()
        assert all(torch.equal(ar[k].half(), expected[k].half()) for k in ar), source
    ema = (checkpoint / "ema.safetensors").read_bytes()
    (checkpoint / "ema.safetensors").write_bytes(ema[:100])  # a damaged checkpoint: one line
    assert cli.main(["recipe", "smoke", "--out", str(out), "--preview", str(preview)]) == 2
    assert f"cannot preview {checkpoint}: ema.safetensors: " in capsys.readouterr().err
    (checkpoint / "ema.safetensors").write_bytes(ema)
    shutil.move(checkpoints, tmp_path / "checkpoints")
    assert cli.main(["recipe", "smoke", "--out", str(out), "--preview", str(preview)]) == 2
    assert "stage 'ar' has no checkpoint yet" in capsys.readouterr().err
    shutil.move(tmp_path / "checkpoints", checkpoints)
    shutil.move(tmp_path / "best", out / "ar" / "best")

    # A stage trained over several sessions is timed whole: the minutes of every process that
    # trained it, kept in its checkpoints, not only those of the process that finished it.
    state_file = checkpoints / (checkpoints / "latest").read_text().strip() / "state.json"
    state = json.loads(state_file.read_text())
    state["progress"]["seconds"] += 600  # as if the paused process had trained for ten minutes
    state_file.write_text(json.dumps(state))
    assert cli.main([*paused, "--set", "ar.max_steps=50", "ar.max_minutes="]) == 0
    assert "resumed with another setting: max_minutes: 0.001 -> None" in capsys.readouterr().out
    assert 10 < json.loads((out / "ar" / "done.json").read_text())["minutes"] < 12

    # --embedded-ar: the AR starts from the embedded AR's tensors that fit it (here a stand-in on a
    # 5x5 token grid: its code-cell table starts fresh); none fit the smoke AR of the real one.
    torch.manual_seed(0)
    ar_transformer("smoke", frame_height=5, frame_width=5).save_pretrained(tmp_path / "grid5")
    embedded = arlon.weights.embedded
    for source, code in [(tmp_path / "grid5", 0), (embedded("ar"), 2)]:
        shutil.rmtree(out / "ar")
        monkeypatch.setattr(arlon.weights, "embedded", lambda name, s=source: s)
        capsys.readouterr()
        assert cli.main([*paused, "--embedded-ar", "--set", "ar.max_steps=2"]) == code
        printed = capsys.readouterr()
        if code == 0:
            started = next(line for line in printed.out.splitlines() if "started from" in line)
            assert started.startswith(f"started from {source}; fresh: ")
            fresh = set(started.split("fresh: ")[1].split(", "))
            assert {"code_embedder.weight", "cell_embedder.weight", "head.weight"} <= fresh
            assert not any(name.startswith("blocks.") for name in fresh)
        else:
            assert "of the parameters match" in printed.err


def test_thread_shares_split_the_cores_among_the_stages_that_run():
    assert thread_shares(["ar", "dit"], 2) == {"ar": 1, "dit": 1}
    assert thread_shares(["ar"], 2) == {"ar": 2}
    assert thread_shares(["ar", "dit"], 5) == {"ar": 3, "dit": 2}
    assert thread_shares(["ar", "dit", "arlon"], 2) == {"ar": 1, "dit": 1, "arlon": 1}


class _FakeStage:
    """A stage's process in `run_parallel`, run by the test: which stage, on how many threads, and
    the signals it got. It exits as a stage does on SIGTERM (checkpointed, status 143): at once, or,
    `lingering`, once waited for."""

    pids = itertools.count(1000)

    def __init__(self, command, env, **kwargs):
        self.name = command[command.index("--stages") + 1]
        self.threads = int(env["OMP_NUM_THREADS"])
        self.pid, self.returncode, self.signals = next(self.pids), None, []
        self.lingering, self.on_wait = False, None

    def poll(self):
        if self.signals and not self.lingering:
            self.returncode = 128 + self.signals[0]
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)

    def wait(self):
        if self.on_wait is not None:
            self.on_wait()
        self.lingering = False
        return self.poll()


def _finish(out, process, code=0):
    if code == 0:
        (out / process.name).mkdir(exist_ok=True)
        (out / process.name / "done.json").write_text('{"minutes": 0.0}')
    process.returncode = code


@pytest.fixture
def ctrl_c_as_at_a_terminal():
    """SIGINT raises KeyboardInterrupt for the test, as at a terminal, also where the tests run in
    a shell's background job (which starts with SIGINT ignored, and a scheduler leaves it so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_parallel_gives_a_stage_the_cores_the_finished_ones_leave(
    tmp_path, monkeypatch, capsys, ctrl_c_as_at_a_terminal
):
    recipe, out = read_recipe("smoke"), tmp_path / "run"
    for name in ("data", "vae", "cache", "vq", "codes"):
        (out / name).mkdir(parents=True)
        (out / name / "done.json").write_text('{"minutes": 0.0}')
    launched = []

    def popen(command, **kwargs):
        launched.append(_FakeStage(command, **kwargs))
        return launched[-1]

    def running(name):
        alive = (p for p in launched if p.name == name and p.poll() is None and not p.signals)
        return next(alive, None)

    # at each wait of the scheduler the next of these stages ends, once it runs: the baseline,
    # ARLON's DiT, the AR (once resumed), the assembly
    ends, waits = ["dit", "arlon", "ar", "pipeline"], itertools.count()

    def wait(_):
        assert next(waits) < 20, "the scheduler waits on with no stage to end"
        if (process := running(ends[0])) is not None:
            _finish(out, process)
            ends.pop(0)

    monkeypatch.setattr(parallel.subprocess, "Popen", popen)
    monkeypatch.setattr(parallel.time, "sleep", wait)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    assert run_parallel(recipe, "smoke", out, True, []) == out / "pipeline"
    runs = [(p.name, p.threads) for p in launched]
    # the AR beside the DiTs on one core each, then stopped (it checkpoints) and resumed on two
    assert runs == [("ar", 1), ("dit", 1), ("arlon", 1), ("ar", 2), ("pipeline", 2)]
    assert launched[0].signals == [signal.SIGTERM] and launched[3].signals == []
    assert "stage ar resumed with 2 thread(s)" in capsys.readouterr().out

    # a stage that fails stops the others, and says where its output is
    for name in ("ar", "dit", "arlon", "pipeline"):
        shutil.rmtree(out / name)
    launched.clear()
    monkeypatch.setattr(parallel.time, "sleep", lambda _: _finish(out, running("dit"), 1))
    with pytest.raises(ArlonError, match=r"stage 'dit' stopped with exit status 1: see .*dit\.log"):
        run_parallel(recipe, "smoke", out, True, [])
    assert launched[0].name == "ar" and launched[0].signals == [signal.SIGTERM]

    # Ctrl-C, or SIGTERM, to the scheduler: each stage gets one SIGTERM, and a second signal while
    # they checkpoint only says what it waits for; nothing is left running
    for name in ("ar", "dit"):
        shutil.rmtree(out / name, ignore_errors=True)
    launched.clear()

    def ctrl_c(_):
        for process in launched:
            process.lingering = True
        # raised in this thread: handled before the next line (a kill may reach another thread)
        launched[0].on_wait = lambda: signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(parallel.time, "sleep", ctrl_c)
    with pytest.raises(Stopped) as stopped:
        run_parallel(recipe, "smoke", out, True, [])
    assert stopped.value.exit_code == 143 and "--resume continues" in stopped.value.kept
    assert [(p.name, p.signals) for p in launched] == [
        ("ar", [signal.SIGTERM]),
        ("dit", [signal.SIGTERM]),
    ]
    lines = capsys.readouterr().out.splitlines()
    ar, dit = launched
    assert lines[-2:] == [
        "recipe: SIGTERM: stopping every stage",
        f"recipe: waiting for ar (pid {ar.pid}), dit (pid {dit.pid}) to checkpoint",
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers restored


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stage_stops_when_its_scheduler_dies(tmp_path):
    """A stage's process started by `--parallel` gets SIGTERM (it checkpoints) when the scheduler
    is killed outright, and at once when the scheduler is gone before it starts."""
    pid_file = tmp_path / "stage.pid"
    stage = (
        "import os, sys, time\n"
        "from arlon.training.parallel import die_with_parent\n"
        "die_with_parent()\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    scheduler = (
        "import os, subprocess, sys, time\n"
        "env = {**os.environ, 'ARLON_RECIPE_PARENT': str(os.getpid())}\n"
        f"subprocess.Popen([sys.executable, '-c', {stage!r}], env=env)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", scheduler])
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):  # the stage is gone: killed by its SIGTERM (no handler in this script)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the stage outlived its scheduler")
    # a scheduler gone before its stage starts: the stage stops at once
    pid_file.unlink()
    late = subprocess.run(
        [sys.executable, "-c", stage],
        env={**os.environ, "ARLON_RECIPE_PARENT": "1"},
        timeout=60,
    )
    assert late.returncode == -signal.SIGTERM and not pid_file.exists()


def test_parallel_runs_the_ar_beside_the_dits_and_assembles_the_pipeline(tmp_path, capsys):
    out = tmp_path / "recipe"
    first = ["recipe", "smoke", "--out", str(out), "--stages", "data,vae,cache,vq,codes"]
    assert cli.main(first) == 0
    capsys.readouterr()
    assert cli.main(["recipe", "smoke", "--out", str(out), "--resume", "--parallel"]) == 0
    lines = capsys.readouterr().out.splitlines()
    started = [line.split()[2] for line in lines if " started with " in line]
    assert started == ["ar", "dit", "arlon", "pipeline"]
    first_done = next(i for i, line in enumerate(lines) if line.endswith(" done"))
    assert lines.index(next(x for x in lines if "stage dit started" in x)) < first_done
    assert all((out / stage.name / "done.json").is_file() for stage in read_recipe("smoke").stages)
    assert all((out / "logs" / f"{name}.log").stat().st_size > 0 for name in started)
    assert lines[-1] == f"recipe smoke: {out / 'pipeline'}"
    ARLONPipeline.from_pretrained(out / "pipeline")
    again = ["recipe", "smoke", "--out", str(out), "--parallel", "--stages", "ar"]
    assert cli.main(again) == 2
    assert "--parallel runs every stage" in capsys.readouterr().err


def test_a_stage_that_does_not_train_is_timed_over_every_process_that_ran_it(tmp_path, monkeypatch):
    out = tmp_path / "recipe"
    (out / "data").mkdir(parents=True)
    (out / "data" / "minutes.json").write_text('{"minutes": 10}')  # an interrupted process's
    clock = itertools.count(0, 90)  # the recipe's clock: 90 s between readings
    monkeypatch.setattr(recipe_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert cli.main(["recipe", "smoke", "--out", str(out), "--resume", "--stages", "data"]) == 0
    assert json.loads((out / "data" / "done.json").read_text())["minutes"] == 10 + 1.5
    assert not (out / "data" / "minutes.json").exists()  # the record holds them now


def test_dry_run_lists_every_stage_with_its_budget(tmp_path, capsys):
    argv = ["recipe", "shapes-tiny", "--out", str(tmp_path / "r"), "--dry-run", "--json"]
    sets = ["--set", "ar.max_steps=123", "ar.lr=5e-4", "--set", "dit.max_steps=45"]
    assert cli.main([*argv, *sets]) == 0  # a repeated --set adds to the first
    rows = json.loads(capsys.readouterr().out)["stages"]
    assert [r["stage"] for r in rows] == [
        "data",
        "vae",
        "cache",
        "vq",
        "codes",
        "ar",
        "dit",
        "arlon",
        "pipeline",
    ]
    ar = next(r for r in rows if r["stage"] == "ar")
    assert ar["budget"] == "ar shapes-tiny-coarse, 123 steps" and ar["state"] == "to do"
    assert next(r for r in rows if r["stage"] == "dit")["budget"] == "dit shapes-tiny, 45 steps"
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    recipe = read_recipe("shapes-tiny", ["ar.lr=5e-4"])
    assert recipe.stage("ar").settings["set"]["lr"] == 5e-4


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages:\n  a: {kind: bake}\n", "needs a kind"),
        (
            "stages:\n  a: {kind: codes, cache: b, vq: b}\n  b: {kind: dataset}\n",
            "not a stage before",
        ),
        ("stages:\n  a: {kind: train, stage: ar}\n", "needs 'stage' and 'preset'"),
        ("stages:\n  a: {kind: dataset}\n  b: {kind: codes, cache: a}\n", "needs 'cache' and 'vq'"),
        (
            "stages:\n  d: {kind: dataset}\n"
            "  a: {kind: assemble, ar: d, vq: d, dit: d, vae: d, float16: [ar, baseline]}\n",
            r"stores \['baseline'\] in float16, which are not its components",
        ),
        ("stages: [1, 2]\n", "a recipe is a mapping"),
        ("stages: {a: [\n", "not valid YAML"),
    ],
)
def test_a_malformed_recipe_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ArlonError, match=message):
        read_recipe(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "no recipe 'nope'"),
        (["smoke", "--stages", "bake"], "no stage 'bake'"),
        (["smoke", "--stages", "dit"], "reads 'cache', which is not finished"),
        (["smoke", "--set", "max_steps=3"], "STAGE.KEY=VALUE"),
        (["smoke", "--stages", ","], "--stages names no stage"),
        (["smoke", "--json"], "--json prints the plan of --dry-run"),
        (["smoke", "--resume"], "nothing to resume in"),
        (["smoke", "--set", "ar.lr=nan"], "stage 'ar': lr must be a positive number, got nan"),
        (["smoke", "--dry-run", "--set", "ar.max_steps=abc"], "stage 'ar': max_steps must be int"),
    ],
)
def test_recipe_mistakes_are_one_line(tmp_path, capsys, args, message):
    assert cli.main(["recipe", *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", ["", "{not json", "[]", "{}", '{"minutes": "x"}'])
def test_a_damaged_done_record_is_a_one_line_error(tmp_path, capsys, content):
    out = tmp_path / "r"
    (out / "data").mkdir(parents=True)
    (out / "data" / "done.json").write_text(content)
    for extra in (["--dry-run"], ["--resume"]):
        assert cli.main(["recipe", "smoke", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "data/done.json is damaged: remove it" in err and err.count("\n") == 1
    (out / "data" / "done.json").unlink()
    assert cli.main(["recipe", "smoke", "--out", str(out / "data" / "x"), "--dry-run"]) == 0
    capsys.readouterr()
    (out / "file").write_text("")
    assert cli.main(["recipe", "smoke", "--out", str(out / "file"), "--dry-run"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_the_same_recipe_command_runs_under_accelerate_launch(tmp_path):
    """Two processes (DDP on gloo, as `accelerate launch` runs them on GPUs): every training stage
    trains on both, the other stages run once, and the pipeline generates."""
    with socket.socket() as probe:  # a free port, not accelerate's fixed 29500
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    launch += ["2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", port]
    out = tmp_path / "recipe"
    command = [*launch, "-m", "arlon.cli", "recipe", "smoke", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("recipe: stage data done") == 1  # the main process reports
    assert result.stdout.count(f"recipe smoke: {out / 'pipeline'}") == 1
    for name in ("vae", "vq", "ar", "dit", "arlon"):
        latest = (out / name / "checkpoints" / "latest").read_text().strip()
        state = json.loads((out / name / "checkpoints" / latest / "state.json").read_text())
        assert state["processes"] == 2, name
    assert len(list((out / "data").glob("*/*.mp4"))) == 6 + 2  # written once: 6 clips, 2 episodes
    video = tmp_path / "story.mp4"
    generate = ["generate", "a red ball moves right", "--model", str(out / "pipeline")]
    assert cli.main([*generate, "--frames", "9", "-o", str(video)]) == 0

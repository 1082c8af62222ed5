"""The shared trainer: exact resume after SIGKILL, two processes under accelerate, configs, errors."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arlon import cli
from arlon.errors import ArlonError
from arlon.models.video_vae import VideoVAE
from arlon.training import trainer
from arlon.training.checkpoint import BestWeights
from arlon.training.config import TrainConfig
from arlon.training.presets import train_config
from arlon.training.stages import stage
from arlon.training.trainer import train, training_precision
from arlon.utils import hold_lock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "arlon.cli",
        "train",
        "vae",
        "--preset",
        "smoke",
        "--out",
        str(out),
        *extra,
    ]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "diffusion_pytorch_model.safetensors"))


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    settings = ["--max-steps", "30", "--set", "checkpoint_every=2"]
    straight = tmp_path / "straight"  # one thread each: beside the run to be killed
    uninterrupted = subprocess.Popen(
        _train_cmd(straight, *settings), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_cmd(killed, *settings), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pointer = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not (pointer.exists() and pointer.read_text().strip() >= "step_0000006"):
        assert process.poll() is None and time.monotonic() < deadline, (
            "the run ended before it could be killed"
        )
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "model").exists()

    subprocess.run(_train_cmd(killed, "--resume"), check=True, env=ENV, capture_output=True)
    _, errors = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, errors.decode()[-4000:]
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_processes_under_accelerate_train_resume_and_save_a_loadable_model(tmp_path):
    # accelerate's torchrun launcher; with no GPU visible it runs DDP on gloo (with --cpu,
    # `accelerate launch` would start a single process).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    launch += ["2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]

    def run(out: Path, *extra: str) -> None:
        # The same training command, run as a module under the launcher.
        command = launch + _train_cmd(out, *extra)[1:]
        env = {**ENV, "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        # the processes' own errors come before the launcher's summary: keep both
        assert result.returncode == 0, result.stderr[-8000:]

    out = tmp_path / "ddp"
    run(out, "--max-steps", "4", "--set", "checkpoint_every=2")
    model = VideoVAE.from_pretrained(out / "model")
    video = torch.zeros(1, 3, 5, 64, 64)
    assert model.decode(model.encode(video)).shape == video.shape
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    checkpoint = out / "checkpoints" / "step_0000004"
    assert json.loads((checkpoint / "state.json").read_text())["processes"] == 2
    assert {p.name for p in checkpoint.glob("rng_*")} == {"rng_0.safetensors", "rng_1.safetensors"}

    # Rewound to its first checkpoint, as a kill would leave it, it resumes to the same weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "checkpoints" / "latest").write_text("step_0000002")
    run(resumed, "--resume")
    a, b = _weights(out), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_interrupt_saves_a_checkpoint_and_resume_refuses_to_overwrite(tmp_path, monkeypatch):
    calls = [0]
    vae_stage = stage("vae")
    real_loss = vae_stage.loss

    def loss(*args):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(vae_stage, "loss", loss)
    cfg = train_config("vae", "smoke")
    with pytest.raises(KeyboardInterrupt):
        train(vae_stage, cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    with pytest.raises(ArlonError, match="--resume"):
        train(stage("vae"), cfg, tmp_path)


def test_config_round_trip_and_errors(tmp_path):
    cfg = train_config("vae", "shapes-tiny")
    cfg.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == cfg
    assert cfg.override(["lr=1e-4", "data.num_frames=5"]).data["num_frames"] == 5
    assert cfg.override(["mixed_precision=no"]).mixed_precision == "no"  # not YAML 1.1's False
    assert cfg.override(["data.train_backbone=true"]).data["train_backbone"] is True
    with pytest.raises(ArlonError, match="unknown config key"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1})
    with pytest.raises(ArlonError, match="mixed_precision"):
        cfg.override(["mixed_precision=fp8"])
    with pytest.raises(ArlonError, match="positive"):
        cfg.override(["batch_size=0"])


def test_auto_precision_is_bf16_only_where_the_hardware_multiplies_it(monkeypatch):
    # emulated bf16 (AVX2) made a step of the recipe's AR 15 times slower than float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(trainer, "native_bf16", lambda native=native: native)
        assert training_precision("auto") == expected
        assert training_precision("bf16") == "bf16" and training_precision("no") == "no"
    assert train_config("ar", "shapes-tiny").mixed_precision == "auto"
    assert train_config("ar", "opensora-1.2").mixed_precision == "bf16"  # GPUs: bf16 as asked


def test_merged_replaces_settings_and_merges_data_and_model():
    cfg = train_config("vae", "smoke")
    new = cfg.merged(data={"cache": "x"}, model={"latent_channels": 8}, max_steps=5)
    assert new.max_steps == 5 and new.data == {**cfg.data, "cache": "x"}
    assert new.model == {"latent_channels": 8}
    assert cfg.max_steps == 20 and "cache" not in cfg.data  # a copy: the original is untouched
    again = new.merged(model={"channels": [8, 8]})
    assert again.model == {"latent_channels": 8, "channels": [8, 8]}
    assert cfg.merged(betas=[0.8, 0.9]).betas == (0.8, 0.9)
    with pytest.raises(ArlonError, match="unknown config key"):
        cfg.merged(colour="red")
    with pytest.raises(ArlonError, match="positive"):
        cfg.merged(batch_size=0)
    with pytest.raises(ArlonError, match="data must be dict"):
        cfg.merged(data="x")
    with pytest.raises(ArlonError, match="betas must be two numbers"):
        cfg.merged(betas="ab")
    for bad, message in [
        ("lr=inf", "lr must be a positive number, got inf"),
        ("grad_clip=0", "grad_clip must be a positive number"),
        ("ema_decay=1", r"ema_decay must be in \[0, 1\)"),
        ("min_lr_ratio=2", r"min_lr_ratio must be in \[0, 1\]"),
        ("betas=[0.9, 1.0]", r"betas must lie in \[0, 1\)"),
        ("max_minutes=0", "max_minutes must be positive"),
    ]:  # torch would take some and train on nan, or fail with a traceback
        with pytest.raises(ArlonError, match=message):
            cfg.override([bad])


@pytest.mark.parametrize(
    "content,message",
    [
        (random.Random(0).randbytes(200), "is damaged: it is not UTF-8 text"),
        (b"- stage\n- vae\n", "is damaged: it holds the list ['stage', 'vae'], not a mapping"),
        (b"42\n", "is damaged: it holds the int 42, not a mapping"),
        (b"", "is damaged: it holds nothing"),
        (b"stage: [vae\n", "is damaged: expected ',' or ']'"),
        (b"\x00\x01", "is damaged: unacceptable character"),
        (b"stage: vae\nlr: -1\n", "is damaged: lr must be a positive number"),
        (b"stage: vae\nlr: .nan\n", "is damaged: lr must be a positive number, got nan"),
        (b"stage: vae\n3: x\ncolour: red\n", "is damaged: unknown config key(s) 3, colour"),
    ],
)
def test_a_damaged_config_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ArlonError) as e:
        TrainConfig.load(path)
    assert str(e.value).startswith(f"config {path} ") and message in str(e.value)
    assert "\n" not in str(e.value)
    # `arlon train --resume` reads the run's own config first
    assert cli.main(["train", "vae", "--out", str(path.parent), "--resume"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "vae", "--preset", "huge"], "unknown preset"),
        (["train", "gan", "--preset", "smoke"], "invalid choice: 'gan'"),
        (["train", "vae", "--preset", "smoke", "--set", "colour=red"], "unknown config key"),
        (["train", "vae", "--preset", "smoke", "--set", "model.chanels=[8]"], "no setting chanels"),
        (["train", "vae", "--preset", "smoke", "--resume"], "nothing to resume"),
    ],
)
def test_train_cli_errors(tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "run").write_text("")
    argv = ["train", "vae", "--preset", "smoke", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert "is a file" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "vae",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--max-steps",
                "2",
                "--set",
                "checkpoint_every=1",
            ]
        )
        == 0
    )
    for f in (out / "checkpoints").glob("step_*/model.safetensors"):
        f.write_bytes(b"garbage")
    assert (
        cli.main(
            ["train", "vae", "--preset", "smoke", "--out", str(out), "--resume", "--max-steps", "3"]
        )
        == 2
    )
    assert "cannot resume" in capsys.readouterr().err


def test_init_from_starts_at_the_given_weights(tmp_path, capsys):
    torch.manual_seed(5)
    start = VideoVAE(latent_channels=4, channels=(8, 16, 16, 16))  # the smoke preset's sizes
    start.save_pretrained(tmp_path / "start")
    argv = ["train", "vae", "--preset", "smoke", "--init-from", str(tmp_path / "start")]
    # one step at a vanishing learning rate: the run ends where it started
    assert (
        cli.main([*argv, "--out", str(tmp_path / "a"), "--max-steps", "1", "--set", "lr=1e-12"])
        == 0
    )
    trained = _weights(tmp_path / "a")
    for name, value in start.state_dict().items():
        assert torch.allclose(trained[name], value, atol=1e-6), name
    VideoVAE(latent_channels=8, channels=(8, 16, 16, 16)).save_pretrained(tmp_path / "other")
    argv = ["train", "vae", "--preset", "smoke", "--init-from", str(tmp_path / "other")]
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 2
    assert "another architecture" in capsys.readouterr().err


def test_init_partial_keeps_the_blocks_of_an_ar_on_another_token_grid(tmp_path):
    """`init_partial`: a coarse AR (2x2 codes of 32) starts from a fine AR's transformer (4x4 codes
    of 64): the tensors whose name and shape match are copied, the code and cell tables and the
    head start fresh."""
    from arlon.models.ar_transformer import ar_transformer
    from arlon.training.checkpoint import load_initial_weights

    torch.manual_seed(0)
    fine = ar_transformer("smoke", frame_height=4, frame_width=4)
    fine.save_pretrained(tmp_path / "fine")
    torch.manual_seed(1)
    coarse = ar_transformer(
        "smoke"
    )  # the same codebook size: its codes are another VQ's all the same
    before = {k: v.clone() for k, v in coarse.state_dict().items()}
    assert load_initial_weights(coarse, tmp_path / "fine", partial=True) == ["cell_embedder.weight"]
    own = stage("ar").OWN_TENSORS
    fresh = load_initial_weights(coarse, tmp_path / "fine", partial=True, own=own)
    assert sorted(fresh) == ["cell_embedder.weight", "code_embedder.weight", "head.weight"]
    theirs = fine.state_dict()
    for name, value in coarse.state_dict().items():
        if name not in fresh:
            assert torch.equal(value, theirs[name]), name
    assert torch.equal(coarse.cell_embedder.weight, before["cell_embedder.weight"])
    with pytest.raises(ArlonError, match="another architecture"):
        load_initial_weights(coarse, tmp_path / "fine")
    ar_transformer("smoke", hidden_size=48).save_pretrained(tmp_path / "wide")
    with pytest.raises(ArlonError, match="0% of the parameters match"):
        load_initial_weights(coarse, tmp_path / "wide", partial=True)
    assert train_config("ar", "smoke", init_partial=True).init_partial is True
    with pytest.raises(ArlonError, match="init_partial must be bool"):
        train_config("ar", "smoke", init_partial="yes")


def test_eval_every_minus_one_never_evaluates(tmp_path):
    """What `arlon bench` relies on to time training steps alone."""
    cfg = train_config("vae", "smoke", max_steps=2, log_every=1, eval_every=-1)
    train(stage("vae"), cfg, tmp_path / "never")
    assert not (tmp_path / "never" / "eval.csv").exists()
    assert len((tmp_path / "never" / "train.csv").read_text().splitlines()) == 3
    train(stage("vae"), train_config("vae", "smoke", max_steps=2), tmp_path / "at-end")
    assert (tmp_path / "at-end" / "eval.csv").read_text().splitlines()[1].startswith("2,")


def test_a_run_refused_for_want_of_data_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "ar", "--preset", "smoke", "--out", str(out)]) == 2
    assert "latent cache" in capsys.readouterr().err and not out.exists()


class _Scripted(type(stage("vae"))):
    """The smoke VAE stage whose held-out loss is scripted, one value per evaluation."""

    HELDOUT = {"loss_heldout": "min"}

    def __init__(self, values):
        self.values = iter(values)

    def evaluate(self, model, cfg):
        return {"loss_heldout": next(self.values)}


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    held = hold_lock(out)  # as another process training it holds it
    cfg = train_config("vae", "smoke", max_steps=2, eval_every=-1)
    with pytest.raises(ArlonError, match="another process is working in"):
        train(stage("vae"), cfg, out)
    assert not (out / "config.yaml").exists()  # refused before writing anything
    held.close()
    train(stage("vae"), cfg, out)
    train(stage("vae"), cfg, out, resume=True)  # the lock went with the run that held it


def test_a_best_kept_by_another_metric_is_replaced_and_a_later_one_forgotten(tmp_path):
    """A run resumed with another keep_best metric does not compare its values with the kept
    best's; a best from after the checkpoint a run resumes from goes, whatever the metric."""
    folder = tmp_path / "best"

    def export(path):
        path.mkdir()

    BestWeights(folder, "loss_heldout", True).offer(2, {"loss_heldout": 0.1}, export)
    BestWeights(folder, "psnr_heldout", False).offer(4, {"psnr_heldout": 0.05}, export)
    record = {"step": 4, "metric": "psnr_heldout", "value": 0.05}
    assert json.loads((folder / "best.json").read_text()) == record
    BestWeights(folder, None, False).forget_after(4)
    assert folder.exists()
    BestWeights(folder, None, False).forget_after(3)
    assert not folder.exists()
    BestWeights(folder, None, False).offer(5, {"loss_heldout": 0.0}, export)  # no keep_best
    assert not folder.exists()


def test_keep_best_exports_the_weights_of_the_best_evaluation(tmp_path, capsys):
    # a constant learning rate, so that the weights at step 4 do not depend on the budget
    settings = dict(
        eval_every=2, checkpoint_every=2, keep_checkpoints=3, warmup_steps=0, min_lr_ratio=1
    )
    at_4 = train(
        stage("vae"), train_config("vae", "smoke", max_steps=4, **settings), tmp_path / "4"
    )
    cfg = train_config("vae", "smoke", max_steps=6, keep_best="loss_heldout", **settings)
    out = tmp_path / "best"
    train(_Scripted([3.0, 1.0, 2.0]), cfg, out)  # evaluations at steps 2, 4 and 6
    assert json.loads((out / "best" / "best.json").read_text()) == {
        "step": 4,
        "metric": "loss_heldout",
        "value": 1.0,
    }
    assert not (out / "model" / "best.json").exists()  # the model folder is the model alone
    assert "the weights of step 4" in capsys.readouterr().out
    kept, expected = _weights(out), load_file(str(at_4 / "diffusion_pytorch_model.safetensors"))
    assert kept.keys() == expected.keys() and all(torch.equal(kept[k], expected[k]) for k in kept)

    # Resumed from step 2, the run forgets the best of step 4 and finds it again.
    shutil.rmtree(out / "checkpoints" / "step_0000006")
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    (out / "checkpoints" / "latest").write_text("step_0000002\n")
    train(_Scripted([1.5, 2.0]), cfg, out, resume=True)  # now step 4 scores 1.5
    assert json.loads((out / "best" / "best.json").read_text())["value"] == 1.5
    assert all(torch.equal(v, _weights(out)[k]) for k, v in kept.items())

    # Killed between the two renames that put a new best in place: the last best stands, with its
    # own record, and a worse evaluation does not replace it.
    os.replace(out / "best", out / "best.old")
    shutil.rmtree(out / "model")
    train(_Scripted([1.7]), cfg, out, resume=True)  # at step 6: its last evaluation again
    assert json.loads((out / "best" / "best.json").read_text())["value"] == 1.5
    assert not (out / "best.old").exists()
    assert all(torch.equal(v, _weights(out)[k]) for k, v in kept.items())

    # A run whose record lay beside its folder (before 2026-12-06) resumes with its best.
    os.replace(out / "best" / "best.json", out / "best.json")
    train(_Scripted([1.6]), cfg, out, resume=True)
    assert json.loads((out / "best" / "best.json").read_text())["value"] == 1.5
    assert not (out / "best.json").exists()

    with pytest.raises(ArlonError, match="reports psnr_heldout, not 'perplexity_heldout'"):
        train(
            stage("vae"),
            train_config("vae", "smoke", keep_best="perplexity_heldout"),
            tmp_path / "x",
        )
    assert not (tmp_path / "x").exists()

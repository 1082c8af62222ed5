"""Resuming a run: plain files only (no pickle is ever loaded), exact, one-line errors when damaged."""

from __future__ import annotations

import json
import pickle
import random
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from arlon import cli
from arlon.errors import ArlonError, Stopped
from arlon.training.checkpoint import latest_checkpoint, publish
from arlon.training.presets import train_config
from arlon.training.stages import stage
from arlon.training.trainer import train


def _cfg(**changes):
    settings = dict(max_steps=6, checkpoint_every=2, keep_checkpoints=3, eval_every=-1)
    return train_config("vae", "smoke", **{**settings, **changes})


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = (load_file(str(p / "model" / "diffusion_pytorch_model.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of six steps, checkpointed at 2, 4 and 6."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(stage("vae"), _cfg(), out)
    return out


def _rewound(run: Path, to: Path, step: int = 2) -> Path:
    """A copy of a finished run as a kill right after the checkpoint of `step` leaves it."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "model")
    for folder in (to / "checkpoints").glob("step_*"):
        if int(folder.name[5:]) > step:
            shutil.rmtree(folder)
    (to / "checkpoints" / "latest").write_text(f"step_{step:07d}")
    return to


class _Payload:
    """Unpickling this creates `marker`: what a planted pickle could do to the machine."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_the_planted_payload_is_live(tmp_path):
    pickle.loads(pickle.dumps(_Payload(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()


def test_checkpoints_are_plain_files_and_old_ones_are_pruned(tmp_path):
    cfg = _cfg(max_steps=3, checkpoint_every=1, keep_checkpoints=2)
    root = tmp_path / "run" / "checkpoints"
    (root / "step_0000099.tmp").mkdir(parents=True)  # as a run killed mid-write leaves it
    train(stage("vae"), cfg, tmp_path / "run")
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002", "step_0000003"]
    assert (root / "latest").read_text() == "step_0000003"
    files = sorted(p.name for p in (root / "step_0000003").iterdir())
    assert files == [
        "ema.safetensors",
        "model.safetensors",
        "optimizer.pt",
        "rng_0.safetensors",
        "state.json",
    ]
    state = json.loads((root / "step_0000003" / "state.json").read_text())
    progress = state["progress"]
    assert (progress["step"], progress["position"]) == (3, 3 * cfg.batch_size)
    earlier = json.loads((root / "step_0000002" / "state.json").read_text())["progress"]
    assert progress["seconds"] > earlier["seconds"] > 0  # the time trained so far
    assert state["processes"] == 1 and state["ema_updates"] == 3


def test_resume_never_unpickles_and_is_exact(straight, tmp_path, monkeypatch):
    out = _rewound(straight, tmp_path / "run")
    marker = tmp_path / "marker"
    planted = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"]
    for name in planted:
        (out / "checkpoints" / "step_0000002" / name).write_bytes(
            pickle.dumps(_Payload(marker), protocol=2)
        )
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    def no_pickle(*args, **kwargs):
        raise AssertionError("resume unpickled something")

    monkeypatch.setattr(torch, "load", load)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    train(stage("vae"), _cfg(), out, resume=True)
    assert not marker.exists()
    assert calls == [True]  # the optimiser's state, through torch's weights-only loader
    _assert_same_weights(straight, out)


def test_a_pickle_in_place_of_a_state_file_is_refused(straight, tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    out = _rewound(straight, tmp_path / "planted")
    (out / "checkpoints" / "step_0000002" / "optimizer.pt").write_bytes(payload)
    with pytest.raises(ArlonError, match="cannot resume from .*optimizer.pt: "):
        train(stage("vae"), _cfg(), out, resume=True)
    # A folder in the layout of Accelerate's save_state, which loaded its pickles.
    old = _rewound(straight, tmp_path / "old")
    folder = old / "checkpoints" / "step_0000002"
    for f in folder.iterdir():
        f.unlink()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (folder / name).write_bytes(payload)
    with pytest.raises(ArlonError, match="older ARLON's pickled checkpoint"):
        train(stage("vae"), _cfg(), old, resume=True)
    assert not marker.exists()


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(5000))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shape_weight(path: Path) -> None:
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    save_file({**tensors, name: torch.zeros(3)}, str(path))


def _wrong_shape_optimizer_state(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["state"][0]["exp_avg"] = torch.zeros(3)
    torch.save(state, path)


def _wrong_shape_rng(path: Path) -> None:
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:  # keep the metadata: only the tensor is wrong
        metadata = f.metadata()
    save_file({**tensors, "torch": tensors["torch"][:100]}, str(path), metadata)


def _edit_state(**changes):
    def edit(path: Path) -> None:
        state = json.loads(path.read_text())
        path.write_text(json.dumps({**state, **changes}))

    return edit


@pytest.mark.parametrize(
    "name,damage,message",
    [
        ("rng_0.safetensors", _random_bytes, "rng_0.safetensors: "),
        ("rng_0.safetensors", Path.unlink, "rng_0.safetensors is missing"),
        ("rng_0.safetensors", _wrong_shape_rng, "rng_0.safetensors: "),
        ("optimizer.pt", _truncate, "optimizer.pt: "),
        ("optimizer.pt", _wrong_shape_optimizer_state, "optimizer.pt: exp_avg of parameter 0"),
        ("model.safetensors", _wrong_shape_weight, "model.safetensors: .*size mismatch"),
        ("ema.safetensors", _truncate, "ema.safetensors: "),
        ("ema.safetensors", Path.unlink, "ema.safetensors is missing"),
        ("state.json", _random_bytes, "state.json: "),
        (
            "state.json",
            _edit_state(progress={"step": 5, "position": 10}),
            "state.json: the LR scheduler is at step 2",
        ),
        ("state.json", _edit_state(processes=2), r"state.json: written by 2 process\(es\), not 1"),
    ],
)
def test_a_damaged_state_file_is_a_one_line_error(straight, tmp_path, name, damage, message):
    out = _rewound(straight, tmp_path / "run")
    damage(out / "checkpoints" / "step_0000002" / name)
    with pytest.raises(ArlonError, match=f"cannot resume from .*step_0000002: {message}") as e:
        train(stage("vae"), _cfg(), out, resume=True)
    assert "\n" not in str(e.value)


def test_ctrl_c_saves_the_step_it_was_in_and_resumes_exactly(straight, tmp_path, monkeypatch):
    vae, calls = stage("vae"), [0]
    real_loss = vae.loss

    def loss(*args):  # Ctrl-C in the fourth step, after its batch and its forward pass's noise
        calls[0] += 1
        result = real_loss(*args)
        if calls[0] == 4:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(vae, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        train(vae, _cfg(), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_0000003"
    train(stage("vae"), _cfg(), tmp_path / "run", resume=True)
    _assert_same_weights(straight, tmp_path / "run")


@pytest.mark.parametrize(
    "signum, times, latest",
    [(signal.SIGTERM, 1, 3), (signal.SIGINT, 1, 3), (signal.SIGTERM, 2, 2)],
)
def test_a_signal_lets_the_step_finish_and_a_second_stops_at_once(
    straight, tmp_path, signum, times, latest, monkeypatch
):
    """SIGTERM (as a job scheduler sends) or Ctrl-C in the third step: it finishes, is
    checkpointed, and the run stops; twice, it stops at once, the step not taken. Either way
    --resume ends with the uninterrupted run's weights."""
    vae, calls = stage("vae"), [0]
    real_loss = vae.loss

    def loss(*args):
        calls[0] += 1
        if calls[0] == 3:
            # raised in this thread: handled at once (a kill may reach another thread)
            for _ in range(times):
                signal.raise_signal(signum)
        return real_loss(*args)

    monkeypatch.setattr(vae, "loss", loss)
    # (a shell's background job starts with SIGINT ignored: what was there is what comes back)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Stopped) as stopped:
        train(vae, _cfg(), tmp_path / "run")
    assert stopped.value.exit_code == 128 + signum
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == f"step_{latest:07d}"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers restored
    train(stage("vae"), _cfg(), tmp_path / "run", resume=True)
    _assert_same_weights(straight, tmp_path / "run")


def test_the_latest_checkpoint_is_never_removed_to_write_its_step_again(tmp_path):
    """A stop as a checkpoint finishes may write its step again: the one `latest` names stays."""
    root = tmp_path / "checkpoints"
    for name in ("step_0000002", "step_0000002.tmp"):
        (root / name).mkdir(parents=True)
        (root / name / "state.json").write_text(name)
    (root / "latest").write_text("step_0000002")
    publish(root / "step_0000002.tmp", root / "step_0000002", keep=2)
    assert (root / "step_0000002" / "state.json").read_text() == "step_0000002"
    assert not (root / "step_0000002.tmp").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (random.Random(1).randbytes(64), "is damaged: it is not the name of a checkpoint"),
        (b"../../etc", "is damaged: it names '../../etc'"),
        (b"step_0000009", "names step_0000009, which is missing"),
    ],
)
def test_a_damaged_latest_pointer_is_a_one_line_error(tmp_path, capsys, content, message):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_bytes(content)
    with pytest.raises(ArlonError, match="checkpoints/latest"):
        latest_checkpoint(tmp_path / "run")
    argv = ["train", "vae", "--preset", "smoke", "--out", str(tmp_path / "run"), "--resume"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoints/latest" in err and message in err and err.count("\n") == 1

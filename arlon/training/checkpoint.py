"""Checkpoint folders as plain files: weights and RNG states as safetensors, counters as JSON,
the optimizer through torch's weights-only loader; and a run's starting weights from a model folder
(`init_from`). Nothing here unpickles; every damaged or missing file is a one-line `ArlonError` that
names it. The layout is in `arlon.training.trainer`'s docstring.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from arlon.errors import ArlonError

CHECKPOINT_FORMAT = 1
BEST_RECORD = "best.json"  # in a run's best/: the step and the value of the weights kept
CHECKPOINT_NAME = re.compile(r"step_(\d{7,})")


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint folder `out/checkpoints/latest` names; None when the run has none yet."""
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ArlonError(f"{pointer} is damaged: it is not the name of a checkpoint") from None
    if not CHECKPOINT_NAME.fullmatch(name):
        raise ArlonError(
            f"{pointer} is damaged: it names {name[:40]!r}, not a checkpoint such as step_0000200"
        )
    folder = pointer.parent / name
    if not folder.is_dir():
        raise ArlonError(f"{pointer} names {name}, which is missing: the run folder is damaged")
    return folder


def checkpoint_to_resume(out: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from (None: a fresh run); never silently overwrites a run."""
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise ArlonError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    if resume and checkpoint is None:
        raise ArlonError(f"nothing to resume in {out}: no checkpoint there")
    return checkpoint


def publish(tmp: Path, folder: Path, keep: int) -> None:
    """Rename a written checkpoint into place, point `latest` at it, then drop the oldest. A step
    `latest` already names keeps its checkpoint (written again when a stop came as it finished)."""
    pointer = folder.parent / "latest"
    if folder.exists():
        if pointer.exists() and pointer.read_text().strip() == folder.name:
            shutil.rmtree(tmp)
            return
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    pointer.with_suffix(".tmp").write_text(folder.name)
    os.replace(pointer.with_suffix(".tmp"), pointer)
    steps = {
        int(match[1]): p
        for p in folder.parent.iterdir()
        if (match := CHECKPOINT_NAME.fullmatch(p.name))
    }
    for step in sorted(steps)[:-keep]:
        if steps[step] != folder:
            shutil.rmtree(steps[step])


@contextmanager
def reading(folder: Path, name: str, purpose: str = "resume from"):
    """Any failure to read or apply checkpoint file `name` is a one-line error that names it (and
    what the reading was for: "cannot resume from FOLDER: ...")."""
    path = folder / name
    if not path.is_file():
        raise ArlonError(f"cannot {purpose} {folder}: {name} is missing")
    try:
        yield path
    except Exception as e:
        text = f"no {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
        text = text or type(e).__name__
        if len(text) > 300:
            text = text[:297] + "..."
        raise ArlonError(f"cannot {purpose} {folder}: {name}: {text}") from None


def gather_sharded(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, dict]:
    """The whole state of an FSDP2-sharded model (and of its optimiser, keyed by parameter name),
    as plain CPU tensors on the main process. Every process must call this: it gathers the
    shards."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(model, options=options)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=options)
    return state


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Shard a checkpoint's whole model and optimiser state (`gather_sharded`'s) back onto an
    FSDP2 model; every process reads the files and keeps its shards."""
    options = StateDictOptions(full_state_dict=True)
    with reading(folder, "model.safetensors") as path:
        set_model_state_dict(model, load_file(str(path)), options=options)
    with reading(folder, "optimizer.pt") as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """AdamW's state through torch's weights-only loader (no arbitrary unpickling), checked
    against the parameters' shapes, which `load_state_dict` does not do."""
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise ValueError(
                    f"{key} of parameter {i} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(p.shape)}"
                )


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: python, numpy, torch's CPU and (on GPU) its device's."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_rng(path: Path, state: dict) -> None:
    """The RNG states as tensors, their few scalars as JSON in the file's metadata."""
    version, words, gauss = state["python"]
    _, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {
        "python": torch.tensor(words, dtype=torch.int64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "torch": state["torch"],
    }
    if "cuda" in state:
        tensors["cuda"] = state["cuda"]
    scalars = {"python": [version, gauss], "numpy": [pos, has_gauss, cached]}
    save_file(tensors, str(path), metadata={"scalars": json.dumps(scalars)})


def load_rng(path: Path) -> dict:
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        scalars = json.loads(f.metadata()["scalars"])
    (version, gauss), (pos, has_gauss, cached) = scalars["python"], scalars["numpy"]
    state = {
        "python": (version, tuple(tensors["python"].tolist()), gauss),
        "numpy": ("MT19937", tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
        "torch": tensors["torch"],
    }
    if "cuda" in tensors:
        state["cuda"] = tensors["cuda"]
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_initial_weights(
    model: torch.nn.Module, folder: Path, partial: bool = False, own: tuple[str, ...] = ()
) -> list[str]:
    """Copy the weights of a saved model folder (the same architecture) into `model`; `partial`:
    only the tensors whose name and shape match, and whose name does not start with one of `own`,
    at least half of `model`'s parameters. Returns the names of the tensors left as they were."""
    try:
        source = type(model).from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ArlonError(f"cannot start from {folder}: {e}") from None
    theirs, ours = source.state_dict(), model.state_dict()
    if partial:
        theirs = {
            k: v
            for k, v in theirs.items()
            if k in ours and v.shape == ours[k].shape and not k.startswith(own)
        }
        share = sum(ours[k].numel() for k in theirs) / sum(v.numel() for v in ours.values())
        if share < 0.5:
            raise ArlonError(f"cannot start from {folder}: {share:.0%} of the parameters match")
    try:
        model.load_state_dict(theirs, strict=not partial)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ArlonError(f"cannot start from {folder}: another architecture ({first})") from None
    return [k for k in ours if k not in theirs]


class BestWeights:
    """`keep_best`'s folder (a run's `best/`): the model of the best evaluation yet, with its step,
    metric and value in `best.json`. A new best is exported beside it and swapped in as one, so a
    kill at any moment leaves a best whose record is its own."""

    def __init__(self, folder: Path, metric: str | None, lower_is_better: bool):
        self.folder, self.metric, self.lower_is_better = folder, metric, lower_is_better
        self.tmp, self.old = folder.with_name("best.tmp"), folder.with_name("best.old")

    def record(self) -> dict | None:
        """The kept weights' step, metric and value (None: none kept yet)."""
        if not self.folder.exists() and self.old.exists():  # killed between offer's two renames
            os.replace(self.old, self.folder)
        legacy = self.folder.parent / BEST_RECORD  # where runs before 2026-12-06 kept it
        if legacy.exists() and self.folder.is_dir() and not (self.folder / BEST_RECORD).exists():
            os.replace(legacy, self.folder / BEST_RECORD)
        path = self.folder / BEST_RECORD
        return json.loads(path.read_text()) if path.exists() else None

    def offer(self, step: int, results: dict, export) -> None:
        """Keep the weights that `export(folder)` writes when `results[metric]` is the best yet
        (no metric: keep none)."""
        if self.metric is None:
            return
        value, best = results[self.metric], self.record()
        better = min if self.lower_is_better else max
        if best is not None and best["metric"] != self.metric:
            best = None  # kept by another metric (the run resumed with another keep_best)
        if best is not None and better(value, best["value"]) == best["value"]:
            return
        for stale in (self.tmp, self.old):
            shutil.rmtree(stale, ignore_errors=True)
        export(self.tmp)
        record = {"step": step, "metric": self.metric, "value": value}
        (self.tmp / BEST_RECORD).write_text(json.dumps(record) + "\n")
        if self.folder.exists():
            os.replace(self.folder, self.old)
        os.replace(self.tmp, self.folder)
        shutil.rmtree(self.old, ignore_errors=True)  # only once the new one is in place

    def forget_after(self, step: int) -> None:
        """A resumed run evaluates again after its checkpoint: a best from later steps is dropped
        (the same steps give the same weights again)."""
        best = self.record()
        if best is not None and best["step"] > step:
            shutil.rmtree(self.folder)

    def copy_to(self, folder: Path) -> None:
        """The kept model, without its record, to `folder` (which must not exist)."""
        shutil.copytree(self.folder, folder, ignore=shutil.ignore_patterns(BEST_RECORD))

"""The one training loop every stage shares, on Hugging Face Accelerate.

    arlon train vae --preset shapes-tiny --out runs/vae                 # one process, CPU or GPU
    accelerate launch --multi_gpu --num_processes 2 -m arlon.cli train vae ...  # DDP, gloo on CPU
    accelerate launch --config_file arlon/training/fsdp.yaml -m arlon.cli train arlon ...  # FSDP2

A stage says what to train (`Stage`: model, data set, loss, evaluation, export); this loop does the
rest: AdamW with warm-up and cosine decay, gradient accumulation and clipping, EMA weights, bf16
autocast, budgets in steps and minutes, progress, CSV (and TensorBoard) logs, and checkpoints that
resume exactly. A checkpoint is a folder of plain files, so resuming never unpickles anything:

    checkpoints/latest                 the name of the newest checkpoint folder, e.g. step_0000200
    checkpoints/step_0000200/
        model.safetensors              the (unwrapped) model's weights
        ema.safetensors                the EMA weights, when EMA is on
        optimizer.pt                   AdamW's state: torch.save, read back with weights_only=True
        state.json                     format, processes, progress (step, data position, seconds
                                       trained), LR scheduler, EMA update count
        rng_0.safetensors, rng_1 ...   each process's RNG (python, numpy, torch, CUDA), one per rank

A checkpoint is written to `step_N.tmp` and renamed into place; `latest` is switched only after
that, so an interrupted run never leaves a broken checkpoint behind. Ctrl-C or SIGTERM lets the
step, evaluation or checkpoint under way finish, checkpoints and stops; a second one stops at once,
and a step cut short is checkpointed as it began. (Without --multi_gpu, `accelerate launch` on a
machine without GPUs starts one process.)

Under FSDP2 (`arlon/training/fsdp.yaml`: full shard, bf16, activation checkpointing of each
model's `_no_split_modules`) checkpoints hold the same whole tensors, gathered from the shards
(the optimiser's state keyed by parameter name), and evaluation and export see a whole copy: the
EMA weights, which stay whole on every process, or the model's gathered onto the main one.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from safetensors.torch import load_model, save_file, save_model
from torch.distributed.tensor import DTensor
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from arlon.errors import ArlonError
from arlon.training.checkpoint import (
    CHECKPOINT_FORMAT,
    BestWeights,
    checkpoint_to_resume,
    gather_sharded,
    load_initial_weights,
    load_optimizer,
    load_rng,
    load_sharded,
    publish,
    reading,
    rng_state,
    save_rng,
    set_rng_state,
)
from arlon.training.config import TrainConfig
from arlon.training.stops import StopRequests
from arlon.utils import hold_lock, native_bf16


class Stage(Protocol):
    """What one stage trains. Data sets are map-style and deterministic per index."""

    def build_model(self, cfg: TrainConfig) -> torch.nn.Module: ...
    def dataset(self, cfg: TrainConfig) -> Dataset: ...
    def loss(
        self, model: torch.nn.Module, batch, cfg: TrainConfig
    ) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self, model: torch.nn.Module, cfg: TrainConfig) -> dict: ...
    def export(self, model: torch.nn.Module, cfg: TrainConfig, folder: Path) -> None: ...

    # each held-out metric `evaluate` reports, and whether "min" or "max" is best (for keep_best)
    HELDOUT: dict[str, str]


@dataclass
class Progress:
    """The loop's position, checkpointed with everything else."""

    step: int = 0
    position: int = 0  # samples drawn from the data order, over all processes
    seconds: float = 0.0  # in the loop, summed over every process that resumed the run

    def state_dict(self) -> dict:
        return {"step": self.step, "position": self.position, "seconds": round(self.seconds, 3)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.position = int(state["step"]), int(state["position"])
        self.seconds = float(state.get("seconds", 0.0))  # checkpoints before 2026-12-05 lack it


class EMA:
    """Exponential moving average of a model's weights (fp32), with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step towards `model`'s weights (FSDP2 shards are gathered first); frozen weights
        stay what they were copied as, which is what they are."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, p in zip(self.model.parameters(), model.parameters(), strict=True):
            if p.requires_grad:
                ema.lerp_(_whole(p.detach()).float(), 1 - decay)
        for ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema.copy_(_whole(b))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _order(position: int, size: int, seed: int) -> int:
    """Index of the data set at global `position`: a fresh seeded permutation each epoch.

    An affine map i -> (a*i + b) mod size with a coprime to size is a permutation that costs nothing
    to evaluate at any position, so resuming needs only the position.
    """
    epoch, i = divmod(position, size)
    rng = np.random.default_rng([seed, epoch])
    while True:
        a = int(rng.integers(1, max(size, 2)))
        if math.gcd(a, size) == 1:
            break
    return (a * i + int(rng.integers(size))) % size


def _lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Log:
    """Rows of scalars appended to a CSV (columns fixed by the first row), and TensorBoard if installed."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled, self.columns = path, enabled, None
        self.tensorboard = None
        if not enabled:
            return
        if path.exists():
            # Rows past the checkpoint we resume from would repeat: drop them.
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.columns = list(rows[0])
            with open(path, "w", newline="") as f:
                if self.columns:
                    writer = csv.DictWriter(f, self.columns)
                    writer.writeheader()
                    writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            pass

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        if self.columns is None:
            self.columns = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(row)
        if self.tensorboard is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tensorboard.add_scalar(f"{self.path.stem}/{k}", v, row["step"])


def train(stage: Stage, cfg: TrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Train `stage` into `out`; returns the exported model folder (`out/model`)."""
    run = _Run(stage, cfg, Path(out), resume)
    try:
        run.loop()
        return run.export()
    finally:
        run.unlock()


class _Run:
    """One training run: the accelerator, the model, its optimiser and all that a checkpoint holds."""

    def __init__(self, stage: Stage, cfg: TrainConfig, out: Path, resume: bool):
        self.stage, self.cfg, self.out = stage, cfg, out
        self.accelerator = _accelerator(cfg)
        self.sharded = self.accelerator.is_fsdp2
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        checkpoint = checkpoint_to_resume(out, resume)
        heldout = getattr(stage, "HELDOUT", {})
        if cfg.keep_best is not None and cfg.keep_best not in heldout:
            raise ArlonError(
                f"keep_best: the {cfg.stage} stage's evaluation reports "
                f"{', '.join(heldout) or 'nothing'}, not {cfg.keep_best!r}"
            )
        set_seed(cfg.seed)
        model = stage.build_model(cfg)
        if cfg.init_from is not None and checkpoint is None:
            own = getattr(stage, "OWN_TENSORS", ())  # read only when partial
            fresh = load_initial_weights(model, Path(cfg.init_from), cfg.init_partial, own)
            if fresh:
                self.accelerator.print(f"started from {cfg.init_from}; fresh: {', '.join(fresh)}")
        self.dataset = stage.dataset(cfg)
        self.lock = None
        if self.main:  # only once the model and the data are there: a refused run leaves nothing
            out.mkdir(parents=True, exist_ok=True)
            self.lock = hold_lock(out)
            if checkpoint is not None and (out / "config.yaml").exists():  # says what changed
                for change in TrainConfig.load(out / "config.yaml").differences(cfg):
                    self.accelerator.print(f"resumed with another setting: {change}")
            cfg.save(out / "config.yaml")
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = EMA(model, cfg.ema_decay)
            self.ema.model.to(self.accelerator.device)  # prepare() moves only the model
        # Under FSDP without EMA, the main process keeps a whole copy to gather the shards into.
        self.whole = None
        if self.sharded and self.ema is None and self.main:
            self.whole = copy.deepcopy(model).to(self.accelerator.device).eval()
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # FSDP replaces the parameters with their shards: clip those.
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.progress = Progress()
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.last_saved = self.progress.step
        self.train_log = _Log(out / "train.csv", self.progress.step, self.main)
        self.eval_log = _Log(out / "eval.csv", self.progress.step, self.main)
        self.best = None
        if self.main:  # a best from after the checkpoint goes, keep_best or not (the export says)
            lower = heldout.get(cfg.keep_best) == "min"
            self.best = BestWeights(out / "best", cfg.keep_best, lower)
            self.best.forget_after(self.progress.step)
        # Where a Ctrl-C finds the loop: "idle" between steps, "step" before the step changes any
        # state (its RNG at the start is in `step_rng`), "update" while it does.
        self.phase, self.step_rng = "idle", None
        self.started = time.monotonic()
        self.counted = self.started  # time before this is in progress.seconds

    def unlock(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def weights(self) -> torch.nn.Module | None:
        """The model to evaluate and export: the EMA weights when there are some, else the model;
        under FSDP its shards gathered into a whole copy on the main process (every process must
        call this; the others get None)."""
        if self.ema is not None:
            return self.ema.model
        if not self.sharded:
            return self.accelerator.unwrap_model(self.model)
        state = gather_sharded(self.model)["model"]
        if self.whole is not None:
            self.whole.load_state_dict(state)
        return self.whole

    def loop(self) -> None:
        """Steps until a budget is spent; the last state is always checkpointed, Ctrl-C and SIGTERM
        included (`StopRequests`)."""
        cfg, progress = self.cfg, self.progress
        bar = tqdm(
            total=cfg.max_steps,
            initial=progress.step,
            desc=f"train {cfg.stage}",
            unit="step",
            disable=not self.main,
        )
        self.model.train()
        self.counted = time.monotonic()  # the loop's time up to here is in progress.seconds
        with StopRequests(self.accelerator) as stop:
            try:
                while progress.step < cfg.max_steps and not self.out_of_time():
                    self.advance(bar)
                    if stop.requested():
                        raise stop.error()
            except KeyboardInterrupt:
                self.save_on_interrupt()
                raise
            finally:
                bar.close()
            if progress.step > self.last_saved:
                self.save_checkpoint()
            if cfg.eval_every >= 0:
                self.evaluate()

    def advance(self, bar: tqdm) -> None:
        """One step, with its log row, evaluation and checkpoint when they are due."""
        cfg, progress = self.cfg, self.progress
        tick = time.monotonic()
        loss, logs, grad_norm = self.step()
        rate = cfg.batch_size * cfg.grad_accum * self.world / (time.monotonic() - tick)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.1f}")
        if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps:
            row = {"step": progress.step, "loss": loss.item()}
            row |= {"lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            row |= {"samples_per_s": rate, **{k: float(v) for k, v in logs.items()}}
            self.train_log.write(row)
        every = cfg.eval_every
        if every > 0 and progress.step % every == 0 and progress.step < cfg.max_steps:
            self.evaluate()
        progress.seconds += time.monotonic() - self.counted  # before the checkpoint holds it
        self.counted = time.monotonic()
        if progress.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def out_of_time(self) -> bool:
        minutes = self.cfg.max_minutes
        if minutes is None or time.monotonic() - self.started <= 60 * minutes:
            return False
        self.accelerator.print(f"time budget of {minutes} min reached at step {self.progress.step}")
        return True

    def batch(self, position: int):
        """This process's share of the global batch that starts at data `position`."""
        start = position + self.rank * self.cfg.batch_size
        size, seed = len(self.dataset), self.cfg.seed
        items = [self.dataset[_order(start + i, size, seed)] for i in range(self.cfg.batch_size)]
        return _to(default_collate(items), self.accelerator.device)

    def step(self) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """One optimiser step over `grad_accum` batches.

        Weights, optimiser, EMA and progress change only in the update at the end, so a Ctrl-C
        before it can checkpoint the step's starting point (with the RNG noted here) exactly.
        """
        cfg, accelerator = self.cfg, self.accelerator
        self.step_rng, self.phase = rng_state(accelerator.device), "step"
        position = self.progress.position
        for _ in range(cfg.grad_accum):
            batch = self.batch(position)
            position += cfg.batch_size * self.world
            with accelerator.accumulate(self.model):
                with accelerator.autocast():
                    loss, logs = self.stage.loss(self.model, batch, cfg)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(self.params, cfg.grad_clip)
                    self.phase = "update"
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(accelerator.unwrap_model(self.model))
        self.progress.step += 1
        self.progress.position = position
        self.phase = "idle"
        return loss, logs, grad_norm

    def evaluate(self) -> None:
        weights = self.weights()
        if self.main:
            # in eval mode: held-out data must not move the model (a VQ-VAE's codebook EMA, whose
            # update would also wait for the other processes), nor dropout touch it
            training = weights.training
            weights.eval()
            try:
                results = self.stage.evaluate(weights, self.cfg)
            finally:
                weights.train(training)
            if results:
                self.eval_log.write({"step": self.progress.step, **results})
                self.accelerator.print(
                    f"eval at step {self.progress.step}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in results.items())
                )
                export = partial(self.stage.export, weights, self.cfg)
                self.best.offer(self.progress.step, results, export)
        self.accelerator.wait_for_everyone()

    def save_on_interrupt(self) -> None:
        """Checkpoint the last whole step on Ctrl-C; mid-update the weights are neither the old nor
        the new ones, so the last checkpoint stays."""
        step = self.progress.step
        if self.phase == "update":
            self.accelerator.print(
                f"interrupted during the update of step {step + 1}: "
                f"continue from step {self.last_saved} with --resume"
            )
            return
        if step > self.last_saved:
            self.save_checkpoint(self.step_rng if self.phase == "step" else None)
        self.accelerator.print(
            f"interrupted at step {step}: checkpoint saved, continue with --resume"
        )

    def save_checkpoint(self, rng: dict | None = None) -> None:
        """Write `step_N.tmp`, rename it to `step_N`, then switch `latest`: a kill at any moment
        leaves the last checkpoint whole. `rng` is this process's RNG state, by default now's."""
        accelerator = self.accelerator
        rng = rng_state(accelerator.device) if rng is None else rng
        root = self.out / "checkpoints"
        folder = root / f"step_{self.progress.step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        accelerator.wait_for_everyone()
        if self.main:
            for stale in root.glob("step_*.tmp"):  # left by a killed run
                shutil.rmtree(stale)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        gathered = gather_sharded(self.model, self.optimizer.optimizer) if self.sharded else None
        if self.main:
            self.write_shared_state(tmp, gathered)
        save_rng(tmp / f"rng_{self.rank}.safetensors", rng)
        accelerator.wait_for_everyone()
        if self.main:
            publish(tmp, folder, self.cfg.keep_checkpoints)
        self.last_saved = self.progress.step
        accelerator.wait_for_everyone()

    def write_shared_state(self, folder: Path, gathered: dict | None) -> None:
        """The files all processes share (their copies are the same under DDP; `gathered` from
        the shards under FSDP)."""
        if gathered is None:
            save_model(self.accelerator.unwrap_model(self.model), str(folder / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        else:
            save_file(gathered["model"], str(folder / "model.safetensors"))
            torch.save(gathered["optimizer"], folder / "optimizer.pt")
        if self.ema is not None:
            save_model(self.ema.model, str(folder / "ema.safetensors"))
        state = {
            "format": CHECKPOINT_FORMAT,
            "processes": self.world,
            "sharded": self.sharded,
            "progress": self.progress.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else None,
        }
        (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    def load_checkpoint(self, folder: Path) -> None:
        """Restore what `save_checkpoint` wrote, this process's RNG last. No file is unpickled,
        and a damaged or missing one is an ArlonError that names it."""
        if not (folder / "state.json").exists() and (folder / "optimizer.bin").exists():
            raise ArlonError(
                f"cannot resume from {folder}: it holds an older ARLON's pickled checkpoint, "
                "which is not loaded any more; start a new run"
            )
        with reading(folder, "state.json") as path:
            state = self.load_counters(json.loads(path.read_text()))
        if self.sharded:
            load_sharded(self.model, self.optimizer.optimizer, folder)
        else:
            with reading(folder, "model.safetensors") as path:
                load_model(self.accelerator.unwrap_model(self.model), path)
            with reading(folder, "optimizer.pt") as path:
                load_optimizer(self.optimizer, path)
        if self.ema is not None:
            with reading(folder, "ema.safetensors") as path:
                load_model(self.ema.model, path)
                self.ema.updates = int(state["ema_updates"])
        with reading(folder, f"rng_{self.rank}.safetensors") as path:
            set_rng_state(load_rng(path), self.accelerator.device)
        self.accelerator.print(f"resumed from {folder.name} (step {self.progress.step})")

    def load_counters(self, state: dict) -> dict:
        """Progress and scheduler from state.json, checked against each other and this run."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a checkpoint state of format {CHECKPOINT_FORMAT}")
        if state["processes"] != self.world:
            raise ValueError(
                f"written by {state['processes']} process(es), not {self.world}: "
                "resume with as many as the run started with"
            )
        if state.get("sharded", False) != self.sharded:
            written = "with FSDP" if state.get("sharded") else "without FSDP"
            raise ValueError(f"written {written}: resume under the accelerate config it began with")
        self.progress.load_state_dict(state["progress"])
        scheduler = state["scheduler"]
        if set(scheduler) != set(self.scheduler.state_dict()):
            raise ValueError(f"the LR scheduler's state has keys {sorted(scheduler)}")
        if scheduler["last_epoch"] != self.progress.step:
            raise ValueError(f"the LR scheduler is at step {scheduler['last_epoch']}")
        self.scheduler.load_state_dict(scheduler)
        return state

    def export(self) -> Path:
        """Write the final model (the EMA weights when there are some; with `keep_best`, those of
        the best evaluation) to `out/model`, atomically."""
        folder = self.out / "model"
        weights = self.weights()
        if self.main:
            tmp = self.out / "model.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            best = self.best.record() if self.cfg.keep_best is not None else None
            if best is not None:
                self.best.copy_to(tmp)
            else:
                self.stage.export(weights, self.cfg, tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            minutes = self.progress.seconds / 60  # every process that resumed the run
            kept = ""
            if best is not None:
                kept = (
                    f", the weights of step {best['step']} ({best['metric']} {best['value']:.4g})"
                )
            self.accelerator.print(
                f"trained {self.cfg.stage} for {self.progress.step} steps in {minutes:.1f} min: "
                f"{folder}{kept}"
            )
        self.accelerator.wait_for_everyone()
        return folder


def training_precision(choice: str) -> str:
    """Accelerate's mixed precision for a config's: "auto" is bf16 on a GPU that has it and on a
    CPU with bf16 matmuls of its own (`native_bf16`: the recipe's AR trained 1.7x faster so on an
    AVX512-BF16 EPYC), else "no" (emulated on AVX2, a step of the same AR took 87 s against 5.6)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if native_bf16() else "no"


def _accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's accelerator: one process, DDP or FSDP2 (whose shards checkpoints gather)."""
    accelerator = Accelerator(
        mixed_precision=training_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    kind = accelerator.distributed_type
    if kind in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM) or (
        kind == DistributedType.FSDP and not accelerator.is_fsdp2
    ):
        raise ArlonError(
            f"the trainer runs on one process, DDP or FSDP2 (fsdp_version: 2); "
            f"{kind.value} {'version 1 ' if kind == DistributedType.FSDP else ''}is not supported"
        )
    return accelerator


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """An FSDP2 shard (a DTensor) gathered whole; any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to(v, device) for v in batch)
    return batch

"""The one training loop every stage shares, on Hugging Face Accelerate.

    arlon train vae --preset shapes-tiny --out runs/vae               # one process, CPU or GPU
    accelerate launch --num_processes 2 -m arlon.cli train vae ...    # DDP (gloo on CPU), FSDP, ...

A stage says what to train (`Stage`: model, data set, loss, evaluation, export); this loop does the
rest: AdamW with warm-up and cosine decay, gradient accumulation and clipping, EMA weights, bf16
autocast, budgets in steps and minutes, progress, CSV (and TensorBoard) logs, and checkpoints that
resume exactly. A checkpoint is Accelerate's full state (model, optimiser, scheduler, EMA, the data
position, every process's RNG) written to a temporary folder and renamed into place; `latest` is
switched only after that, so an interrupted run never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from arlon.errors import ArlonError
from arlon.training.config import TrainConfig


class Stage(Protocol):
    """What one stage trains. Data sets are map-style and deterministic per index."""

    def build_model(self, cfg: TrainConfig) -> torch.nn.Module: ...
    def dataset(self, cfg: TrainConfig) -> Dataset: ...
    def loss(
        self, model: torch.nn.Module, batch, cfg: TrainConfig
    ) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self, model: torch.nn.Module, cfg: TrainConfig) -> dict: ...
    def export(self, model: torch.nn.Module, cfg: TrainConfig, folder: Path) -> None: ...


@dataclass
class Progress:
    """The loop's position, checkpointed with everything else."""

    step: int = 0
    position: int = 0  # samples drawn from the data order, over all processes

    def state_dict(self) -> dict:
        return {"step": self.step, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.position = int(state["step"]), int(state["position"])


class EMA:
    """Exponential moving average of a model's weights (fp32), with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema.lerp_(p.detach().float(), 1 - decay)
        for ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema.copy_(b)

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


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    folder = out / "checkpoints" / pointer.read_text().strip()
    if not folder.is_dir():
        raise ArlonError(
            f"{pointer} names {folder.name}, which is missing: the run folder is damaged"
        )
    return folder


def train(stage: Stage, cfg: TrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Train `stage` into `out`; returns the exported model folder (`out/model`)."""
    out = Path(out)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise ArlonError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    if resume and checkpoint is None:
        raise ArlonError(f"nothing to resume in {out}: no checkpoint there")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")

    set_seed(cfg.seed)
    model = stage.build_model(cfg)
    if cfg.init_from is not None and checkpoint is None:
        _load_weights(model, Path(cfg.init_from))
    dataset = stage.dataset(cfg)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if checkpoint is not None:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as e:  # a damaged checkpoint, or one from another model
            raise ArlonError(f"cannot resume from {checkpoint}: {e}") from None
        accelerator.print(f"resumed from {checkpoint.name} (step {progress.step})")

    train_log = _Log(out / "train.csv", progress.step, main)
    eval_log = _Log(out / "eval.csv", progress.step, main)
    world, rank = accelerator.num_processes, accelerator.process_index

    def next_batch():
        start = progress.position + rank * cfg.batch_size
        items = [dataset[_order(start + i, len(dataset), cfg.seed)] for i in range(cfg.batch_size)]
        progress.position += cfg.batch_size * world
        return _to(default_collate(items), accelerator.device)

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        folder = out / "checkpoints" / f"step_{progress.step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            pointer = out / "checkpoints" / "latest"
            pointer.with_suffix(".tmp").write_text(folder.name)
            os.replace(pointer.with_suffix(".tmp"), pointer)
            kept = sorted(p for p in folder.parent.glob("step_*") if not p.name.endswith(".tmp"))
            for old in kept[: -cfg.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def evaluate() -> None:
        if main:
            target = ema.model if ema is not None else accelerator.unwrap_model(model)
            results = stage.evaluate(target, cfg)
            if results:
                eval_log.write({"step": progress.step, **results})
                accelerator.print(
                    f"eval at step {progress.step}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in results.items())
                )
        accelerator.wait_for_everyone()

    started, last_saved = time.monotonic(), progress.step
    bar = tqdm(
        total=cfg.max_steps,
        initial=progress.step,
        desc=f"train {cfg.stage}",
        unit="step",
        disable=not main,
    )
    model.train()
    try:
        while progress.step < cfg.max_steps:
            if cfg.max_minutes is not None and time.monotonic() - started > 60 * cfg.max_minutes:
                accelerator.print(
                    f"time budget of {cfg.max_minutes} min reached at step {progress.step}"
                )
                break
            tick = time.monotonic()
            for _ in range(cfg.grad_accum):
                batch = next_batch()
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss, logs = stage.loss(model, batch, cfg)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            progress.step += 1
            bar.update(1)
            rate = cfg.batch_size * cfg.grad_accum * world / (time.monotonic() - tick)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.1f}")
            if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps:
                row = {"step": progress.step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
                row |= {"grad_norm": float(grad_norm), "samples_per_s": rate}
                row |= {k: float(v) for k, v in logs.items()}
                train_log.write(row)
            if (
                cfg.eval_every > 0
                and progress.step % cfg.eval_every == 0
                and progress.step < cfg.max_steps
            ):
                evaluate()
            if progress.step % cfg.checkpoint_every == 0:
                save_checkpoint()
                last_saved = progress.step
    except KeyboardInterrupt:
        bar.close()
        if progress.step > last_saved:
            save_checkpoint()
        accelerator.print(
            f"interrupted at step {progress.step}: checkpoint saved, continue with --resume"
        )
        raise
    bar.close()
    if progress.step > last_saved:
        save_checkpoint()
    if cfg.eval_every >= 0:
        evaluate()
    folder = out / "model"
    if main:
        target = ema.model if ema is not None else accelerator.unwrap_model(model)
        tmp = out / "model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        stage.export(target, cfg, tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        accelerator.print(
            f"trained {cfg.stage} for {progress.step} steps in {(time.monotonic() - started) / 60:.1f} min: {folder}"
        )
    accelerator.wait_for_everyone()
    return folder


def _load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy the weights of a saved model folder (the same architecture) into `model`."""
    try:
        source = type(model).from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ArlonError(f"cannot start from {folder}: {e}") from None
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ArlonError(f"cannot start from {folder}: another architecture ({first})") from None


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to(v, device) for v in batch)
    return batch

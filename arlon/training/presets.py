"""Every stage's named training presets, in one place (model presets live beside each model).

cfg = train_config("ar", "shapes-tiny", max_steps=100)   # a validated TrainConfig
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from arlon.errors import ArlonError
from arlon.training.config import TrainConfig

# EMA of weights is off for the VQ-VAEs: see VQStage.
_VQ_SHAPES_TINY = dict(
    batch_size=32,
    lr=1e-3,
    warmup_steps=100,
    ema_decay=0.0,
    checkpoint_every=500,
    log_every=20,
    eval_every=500,
)

# Paper scale, for GPUs (the paper gives none of these): bf16, AdamW with a long warm-up. The
# latent VQ-VAEs and the AR train on a cache of Open-Sora v1.2 latents in windows of 20 latent
# frames (`arlon cache --vae PIPELINE/vae --window 20`: 5 token frames at 4x temporal compression),
# the AR's text states from T5 (`--set data.text_encoder=PIPELINE/text_encoder`).
_OPENSORA = dict(
    lr=1e-4,
    warmup_steps=1000,
    mixed_precision="bf16",
    checkpoint_every=1000,
    log_every=50,
    eval_every=5000,
)

_AR_SHAPES_TINY = dict(
    batch_size=16,
    lr=1e-3,
    warmup_steps=200,
    weight_decay=0.01,
    checkpoint_every=250,
    eval_every=500,
)

# Per preset: the training settings (model presets live beside each model).
TRAIN_PRESETS: dict[str, dict[str, dict]] = {
    "vae": {
        "smoke": dict(
            max_steps=20,
            batch_size=2,
            warmup_steps=2,
            checkpoint_every=10,
            log_every=5,
            data=dict(num_frames=5),
        ),
        "shapes-tiny": dict(
            max_steps=2400,
            batch_size=8,
            lr=4e-4,
            warmup_steps=50,
            mixed_precision="auto",
            checkpoint_every=200,
            log_every=20,
            eval_every=400,
            data=dict(num_frames=9, foreground_weight=5.0),
        ),
    },
    # The cache (data.cache) is built with `arlon cache --vae ...` from a trained VAE.
    "vqvae": {
        "smoke": dict(
            max_steps=20,
            batch_size=4,
            warmup_steps=2,
            checkpoint_every=10,
            log_every=5,
            ema_decay=0.0,
        ),
        # one code per latent cell: 4x the positions of the coarse codes, so half the batch, bf16
        "shapes-tiny-fine": {
            **_VQ_SHAPES_TINY,
            "max_steps": 3000,
            "batch_size": 16,
            "mixed_precision": "auto",
        },
        "shapes-tiny-coarse": {**_VQ_SHAPES_TINY, "max_steps": 3000},
        "opensora-1.2-fine": {
            **_OPENSORA,
            "max_steps": 100_000,
            "batch_size": 16,
            "ema_decay": 0.0,
        },
        "opensora-1.2-coarse": {
            **_OPENSORA,
            "max_steps": 100_000,
            "batch_size": 16,
            "ema_decay": 0.0,
        },
    },
    "ar": {
        "smoke": dict(
            max_steps=20,
            batch_size=4,
            warmup_steps=2,
            checkpoint_every=10,
            log_every=5,
        ),
        "shapes-tiny": {
            **_AR_SHAPES_TINY,
            "max_steps": 2000,
            "mixed_precision": "auto",
            "log_every": 20,
        },
        "shapes-tiny-coarse": {**_AR_SHAPES_TINY, "max_steps": 10_000, "log_every": 50},
        "opensora-1.2": {**_OPENSORA, "max_steps": 200_000, "batch_size": 8, "weight_decay": 0.01},
    },
}


_DIT_SHAPES_TINY = dict(
    batch_size=16,
    warmup_steps=100,
    ema_decay=0.999,
    checkpoint_every=200,
    log_every=20,
    eval_every=500,
)
# Open-Sora v1.2's recipe, for GPUs: AdamW 1e-4, bf16, EMA 0.9999; Open-Sora's 20 latent frames
# per sample with 5 of reference; its timestep shift relative to one 512x512 frame (64x64 latent).
_DIT_OPENSORA = dict(
    batch_size=8,
    lr=1e-4,
    warmup_steps=1000,
    ema_decay=0.9999,
    mixed_precision="bf16",
    checkpoint_every=1000,
    log_every=50,
    eval_every=5000,
    data=dict(frames=20, max_reference=5, shift_base=[1, 64, 64]),
)
TRAIN_PRESETS["dit"] = {
    "smoke": dict(max_steps=10, batch_size=2, warmup_steps=2, checkpoint_every=5, log_every=5),
    "shapes-tiny": {**_DIT_SHAPES_TINY, "max_steps": 1500, "lr": 4e-4},
    "opensora-1.2": {**_DIT_OPENSORA, "max_steps": 100_000},
}
TRAIN_PRESETS["arlon"] = {
    "smoke": TRAIN_PRESETS["dit"]["smoke"],
    "shapes-tiny": {**_DIT_SHAPES_TINY, "max_steps": 600, "lr": 5e-4},
    "opensora-1.2": {**_DIT_OPENSORA, "max_steps": 20_000},
}


def train_config(stage: str, preset: str, **overrides) -> TrainConfig:
    if stage not in TRAIN_PRESETS:
        raise ArlonError(f"unknown stage {stage!r}; known: {', '.join(TRAIN_PRESETS)}")
    if preset not in TRAIN_PRESETS[stage]:
        raise ArlonError(
            f"unknown preset {preset!r} for {stage}; known: {', '.join(TRAIN_PRESETS[stage])}"
        )
    return TrainConfig(stage=stage, preset=preset, **{**TRAIN_PRESETS[stage][preset], **overrides})


DEFAULT_PRESETS = {
    "vae": "shapes-tiny",
    "vqvae": "shapes-tiny-fine",
    "ar": "shapes-tiny",
    "dit": "shapes-tiny",
    "arlon": "shapes-tiny",
}


@dataclass(frozen=True)
class RunRequest:
    """What `arlon train` was asked: the stage, the run folder, and the settings' sources."""

    stage: str
    out: Path
    resume: bool = False
    preset: str | None = None  # None: the stage's default (DEFAULT_PRESETS)
    config_file: Path | None = None
    sets: tuple[str, ...] = ()  # KEY=VALUE overrides
    data: Path | None = None  # a manifest (vae) or a latent cache (the other stages)
    baseline: Path | None = None  # arlon: the baseline DiT it builds on
    init_from: Path | None = None
    max_steps: int | None = None
    max_minutes: float | None = None


def run_config(request: RunRequest) -> TrainConfig:
    """A run's settings: its own `config.yaml` when resuming, else the stage's preset; then the
    config file, the `KEY=VALUE` overrides, and the request's data, weights and budget, in turn."""
    own = request.out / "config.yaml"
    if request.resume and own.exists():
        cfg = TrainConfig.load(own)
    else:
        cfg = train_config(request.stage, request.preset or DEFAULT_PRESETS[request.stage])
    if request.config_file is not None:
        cfg = cfg.merged(**TrainConfig.load_mapping(request.config_file))
    cfg = cfg.override(list(request.sets))
    changes: dict = {"data": {}}
    if request.data is not None:
        changes["data"]["manifest" if cfg.stage == "vae" else "cache"] = str(request.data)
    if request.baseline is not None:
        changes["data"]["baseline"] = str(request.baseline)
    if request.init_from is not None:
        changes["init_from"] = str(request.init_from)
    budget = (("max_steps", request.max_steps), ("max_minutes", request.max_minutes))
    changes |= {k: v for k, v in budget if v is not None}
    return cfg.merged(**changes)

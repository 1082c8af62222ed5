"""Training configuration: one dataclass for every stage, read from and written to YAML or JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from arlon.errors import ArlonError


@dataclass
class TrainConfig:
    stage: str
    preset: str = "smoke"
    seed: int = 0
    # Budget: training stops at whichever comes first; the last state is always checkpointed.
    max_steps: int = 1000
    max_minutes: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 turns EMA off
    # "no", "bf16" or "auto": bf16 where the hardware multiplies it (`training_precision`)
    mixed_precision: str = "no"
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end; -1: never (benchmarks)
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    # A held-out metric of the stage's evaluation (e.g. perplexity_heldout): the exported model is
    # the weights of the evaluation where it was best, not the last step's (None: the last step's).
    keep_best: str | None = None
    # Start from these weights (a model folder an earlier run exported) instead of a random init;
    # init_partial: take only the tensors whose name and shape match (at least half the parameters),
    # the others start fresh, e.g. an AR on another token grid keeps its transformer blocks (its
    # code table and head start fresh: they belong to another VQ-VAE's codes).
    init_from: str | None = None
    init_partial: bool = False
    model: dict = field(default_factory=dict)  # overrides of the model preset
    data: dict = field(default_factory=dict)  # stage-specific data options

    def __post_init__(self):
        for f in dataclasses.fields(self):
            expected = _TYPES.get(f.type)
            value = getattr(self, f.name)
            if expected is not None and (
                not isinstance(value, expected) or isinstance(value, bool) and expected is not bool
            ):
                raise ArlonError(f"{f.name} must be {f.type}, got {value!r}")
        if self.mixed_precision not in ("no", "bf16", "auto"):
            raise ArlonError(
                f"mixed_precision must be 'no', 'bf16' or 'auto', got {self.mixed_precision!r}"
            )
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) <= 0:
                raise ArlonError(f"{name} must be positive, got {getattr(self, name)}")
        numbers = [  # each comparison is false for nan
            ("lr", 0 < self.lr < math.inf, "a positive number"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, "0 or more"),
            ("grad_clip", 0 < self.grad_clip < math.inf, "a positive number"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "positive"),
        ]
        for name, good, what in numbers:
            if not good:
                raise ArlonError(f"{name} must be {what}, got {getattr(self, name)}")
        if not (
            isinstance(self.betas, list | tuple)
            and len(self.betas) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in self.betas)
        ):
            raise ArlonError(f"betas must be two numbers, got {self.betas!r}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ArlonError(f"betas must lie in [0, 1), got {list(self.betas)}")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the settings as YAML (JSON for a .json path); a kill mid-write leaves the old file."""
        path = Path(path)
        data = self.to_dict()
        text = (
            json.dumps(data, indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(data, sort_keys=False)
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ArlonError(
                f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as e:
            raise ArlonError(f"bad config: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """The config saved in `path`; a damaged one is an ArlonError that names the file."""
        data = cls.load_mapping(path)
        try:
            return cls.from_dict(data)
        except ArlonError as e:
            raise ArlonError(f"config {path} is damaged: {e}") from None

    @staticmethod
    def load_mapping(path: str | Path) -> dict:
        """The settings in a YAML or JSON file (YAML is a superset of JSON)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ArlonError(f"config {path} is damaged: it is not UTF-8 text") from None
        except yaml.MarkedYAMLError as e:
            where = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
            raise ArlonError(f"config {path} is damaged: {e.problem or e.context}{where}") from None
        except yaml.YAMLError as e:  # not marked: a character YAML does not allow
            raise ArlonError(f"config {path} is damaged: {' '.join(str(e).split())}") from None
        except OSError as e:
            raise ArlonError(f"cannot read config {path}: {e.strerror or e}") from None
        if not isinstance(data, dict):
            kind = "nothing" if data is None else f"the {type(data).__name__} {reprlib.repr(data)}"
            raise ArlonError(
                f"config {path} is damaged: it holds {kind}, not a mapping of keys to values"
            )
        return data

    def merged(self, **changes) -> TrainConfig:
        """A validated copy with top-level settings replaced; `data` and `model` are merged key by
        key, e.g. `cfg.merged(data={"cache": "x"}, max_steps=5)` keeps the other data options."""
        data = self.to_dict()
        for key, value in changes.items():
            if key in ("data", "model") and isinstance(value, dict):
                value = {**data[key], **value}
            data[key] = value
        return TrainConfig.from_dict(data)

    def differences(self, other: TrainConfig) -> list[str]:
        """How `other`'s settings differ from these: "max_steps: 2000 -> 3000", "model.x: 1 -> 2"."""

        def flat(cfg: TrainConfig) -> dict:
            items = cfg.to_dict().items()
            return {
                f"{key}.{sub}" if isinstance(value, dict) else key: v
                for key, value in items
                for sub, v in (value.items() if isinstance(value, dict) else [(None, value)])
            }

        mine, theirs = flat(self), flat(other)
        return [
            f"{key}: {mine.get(key)} -> {theirs.get(key)}"
            for key in sorted(mine.keys() | theirs.keys())
            if mine.get(key) != theirs.get(key)
        ]

    def override(self, assignments: list[str]) -> TrainConfig:
        """Apply `key=value` strings (values parsed as YAML; `model.x=1` sets a nested key)."""
        data = self.to_dict()
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep:
                raise ArlonError(f"--set expects key=value, got {item!r}")
            target, *rest = key.split(".")
            parsed = parse_value(value)
            if rest:
                if not isinstance(data.get(target), dict):
                    raise ArlonError(f"{target} is not a group of settings")
                data[target][".".join(rest)] = parsed
            else:
                data[target] = parsed
        return TrainConfig.from_dict(data)


_TYPES = {
    "int": int,
    "float": (int, float),
    "str": str,
    "bool": bool,
    "float | None": (int, float, type(None)),
    "str | None": (str, type(None)),
    "dict": dict,
}


def parse_value(value: str):
    """A command-line value: YAML, with numbers such as 1e-4 (a string to YAML 1.1) read as floats,
    and YAML 1.1's yes/no/on/off kept as words (`mixed_precision=no`): only true/false are booleans."""
    parsed = yaml.safe_load(value)
    if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
        return value.strip()
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed

"""One command that trains a whole pipeline from an empty folder: `arlon recipe shapes-tiny`.

    arlon recipe shapes-tiny --out runs/recipe --dry-run    # its stages, budgets and state
    arlon recipe shapes-tiny --out runs/recipe               # run them; --resume continues
    arlon recipe shapes-tiny --out runs/recipe --resume --stages dit,arlon   # a second process
    arlon recipe shapes-tiny --out runs/recipe --parallel    # each stage once what it reads is done

A recipe is a YAML file (`arlon/training/recipes/NAME.yaml`, or any path): its stages in order, each
with its kind, its settings and its budget, so every budget lives in that one file. Kinds:
`dataset` (shapes-world clips and episodes), `train` (any `arlon train` stage; `data`, `baseline`
and `init_from` name earlier stages), `cache` (a data set through a VAE), `codes` (the AR's tokens
and the DiT's condition from one VQ-VAE into that cache) and `assemble` (the pipeline folder).

Stage NAME writes `OUT/NAME` and, once finished, `OUT/NAME/done.json` with its settings and minutes
(a training stage's summed over every process that resumed it, from its checkpoints):
`--resume` skips finished stages (refusing one whose settings the recipe has since changed) and
continues an unfinished training stage from its last checkpoint, exactly.
Stages that do not depend on each other (the AR and the DiTs) can run in two processes at once with
`--stages`, or `--parallel` runs each stage in a process of its own as soon as what it reads is
finished, the machine's cores shared among those running (`arlon.training.parallel`). Under `accelerate launch` the training
stages run on every process, the others on the main process while the rest wait.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from arlon.errors import ArlonError
from arlon.training.config import parse_value
from arlon.utils import hold_lock, write_json

RECIPES = Path(__file__).parent / "recipes"
KINDS = ("dataset", "train", "cache", "codes", "assemble")
# The settings of each kind that name an earlier stage (whose output it reads), and those it needs.
INPUTS = {
    "dataset": (),
    "train": ("data", "baseline", "init_from"),
    "cache": ("vae", "manifest"),
    "codes": ("cache", "vq"),
    "assemble": ("ar", "vq", "dit", "vae", "baseline"),
}
# (an assembly's baseline DiT is optional)
REQUIRED = {**INPUTS, "train": ("stage", "preset"), "assemble": ("ar", "vq", "dit", "vae")}


@dataclass
class Stage:
    name: str
    kind: str
    settings: dict = field(default_factory=dict)

    def inputs(self) -> list[str]:
        return [self.settings[k] for k in INPUTS[self.kind] if self.settings.get(k)]

    def budget(self) -> str:
        s = self.settings
        if self.kind == "train":
            return f"{s['stage']} {s['preset']}, " + (
                f"{s['max_steps']} steps" if "max_steps" in s else "the preset's steps"
            )
        if self.kind == "dataset":
            return f"{s.get('clips', 0)} clips, {s.get('episodes', 0)} episodes"
        return ""


@dataclass
class Recipe:
    name: str
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ArlonError(f"the recipe has no stage {name!r}; its stages: {self.names()}")

    def names(self) -> str:
        return ", ".join(s.name for s in self.stages)


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def read_recipe(source: str | Path, sets: list[str] = ()) -> Recipe:
    """A packaged recipe by name, or a recipe file; `sets` override settings: `STAGE.KEY=VALUE`."""
    path = Path(source)
    if not path.is_file():
        if str(source) not in packaged_recipes():
            known = ", ".join(packaged_recipes())
            raise ArlonError(f"no recipe {str(source)!r}: give a recipe file or one of {known}")
        path = RECIPES / f"{source}.yaml"
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ArlonError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), dict):
        raise ArlonError(f"{path}: a recipe is a mapping with 'stages', each a mapping of settings")
    stages = []
    for name, settings in spec["stages"].items():
        if not isinstance(settings, dict) or settings.get("kind") not in KINDS:
            raise ArlonError(f"{path}: stage {name!r} needs a kind, one of {', '.join(KINDS)}")
        settings = dict(settings)
        stages.append(Stage(str(name), settings.pop("kind"), settings))
    recipe = Recipe(path.stem, stages)
    for assignment in sets:
        _override(recipe, assignment)
    _check(recipe, path)
    return recipe


def _override(recipe: Recipe, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    name, dot, setting = key.partition(".")
    if not (sep and dot and setting):
        raise ArlonError(f"--set takes STAGE.KEY=VALUE, e.g. ar.max_steps=100; got {assignment!r}")
    stage = recipe.stage(name)
    parsed = parse_value(value) if value else None
    if stage.kind == "train" and setting not in ("stage", "preset", "max_steps", *INPUTS["train"]):
        stage.settings.setdefault("set", {})[setting] = parsed  # a TrainConfig setting
    else:
        stage.settings[setting] = parsed


def _check(recipe: Recipe, path: Path) -> None:
    """Every stage reads only stages before it, and names what its kind needs."""
    seen: set[str] = set()
    for stage in recipe.stages:
        for name in stage.inputs():
            if name not in seen:
                raise ArlonError(
                    f"{path}: stage {stage.name!r} reads {name!r}, which is not a stage before it"
                )
        missing = [k for k in REQUIRED[stage.kind] if k not in stage.settings]
        if missing:
            needs = " and ".join(repr(k) for k in REQUIRED[stage.kind])
            raise ArlonError(f"{path}: {stage.kind} stage {stage.name!r} needs {needs}")
        if stage.kind == "assemble":
            components = [k for k in INPUTS["assemble"] if stage.settings.get(k)]
            unknown = [k for k in stage.settings.get("float16", ()) if k not in components]
            if unknown:
                raise ArlonError(
                    f"{path}: stage {stage.name!r} stores {unknown} in float16, which are not "
                    f"its components ({', '.join(components)})"
                )
        seen.add(stage.name)


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


def done(out: Path, stage: Stage) -> dict | None:
    """The record of a finished stage (its minutes and when), or None."""
    marker = out / stage.name / "done.json"
    if not marker.exists():
        return None
    try:
        record = json.loads(marker.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("minutes"), int | float):
        raise ArlonError(f"{marker} is damaged: remove it to make the stage {stage.name!r} again")
    return record


def changed(out: Path, stage: Stage) -> list[str]:
    """How the settings of `stage` differ from those its finished run recorded ("clips: 6000 ->
    12000"); nothing for a stage not finished, or finished before records held settings."""
    record = done(out, stage)
    recorded = None if record is None else record.get("settings")
    if recorded is None:
        return []
    now = _as_json(stage.settings)
    return [
        f"{key}: {recorded.get(key)} -> {now.get(key)}"
        for key in sorted(set(recorded) | set(now))
        if recorded.get(key) != now.get(key)
    ]


def _as_json(settings: dict) -> dict:
    return json.loads(json.dumps(settings))


def plan(recipe: Recipe, out: Path) -> list[dict]:
    """Each stage: its kind, budget, output and state (done, in progress, to do)."""
    rows = []
    for stage in recipe.stages:
        record = done(out, stage)
        if record is not None:
            state = f"done in {record['minutes']:.1f} min"
            if differences := changed(out, stage):
                state += " with other settings: " + "; ".join(differences)
        elif (out / stage.name).exists():
            state = "in progress" + _progress(out / stage.name)
        else:
            state = "to do"
        rows.append(
            {
                "stage": stage.name,
                "kind": stage.kind,
                "budget": stage.budget(),
                "reads": ", ".join(stage.inputs()),
                "output": str(_output(out, stage)),
                "state": state,
            }
        )
    return rows


def run_recipe(
    recipe: Recipe,
    out: Path,
    resume: bool = False,
    only: list[str] | None = None,
    embedded_vae: bool = False,
    embedded_ar: bool = False,
) -> Path:
    """Run the recipe's stages (or `only` those) into `out`; the assembled pipeline folder.
    `embedded_vae`: the VAE stage is a copy of the embedded VAE; `embedded_ar`: the AR stage starts
    from the embedded AR's transformer blocks, on any token grid (replacing the stage's own
    `init_from`)."""
    import torch
    from accelerate import PartialState

    from arlon.training.checkpoint import BEST_RECORD

    # as the trainer's Accelerator: without a GPU, a launch of N processes is N CPU processes
    state = PartialState(cpu=not torch.cuda.is_available())
    stages = [recipe.stage(name) for name in only] if only else recipe.stages
    check_run(recipe, out, resume)
    state.wait_for_everyone()  # every process has looked at `out` before any writes to it
    for stage in stages:
        if done(out, stage) is not None:
            continue
        for name in stage.inputs():
            if done(out, recipe.stage(name)) is None:
                raise ArlonError(f"stage {stage.name!r} reads {name!r}, which is not finished")
        if state.is_main_process:
            print(f"recipe: stage {stage.name} ({stage.kind}) ...", flush=True)
        start = time.perf_counter()
        minutes = None
        if stage.kind == "train":
            minutes = _train(recipe, stage, out, embedded_vae, embedded_ar)
        else:
            if state.is_main_process:
                minutes = _run_timed(stage, out)
            state.wait_for_everyone()
        if state.is_main_process:
            minutes = (time.perf_counter() - start) / 60 if minutes is None else minutes
            record = {"minutes": round(minutes, 2), "finished": _now(), "kind": stage.kind}
            record["settings"] = _as_json(stage.settings)
            record |= _curve(out / stage.name / "eval.csv")
            best = out / stage.name / "best" / BEST_RECORD
            if best.exists():  # keep_best: the exported model is that evaluation's
                record["best"] = json.loads(best.read_text())
            write_json(out / stage.name / "done.json", record)
            for spent in ("minutes.json", ".lock"):  # in the record now; nothing more to guard
                (out / stage.name / spent).unlink(missing_ok=True)
            print(f"recipe: stage {stage.name} done in {minutes:.1f} min", flush=True)
        state.wait_for_everyone()
    return out / recipe.stages[-1].name


def check_run(recipe: Recipe, out: Path, resume: bool) -> None:
    """A run folder that holds stages is continued only with --resume, and only by the recipe whose
    settings made its finished stages."""
    started = [s.name for s in recipe.stages if (out / s.name).exists()]
    if started and not resume:
        raise ArlonError(
            f"{out} already holds this recipe's stages ({', '.join(started)}): pass --resume to "
            "continue, or choose another --out"
        )
    for stage in recipe.stages:
        if differences := changed(out, stage):
            raise ArlonError(
                f"stage {stage.name!r} in {out} was finished with other settings "
                f"({'; '.join(differences)}): run the recipe it was made with, or remove "
                f"{out / stage.name} and the stages that read it to make them again"
            )


def _progress(folder: Path) -> str:
    """A training stage's last checkpoint and held-out numbers: ", step 1250 (held out at 1000:
    perplexity_heldout 24.3)", or nothing."""
    from arlon.training.checkpoint import latest_checkpoint

    try:
        checkpoint = latest_checkpoint(folder)
    except ArlonError:  # a damaged run: --resume says how
        return ""
    if checkpoint is None:
        return ""
    step = json.loads((checkpoint / "state.json").read_text())["progress"]["step"]
    text = f", step {step}"
    log = folder / "eval.csv"
    if log.exists():
        with log.open() as f:
            rows = list(csv.DictReader(f))
        if rows:
            last = rows[-1]
            numbers = ", ".join(f"{k} {float(v):.4g}" for k, v in last.items() if k != "step" and v)
            text += f" (held out at {last['step']}: {numbers})"
    return text


def _curve(log: Path) -> dict:
    """A training stage's held-out numbers at the end, and their change over its last fifth of
    steps (a flow loss that still falls there asks for a longer budget)."""
    if not log.exists():
        return {}
    with log.open() as f:
        rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    if not rows:
        return {}
    last = rows[-1]
    fifth = min(rows, key=lambda row: abs(row["step"] - 0.8 * last["step"]))
    change = {
        k: round((last[k] - fifth[k]) / abs(fifth[k]), 4)
        for k in last
        if k != "step" and fifth.get(k) and fifth is not last
    }
    final = {k: v for k, v in last.items() if k != "step"}
    return {"heldout": final, "heldout_change_last_fifth": change}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _run_timed(stage: Stage, out: Path) -> float:
    """Run a stage that does not train; its minutes, summed over every process that ran it (a data
    set or a cache interrupted goes on where it stopped), kept in `OUT/NAME/minutes.json`."""
    spent = out / stage.name / "minutes.json"
    spent.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(spent.parent):
        earlier = json.loads(spent.read_text())["minutes"] if spent.exists() else 0.0
        start = time.perf_counter()
        try:
            _RUNNERS[stage.kind](stage, out)
        finally:
            minutes = earlier + (time.perf_counter() - start) / 60
            write_json(spent, {"minutes": round(minutes, 2)})
    return minutes


def _output(out: Path, stage: Stage) -> Path:
    if stage.kind == "dataset":
        return out / stage.name / "manifest.csv"
    if stage.kind == "train":
        return out / stage.name / "model"
    if stage.kind == "codes":  # the codes go into the cache
        return out / stage.settings["cache"]
    return out / stage.name


def _request(recipe: Recipe, stage: Stage, out: Path, embedded_ar: bool):
    """The `arlon train` request of a training stage: its preset, settings, inputs and budget."""
    from arlon.training.checkpoint import latest_checkpoint
    from arlon.training.presets import RunRequest

    s, folder = stage.settings, out / stage.name

    def path_of(key: str) -> Path | None:
        name = s.get(key)
        return None if name is None else _output(out, recipe.stage(name))

    sets = [f"{k}={json.dumps(v)}" for k, v in s.get("set", {}).items()]
    init_from = path_of("init_from")
    if s["stage"] == "ar" and embedded_ar:
        from arlon.weights import embedded

        init_from, sets = embedded("ar"), [*sets, "init_partial=true"]
    return RunRequest(
        stage=s["stage"],
        out=folder,
        resume=latest_checkpoint(folder) is not None,
        preset=s["preset"],
        sets=tuple(sets),
        data=path_of("data"),
        baseline=path_of("baseline"),
        init_from=init_from,
        max_steps=s.get("max_steps"),
    )


def check_settings(recipe: Recipe, out: Path) -> None:
    """Every training stage's settings are valid ones: a mistake in the last stage's is found
    before the first stage runs, not hours later."""
    from arlon.training.presets import run_config

    for stage in recipe.stages:
        if stage.kind == "train":
            try:
                run_config(_request(recipe, stage, out, embedded_ar=False))
            except ArlonError as e:
                raise ArlonError(f"stage {stage.name!r}: {e}") from None


def _train(
    recipe: Recipe, stage: Stage, out: Path, embedded_vae: bool, embedded_ar: bool
) -> float | None:
    """Train the stage to its budget; its training minutes, summed over every process that resumed
    it (a stage trained over several sessions is timed whole), or None when nothing was trained."""
    from arlon.training.checkpoint import latest_checkpoint
    from arlon.training.presets import run_config
    from arlon.training.stages import stage as training_stage
    from arlon.training.trainer import train

    folder = out / stage.name
    if stage.settings["stage"] == "vae" and embedded_vae:
        from arlon.weights import embedded

        shutil.copytree(embedded("vae"), folder / "model", dirs_exist_ok=True)
        return None
    request = _request(recipe, stage, out, embedded_ar)
    cfg = run_config(request)
    train(training_stage(cfg.stage), cfg, folder, resume=request.resume)
    progress = json.loads((latest_checkpoint(folder) / "state.json").read_text())["progress"]
    if progress["step"] < cfg.max_steps:  # a time budget (max_minutes) paused it
        raise ArlonError(
            f"stage {stage.name} stopped at step {progress['step']} of "
            f"{cfg.max_steps} (its time budget): --resume continues it"
        )
    seconds = progress.get("seconds")  # None in checkpoints before 2026-12-05
    return None if seconds is None else seconds / 60


def _dataset(stage: Stage, out: Path) -> None:
    from arlon.data.world_dataset import DatasetSettings, write_dataset

    write_dataset(DatasetSettings(out=out / stage.name, **stage.settings))


def _cache(stage: Stage, out: Path) -> None:
    from arlon.data.latent_cache import build_cache
    from arlon.models.loading import load_model

    s = stage.settings
    vae = load_model(out / s["vae"] / "model", "vae")
    manifest = out / s["manifest"] / "manifest.csv"
    build_cache(vae, manifest, out / stage.name, window=s.get("window", 9))


def _codes(stage: Stage, out: Path) -> None:
    """The AR's tokens and the DiT's training condition, both from one VQ-VAE (the paper's)."""
    from arlon.data.latent_cache import add_codes
    from arlon.models.loading import load_model

    vq = load_model(out / stage.settings["vq"] / "model", "vq")
    add_codes(out / stage.settings["cache"], vq, vq)
    (out / stage.name).mkdir(exist_ok=True)


def _assemble(
    stage: Stage, out: Path, folder: Path | None = None, models: dict | None = None
) -> None:
    """Assemble the pipeline into `folder` (default: the stage's own) from the training stages'
    models, or from `models` (stage name -> model folder) where it names one."""
    import torch

    from arlon.models.loading import model_class
    from arlon.pipeline.folders import MODELS, SETTINGS, assemble, optional_in, role

    s = stage.settings
    folder = out / stage.name if folder is None else folder
    parts = folder / "parts"  # each component as the pipeline stores it (fp16 where asked)
    components = {}
    for name in [*MODELS, *optional_in(s)]:
        source = (models or {}).get(s[name], out / s[name] / "model")
        if name in s.get("float16", ()):
            cls = model_class(source, role(name))
            cls.from_pretrained(source, torch_dtype=torch.float16).save_pretrained(parts / name)
            source = parts / name
        components[name] = source
    settings = {k: s[k] for k in SETTINGS if k in s}
    assemble(folder, components, settings=settings)
    shutil.rmtree(parts, ignore_errors=True)


def preview(recipe: Recipe, out: Path, folder: Path) -> Path:
    """A pipeline in `folder` from where the run in `out` stands, to try or evaluate it midway:
    each finished training stage's model; an unfinished one's best evaluation where it keeps one
    (`keep_best`), else its last checkpoint (the EMA weights where it keeps them, as its export
    would). `out` is only read, so a run can be previewed while it trains."""
    import tempfile

    from arlon.training.checkpoint import BEST_RECORD, BestWeights, latest_checkpoint

    last = recipe.stages[-1]
    if last.kind != "assemble":
        raise ArlonError(f"recipe {recipe.name!r} assembles no pipeline to preview")
    for stage in recipe.stages:
        if stage.kind in ("dataset", "cache", "codes") and done(out, stage) is None:
            raise ArlonError(f"stage {stage.name!r} is not finished: nothing to preview yet")
    standing = {}  # each unfinished training stage -> its kept best, or its last checkpoint
    for stage in recipe.stages:
        if stage.kind != "train" or done(out, stage) is not None:
            continue
        run = out / stage.name
        if (run / "best" / BEST_RECORD).exists():
            standing[stage.name] = run / "best"
        elif (checkpoint := latest_checkpoint(run)) is not None:
            standing[stage.name] = checkpoint
        else:
            raise ArlonError(f"stage {stage.name!r} has no checkpoint yet: nothing to preview")
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: Path(tmp) / name for name in standing}
        for name, source in standing.items():
            if source.name == "best":  # copied as is: `record()` would mend a swap under way
                BestWeights(source, None, False).copy_to(models[name])
            else:
                _export_checkpoint(out / name, source, models[name])
        folder.mkdir(parents=True, exist_ok=True)
        _assemble(last, out, folder, models)
    return folder


def _export_checkpoint(run: Path, checkpoint: Path, folder: Path) -> None:
    """The model of a training run's checkpoint, exported to `folder` as the run would export it."""
    from safetensors.torch import load_model

    from arlon.training.checkpoint import reading
    from arlon.training.config import TrainConfig
    from arlon.training.stages import stage as training_stage

    cfg = TrainConfig.load(run / "config.yaml")
    stage = training_stage(cfg.stage)
    model = stage.build_model(cfg)
    name = "ema.safetensors" if (checkpoint / "ema.safetensors").exists() else "model.safetensors"
    with reading(checkpoint, name, "preview") as path:
        load_model(model, path)
    stage.export(model.eval(), cfg, folder)


_RUNNERS = {"dataset": _dataset, "cache": _cache, "codes": _codes, "assemble": _assemble}

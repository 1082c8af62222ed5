"""`arlon convert opensora`: a pipeline folder from Open-Sora v1.2's released checkpoints.

    convert_opensora(OpenSoraSources(stdit=..., vae=..., text_encoder=...), "pipelines/opensora")

writes, in diffusers' layout, the components ARLON takes from Open-Sora as they are:

    dit/              the baseline STDiT (STDiT3-XL/2): `arlon train arlon --baseline OUT/dit`
    vae/              OpenSoraVAE: `arlon cache --vae OUT/vae`
    text_encoder/     T5-v1.1-XXL, 300 tokens (Open-Sora's): `--set data.text_encoder=OUT/text_encoder`;
                      the checkpoint's files are linked, not copied
    model_index.json  the components there are; the AR and the latent VQ-VAE come from training,
                      and `arlon assemble` completes the folder

The folder is written beside OUT and renamed into place once complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from arlon.errors import ArlonError
from arlon.models.opensora import (
    read_config,
    stdit_config,
    stdit_from_opensora,
    vae_from_opensora,
)
from arlon.models.opensora_vae import OpenSoraVAE
from arlon.models.stdit import STDiT
from arlon.models.text_encoder import SETTINGS_NAME, TextEncoder
from arlon.utils import write_json

# Open-Sora v1.2's T5 settings and its long-video loop: 20 latent frames, 5 of them the reference.
MAX_TEXT_TOKENS = 300
SETTINGS = {"segment_frames": 20, "reference_frames": 5, "fps": 24}


@dataclass(frozen=True)
class OpenSoraSources:
    """Local copies of hpcai-tech/OpenSora-STDiT-v3, hpcai-tech/OpenSora-VAE-v1.2 and
    DeepFloyd/t5-v1_1-xxl, as their owners publish them."""

    stdit: Path
    vae: Path
    text_encoder: Path

    def check(self) -> None:
        for name in ("stdit", "vae", "text_encoder"):
            folder = Path(getattr(self, name))
            if not folder.is_dir():
                raise ArlonError(f"the {name.replace('_', ' ')} folder {folder} does not exist")


def text_width(folder: Path) -> int:
    """The width of a transformers text encoder's states, from its config (T5: d_model)."""
    config = read_config(folder)
    width = config.get("d_model", config.get("hidden_size"))
    if not isinstance(width, int):
        raise ArlonError(f"{folder} is not a transformers text encoder (no config.json width)")
    return width


def check_tokenizer(folder: Path) -> None:
    """The text encoder's tokenizer loads (T5's, from `spiece.model`, needs sentencepiece)."""
    try:
        AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        spiece = (folder / "spiece.model").is_file()
        hint = " (T5's spiece.model needs: pip install sentencepiece protobuf)" if spiece else ""
        raise ArlonError(f"cannot load the tokenizer in {folder}: {reason}{hint}") from None


def link_text_encoder(source: Path, out: Path, max_length: int = MAX_TEXT_TOKENS) -> None:
    """A TextEncoder folder at `out` made of `source`'s files, hard-linked where the file system
    allows, else symlinked (T5-v1.1-XXL's checkpoint is tens of gigabytes)."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or any(part.startswith(".") for part in relative.parts):
            continue
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            os.symlink(path.resolve(), target)
    write_json(out / SETTINGS_NAME, {"max_length": max_length})


def convert_opensora(sources: OpenSoraSources, out: str | Path) -> Path:
    """Write the pipeline folder `out` (which must not exist yet) from `sources`."""
    sources.check()
    out = Path(out)
    if out.exists():
        raise ArlonError(f"{out} exists; convert into a new folder")
    width = text_width(sources.text_encoder)
    reads = stdit_config(read_config(sources.stdit))["text_dim"]
    if width != reads:
        raise ArlonError(f"the text encoder gives {width}-d states; this STDiT3 reads {reads}")
    check_tokenizer(sources.text_encoder)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stdit_from_opensora(sources.stdit).save_pretrained(tmp / "dit")
        vae_from_opensora(sources.vae).save_pretrained(tmp / "vae")
        link_text_encoder(sources.text_encoder, tmp / "text_encoder")
        index = {"_class_name": "ARLONPipeline", "converted_from": "opensora-1.2"}
        for name, cls in (("text_encoder", TextEncoder), ("dit", STDiT), ("vae", OpenSoraVAE)):
            index[name] = [cls.__module__, cls.__name__]
        write_json(tmp / "model_index.json", index | SETTINGS)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, out)
    return out

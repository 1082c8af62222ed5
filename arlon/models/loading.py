"""The one loader of model folders (`config.json` + safetensors, diffusers' layout).

    vae = load_model("runs/vae/model", "vae")    # VideoVAE, or a diffusers video autoencoder
    ar = load_model(embedded("ar"), "ar")        # float32, eval mode

The class comes from the folder's `config.json` (`_class_name`) and must be one this project
knows for that role: a folder cannot make the loader import arbitrary code. Every way a folder can
be wrong (missing, not JSON, another model, damaged weights) is a one-line `ArlonError`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from arlon.errors import ArlonError
from arlon.models.ar_transformer import ARTransformer
from arlon.models.latent_vqvae import LatentVQVAE
from arlon.models.opensora_vae import OpenSoraVAE
from arlon.models.pretrained_vae import LAYOUTS, PretrainedVideoVAE
from arlon.models.stdit import STDiT
from arlon.models.video_vae import VideoVAE
from arlon.utils import read_json

# role -> what it is called in messages, and the config `_class_name`s that may fill it
ROLES: dict[str, tuple[str, dict[str, type]]] = {
    "ar": ("AR transformer", {"ARTransformer": ARTransformer}),
    "vq": ("latent VQ-VAE", {"LatentVQVAE": LatentVQVAE}),
    "dit": ("DiT", {"STDiT": STDiT}),
    "vae": (
        "video VAE",
        {"VideoVAE": VideoVAE, "OpenSoraVAE": OpenSoraVAE}
        | dict.fromkeys(LAYOUTS, PretrainedVideoVAE),
    ),
}


def model_class(folder: str | Path, role: str) -> type:
    """The class that loads `folder` in `role` (`ar`, `vq`, `dit` or `vae`), from its config."""
    what, classes = ROLES[role]
    folder = Path(folder)
    if not folder.is_dir():
        raise ArlonError(f"{what} folder {folder} does not exist")
    name = read_json(folder / "config.json", what).get("_class_name")
    if name not in classes:
        raise ArlonError(f"{folder} holds a {name or 'model of no known class'}, not a {what}")
    return classes[name]


def load_model(folder: str | Path, role: str) -> torch.nn.Module:
    """The model saved in `folder`, in float32 and eval mode."""
    cls = model_class(folder, role)
    try:
        if cls is PretrainedVideoVAE:
            return cls.from_pretrained(folder)
        return cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    except ArlonError:
        raise
    except Exception as e:  # damaged weights, a config that does not build
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArlonError(f"cannot load the {ROLES[role][0]} in {folder}: {first}") from None

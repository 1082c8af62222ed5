"""The embedded `shapes-tiny` model, trained on the shapes world and shipped inside the package.

    from arlon.weights import ROOT, load_embedded
    vae = load_embedded("vae")                      # VideoVAE, float32, eval mode
    pipe = ARLONPipeline.from_pretrained(ROOT)      # the whole pipeline (arlon.pipeline)

ROOT is a pipeline folder (`model_index.json`); each component is a diffusers-style folder
(`config.json` + safetensors); README.md says which command retrains it. The VAE, the AR and the DiT
are stored in float16 (measured: no loss) and computed in float32. `vq-coarse` is not part of the
pipeline: it makes the coarse latents of a training cache.
"""

from __future__ import annotations

from pathlib import Path

from arlon.errors import ArlonError

ROOT = Path(__file__).resolve().parent / "shapes-tiny"


def embedded(component: str) -> Path:
    """The folder of an embedded component: `vae`, `vq` (the fine VQ-VAE), `vq-coarse`, `ar` or `dit`."""
    folder = ROOT / component
    if not (folder / "config.json").exists():
        known = (
            sorted(p.name for p in ROOT.iterdir() if (p / "config.json").exists())
            if ROOT.exists()
            else []
        )
        raise ArlonError(
            f"no embedded component {component!r}; embedded: {', '.join(known) or 'none'}"
        )
    return folder


def load_embedded(component: str):
    """An embedded component as a float32 model in eval mode."""
    from arlon.models.loading import load_model

    return load_model(embedded(component), "vq" if component.startswith("vq") else component)

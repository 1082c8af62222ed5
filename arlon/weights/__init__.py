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
    import torch

    from arlon.models.ar_transformer import ARTransformer
    from arlon.models.latent_vqvae import LatentVQVAE
    from arlon.models.stdit import STDiT
    from arlon.models.video_vae import VideoVAE

    cls = {"vae": VideoVAE, "ar": ARTransformer, "dit": STDiT}.get(component, LatentVQVAE)
    return cls.from_pretrained(embedded(component), torch_dtype=torch.float32).eval()

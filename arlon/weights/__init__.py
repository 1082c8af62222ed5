"""The embedded `shapes-tiny` model, trained on the shapes world and shipped inside the package.

    from arlon.weights import embedded
    vae = VideoVAE.from_pretrained(embedded("vae"))

Each component is a diffusers-style folder (`config.json` + safetensors); README.md says which
command retrains it.
"""

from __future__ import annotations

from pathlib import Path

from arlon.errors import ArlonError

ROOT = Path(__file__).resolve().parent / "shapes-tiny"


def embedded(component: str) -> Path:
    """The folder of an embedded component: `vae`, `vq-fine` or `vq-coarse`."""
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

"""Tests use one torch thread: tiny models run no slower, and results do not depend on the machine.

`smoke_pipeline()` is the minuscule ARLON pipeline the pipeline's, the CLI's and the web page's
tests generate with: 32x32 frames, 4x4 latents, 2x2 token frames; segments of 3 latent frames, 1
kept as reference (17 frames = 5 latent frames = 2 segments).
"""

import pytest
import torch

torch.set_num_threads(1)

# The prompt and length the pipeline's and `arlon generate`'s tests make (smoke: 17 frames = 5
# latent frames = 2 segments).
PROMPT = "a red circle moves right on a black background"
FRAMES = 17

# The smoke AR's tests: a prompt switch at token frame 5, and random token frames (2x2, 64 codes).
TIMELINE = [(0, "a red circle moves right"), (5, "a blue square moves up")]


def token_frames(b=2, t=4, seed=1) -> torch.Tensor:
    """`b` videos of `t` random token frames of the smoke AR `(b, t, 2, 2)`."""
    return torch.randint(0, 64, (b, t, 2, 2), generator=torch.Generator().manual_seed(seed))


def smoke_pipeline(vae=None):
    """A random smoke ARLONPipeline, the same every time, with every path of its DiT live; `vae`
    in place of the smoke video VAE (4 latent channels)."""
    from arlon.diffusion.rectified_flow import scheduler
    from arlon.models.ar_transformer import ar_transformer
    from arlon.models.latent_vqvae import latent_vqvae
    from arlon.models.stdit import stdit
    from arlon.models.text_encoder import TextEncoder
    from arlon.models.video_vae import video_vae
    from arlon.pipeline import ARLONPipeline

    torch.manual_seed(0)
    dit = stdit("smoke", arlon=True)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ARLONPipeline(
        TextEncoder.from_pretrained(),
        ar_transformer("smoke"),
        latent_vqvae("smoke", latent_channels=4),
        dit,
        scheduler(),
        vae or video_vae("smoke"),
        segment_frames=3,
        reference_frames=1,
    ).set_eval()


@pytest.fixture(scope="module")
def text_encoder():
    """The packaged text encoder, one per test module."""
    from arlon.models.text_encoder import TextEncoder

    return TextEncoder.from_pretrained()


@pytest.fixture(scope="module")
def pipe():
    """The smoke pipeline, one per test module."""
    return smoke_pipeline()


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    """The smoke pipeline saved as a model folder (`--model`)."""
    out = tmp_path_factory.mktemp("pipe") / "smoke"
    pipe.save_pretrained(out)
    return out

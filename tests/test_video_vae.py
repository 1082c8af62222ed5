"""The causal video VAE: shapes, causality, streaming equals full decoding, save/load, bad input."""

import pytest
import torch

from arlon.errors import ArlonError
from arlon.models.video_vae import VideoVAE, video_vae


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = VideoVAE(latent_channels=4, channels=(8, 16, 16, 16)).eval()
    # Non-trivial statistics, so normalisation is exercised.
    model.set_latent_stats([0.1, -0.2, 0.3, 0.0], [0.5, 2.0, 1.0, 1.5])
    return model


@pytest.fixture(scope="module")
def video():
    return torch.rand(2, 3, 17, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1


@torch.no_grad()
def test_shapes(vae, video):
    z = vae.encode(video)
    assert z.shape == (2, 4, 5, 4, 6)
    assert vae.decode(z).shape == video.shape


@torch.no_grad()
def test_causal_encoding(vae, video):
    # The first 1 + 4k frames alone give the first 1 + k latent frames of the whole clip.
    z = vae.encode(video)
    for k in range(4):
        assert torch.allclose(vae.encode(video[:, :, : 1 + 4 * k]), z[:, :, : 1 + k], atol=1e-5)


@torch.no_grad()
def test_streaming_decode_equals_full_decode(vae, video):
    z = vae.encode(video)
    full = vae.decode(z)
    one_by_one = torch.cat(list(vae.decode_stream(z[:, :, i : i + 1] for i in range(5))), dim=2)
    uneven = torch.cat(list(vae.decode_stream([z[:, :, :2], z[:, :, 2:3], z[:, :, 3:]])), dim=2)
    assert (one_by_one - full).abs().max() <= 1e-4
    assert (uneven - full).abs().max() <= 1e-4
    # The streaming caches are cleared afterwards: a plain decode is unaffected.
    assert torch.equal(vae.decode(z), full)


@torch.no_grad()
def test_streaming_encode_equals_full_encode(vae, video):
    chunks = [video[:, :, :5], video[:, :, 5:13], video[:, :, 13:]]
    streamed = torch.cat(list(vae.encode_stream(chunks)), dim=2)
    assert (streamed - vae.encode(video)).abs().max() <= 1e-4


def test_streaming_decode_memory_does_not_grow(vae):
    import tracemalloc

    z = torch.zeros(1, 4, 1, 4, 4)

    def peak(n):
        tracemalloc.start()
        for _ in vae.decode_stream(z for _ in range(n)):
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    with torch.no_grad():
        assert peak(200) < 1.5 * peak(20) + 100_000


def test_save_load_round_trip(vae, video, tmp_path):
    vae.save_pretrained(tmp_path)
    loaded = VideoVAE.from_pretrained(tmp_path).eval()
    assert loaded.config.latent_scale == vae.config.latent_scale
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), vae.encode(video))
        assert torch.equal(loaded.decode(vae.encode(video)), vae.decode(vae.encode(video)))


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 3, 16, 32, 32), "1 \\+ k\\*4"),
        ((1, 3, 5, 30, 32), "multiple of 8"),
        ((1, 4, 5, 32, 32), "expected a video"),
        ((3, 5, 32, 32), "expected a video"),
    ],
)
def test_bad_videos_are_clear_errors(vae, shape, message):
    with pytest.raises(ArlonError, match=message):
        vae.encode(torch.zeros(shape))


def test_bad_latents_and_preset(vae):
    with pytest.raises(ArlonError, match="expected latents"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ArlonError, match="unknown VAE preset"):
        video_vae("giant")

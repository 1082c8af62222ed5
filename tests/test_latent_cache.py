"""The latent cache: built once from a manifest, read back as windows for the VQ, AR and DiT stages."""

import json

import pytest
import torch

from arlon import cli
from arlon.data.latent_cache import LatentCache, LatentWindows, build_cache, encode_video
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.video_vae import video_vae


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    argv = [
        "world",
        "dataset",
        "--clips",
        "2",
        "--clip-frames",
        "17",
        "--episodes",
        "1",
        "--frames",
        "113",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vae = video_vae("smoke").eval()
    fine = latent_vqvae("smoke", latent_channels=4).eval()
    coarse = latent_vqvae("smoke", latent_channels=4, ratio=(1, 2, 2)).eval()
    return vae, fine, coarse


def test_cache_holds_causal_latents_codes_and_coarse_latents(dataset, models, tmp_path):
    vae, fine, coarse = models
    folder = build_cache(vae, dataset / "manifest.csv", tmp_path / "cache", fine, coarse, window=3)
    cache = LatentCache(folder)
    assert len(cache.entries) == 3
    episode = next(e for e in cache.entries if e.path.endswith("episode_000000.mp4"))
    # 113 frames = 1 + 4 * 28: every frame is encoded, chunk by chunk, exactly as in one pass.
    assert (episode.num_frames, episode.latent_frames) == (113, 29)
    tensors = cache.tensors(episode)
    assert torch.allclose(
        tensors["latents"].float(),
        encode_video(vae, episode.path, chunk_latents=29).half().float(),
        atol=2e-3,
    )
    assert tensors["codes"].shape[0] == 29 // 3
    assert tensors["coarse"].shape == (4, 27, 8, 8)
    truth = json.loads((dataset / "episodes" / "episode_000000.json").read_text())
    assert [list(t) for t in episode.timeline] == truth["timeline"]


def test_windows_carry_the_caption_in_force(dataset, models, tmp_path):
    vae, _, _ = models
    cache = LatentCache(build_cache(vae, dataset / "manifest.csv", tmp_path / "cache"))
    windows = LatentWindows(cache, window=4)
    item = windows[0]
    assert item["latents"].shape == (4, 4, 8, 8) and item["latents"].dtype == torch.float32
    episode = next(e for e in cache.entries if e.latent_frames == 29)
    for start, caption in episode.timeline:
        latent = (
            start + 3
        ) // 4  # the first latent frame whose first video frame is at or after start
        assert cache.caption_at(episode, latent) == caption


def test_cache_cli_errors(tmp_path, capsys):
    assert (
        cli.main(
            ["cache", "--vae", str(tmp_path), "--manifest", "m.csv", "--out", str(tmp_path / "c")]
        )
        == 1
    )
    assert "not a trained VAE folder" in capsys.readouterr().err


def test_vqvae_trains_on_a_cache_through_the_cli(dataset, models, tmp_path, capsys):
    vae, _, _ = models
    cache = build_cache(vae, dataset / "manifest.csv", tmp_path / "cache", window=4)
    out = tmp_path / "vq"
    argv = [
        "train",
        "vqvae",
        "--preset",
        "smoke",
        "--data",
        str(cache),
        "--out",
        str(out),
        "--set",
        "data.window=4",
    ]
    assert cli.main(argv) == 0
    from arlon.models.latent_vqvae import LatentVQVAE

    vq = LatentVQVAE.from_pretrained(out / "model")
    latents = LatentWindows(cache, window=4)[0]["latents"][None]
    assert vq.decode_codes(vq.encode(latents), num_frames=4).shape == latents.shape
    assert "usage_heldout" in (out / "eval.csv").read_text()
    assert cli.main(["train", "vqvae", "--preset", "smoke", "--out", str(tmp_path / "x")]) == 1
    assert "latent cache" in capsys.readouterr().err

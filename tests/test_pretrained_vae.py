"""PretrainedVideoVAE: tiny random diffusers autoencoders saved to a temp folder and loaded back."""

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLMochi,
    AutoencoderKLWan,
)

from arlon.errors import ArlonError
from arlon.models.pretrained_vae import PretrainedVideoVAE


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions gain nothing from threads and lose 10-100x to a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MEAN = [0.1, 0.2, -0.3, 0.0]
STD = [1.5, 2.0, 0.5, 1.0]


def tiny_wan():
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=MEAN,
        latents_std=STD,
    )
    return vae, (4, 8), MEAN, STD


def tiny_ltx(timestep_conditioning=False):
    vae = AutoencoderKLLTXVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=2,
        scaling_factor=2.0,
        timestep_conditioning=timestep_conditioning,
    )
    vae.latents_mean.copy_(torch.tensor(MEAN))
    vae.latents_std.copy_(torch.tensor(STD))
    return vae, (4, 8), MEAN, [s / 2.0 for s in STD]


def tiny_cogvideox():
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        sample_height=32,
        sample_width=32,
        scaling_factor=0.7,
    )
    return vae, (4, 8), [0.0] * 4, [1 / 0.7] * 4


def tiny_hunyuan_video():
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=2,
        scaling_factor=0.5,
    )
    return vae, (4, 8), [0.0] * 4, [2.0] * 4


def tiny_mochi():
    vae = AutoencoderKLMochi(
        encoder_block_out_channels=(32,) * 4,
        decoder_block_out_channels=(32,) * 4,
        latent_channels=4,
        layers_per_block=(1,) * 5,
        add_attention_block=(False,) * 5,
        latents_mean=MEAN,
        latents_std=STD,
        scaling_factor=0.5,
    )
    return vae, (6, 8), MEAN, [s / 0.5 for s in STD]


TINY = {
    "wan": tiny_wan,
    "ltx": tiny_ltx,
    "ltx-timestep": lambda: tiny_ltx(timestep_conditioning=True),
    "cogvideox": tiny_cogvideox,
    "hunyuan-video": tiny_hunyuan_video,
    "mochi": tiny_mochi,
}


def load_tiny(name, folder):
    torch.manual_seed(0)
    vae, ratios, shift, scale = TINY[name]()
    vae.save_pretrained(folder)
    return PretrainedVideoVAE.from_pretrained(folder), ratios, shift, scale


def video(t, frames=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 1 + frames * t, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("name", list(TINY))
def test_geometry_normalisation_and_round_trip(name, tmp_path):
    vae, (t, s), shift, scale = load_tiny(name, tmp_path)
    assert (vae.latent_channels, vae.temporal_ratio, vae.spatial_ratio) == (4, t, s)
    x = video(t)
    with torch.inference_mode():
        z = vae.encode(x)
        assert z.shape == (1, 4, 3, 32 // s, 32 // s)
        shift = torch.tensor(shift).view(1, -1, 1, 1, 1)
        scale = torch.tensor(scale).view(1, -1, 1, 1, 1)
        raw = vae.vae.encode(x).latent_dist.mode()
        torch.testing.assert_close(z, (raw - shift) / scale)
        y = vae.decode(z)
        assert y.shape == x.shape
        assert y.abs().max() <= 1
        assert torch.isfinite(y).all()
        # decode un-normalises with the same statistics encode normalised with
        torch.testing.assert_close(vae.decode((raw - shift) / scale), y)
        # an even number of latent frames too (CogVideoX decodes those differently)
        odd = video(t, frames=1)
        assert vae.decode(vae.encode(odd)).shape == odd.shape
        z_sampled = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        again = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert z_sampled.shape == z.shape
    assert torch.equal(z_sampled, again)


def test_wan_stream_equals_whole_decode(tmp_path):
    vae, *_ = load_tiny("wan", tmp_path)
    z = torch.randn(1, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = vae.decode(z)
        chunks = list(vae.decode_stream([z[:, :, :1], z[:, :, 1:3], z[:, :, 3:]]))
    assert [c.shape[2] for c in chunks] == [1, 8, 8]
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["ltx", "cogvideox"])
def test_chunked_stream_gives_the_right_frames(name, tmp_path):
    vae, *_ = load_tiny(name, tmp_path)
    z = torch.randn(1, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        chunks = list(vae.decode_stream([z[:, :, :2], z[:, :, 2:3], z[:, :, 3:]]))
        # each later chunk decoded after one latent frame of context, its own frames kept
        expected = [
            vae.decode(z[:, :, :2]),
            vae.decode(z[:, :, 1:3])[:, :, -4:],
            vae.decode(z[:, :, 2:])[:, :, -8:],
        ]
    assert [c.shape[2] for c in chunks] == [5, 4, 8]
    assert sum(c.shape[2] for c in chunks) == vae.video_frames(5)
    for chunk, frames in zip(chunks, expected, strict=True):
        torch.testing.assert_close(chunk, frames)


def test_save_pretrained_round_trip(tmp_path):
    vae, *_ = load_tiny("wan", tmp_path / "a")
    vae.save_pretrained(tmp_path / "b")
    again = PretrainedVideoVAE.from_pretrained(tmp_path, subfolder="b")
    z = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(again.decode(z), vae.decode(z))
    torch.testing.assert_close(again.shift, vae.shift)


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(ArlonError, match="config.json not found"):
        PretrainedVideoVAE.from_pretrained(tmp_path / "missing")

    image_vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=2, latent_channels=4)
    image_vae.save_pretrained(tmp_path / "image")
    with pytest.raises(ArlonError, match="AutoencoderKL, not a supported"):
        PretrainedVideoVAE.from_pretrained(tmp_path / "image")

    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    with pytest.raises(ArlonError, match="not a diffusers model config"):
        PretrainedVideoVAE.from_pretrained(tmp_path / "corrupt")

    torch.manual_seed(0)
    tiny_wan()[0].save_pretrained(tmp_path / "wan")
    config = json.loads((tmp_path / "wan" / "config.json").read_text())
    config["base_dim"] = 16  # the weights no longer fit
    (tmp_path / "wan" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArlonError, match="cannot load the AutoencoderKLWan"):
        PretrainedVideoVAE.from_pretrained(tmp_path / "wan")
    (tmp_path / "wan" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ArlonError, match="cannot load the AutoencoderKLWan"):
        PretrainedVideoVAE.from_pretrained(tmp_path / "wan")


def test_bad_inputs_give_clear_errors(tmp_path):
    vae, *_ = load_tiny("wan", tmp_path)
    with pytest.raises(ArlonError, match="1 \\+ k\\*4 frames"):
        vae.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ArlonError, match="not a multiple of 8"):
        vae.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ArlonError, match="expected latents"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))

"""Reconstruction metrics, measured on stand-in autoencoders with known behaviour."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arlon.errors import ArlonError
from arlon.evaluation.recon import (
    centre_crop_resize,
    code_stability,
    real_clips,
    real_recon,
    ssim,
    world_recon,
)
from arlon.frames import PSNR_CAP, psnr
from arlon.models.autoencoder import VideoAutoencoder


class PoolAutoencoder(VideoAutoencoder):
    """Average-pool 8x8 spatially and keep every 4th frame; decode by nearest upsampling."""

    latent_channels, temporal_ratio, spatial_ratio = 3, 4, 8

    def encode(self, video, sample=False, generator=None):
        self.check_video(video)
        b, c, t, h, w = video.shape
        frames = video[:, :, :: self.temporal_ratio].transpose(1, 2).flatten(0, 1)
        pooled = F.avg_pool2d(frames, self.spatial_ratio)  # (B T', C, h, w)
        return pooled.unflatten(0, (b, -1)).transpose(1, 2)

    def decode(self, latents):
        up = latents.repeat_interleave(self.spatial_ratio, 3).repeat_interleave(
            self.spatial_ratio, 4
        )
        # latent frame j > 0 stands for frames 4j - 3 .. 4j
        return torch.cat([up[:, :, :1], up[:, :, 1:].repeat_interleave(4, 2)], dim=2)


class IdentityAutoencoder(VideoAutoencoder):
    latent_channels, temporal_ratio, spatial_ratio = 3, 1, 1

    def encode(self, video, sample=False, generator=None):
        return video

    def decode(self, latents):
        return latents


def without_timing(report):
    return {k: v for k, v in report.items() if k not in ("seconds", "frames_per_second")}


def test_world_recon_of_a_lossy_autoencoder():
    vae = PoolAutoencoder()
    report = world_recon(vae, clips=4, num_frames=9, batch_size=3, progress=False)
    assert report["clips"] == 4 and report["frames"] == 36
    assert math.isfinite(report["psnr"]) and 5 < report["psnr"] < 60
    assert 0 < report["ssim"] < 1
    for name in ("colour", "shape", "background", "attribute"):
        assert report[name] is None or 0 <= report[name] <= 1
    assert report["frames_per_second"] > 0
    same = world_recon(vae, clips=4, num_frames=9, codec=lambda z: z, progress=False)
    assert without_timing(same) == without_timing(report)


def test_world_recon_of_a_perfect_autoencoder():
    report = world_recon(IdentityAutoencoder(), clips=4, progress=False)
    assert report["psnr"] == PSNR_CAP
    assert report["ssim"] == pytest.approx(1.0)
    assert report["colour"] == report["shape"] == report["background"] == 1.0
    assert report["attribute"] == 1.0


class PatchCodes:
    """A stand-in VQ-VAE on `PoolAutoencoder`'s latents: one code per 8x8-pixel patch, its mean
    colour quantised finely (`noise`: a random code instead, drawn anew at every call)."""

    ratio = (1, 1, 1)

    def __init__(self, noise=False):
        self.noise = noise

    def encode(self, latents):
        if self.noise:
            return torch.randint(0, 64, (latents.shape[0], *latents.shape[2:]))
        levels = ((latents + 1) * 1000).round().long()  # (B, 3, T, h, w)
        return levels[:, 0] * 10**8 + levels[:, 1] * 10**4 + levels[:, 2]


def test_code_stability_separates_codes_that_follow_the_picture_from_noise():
    vae = PoolAutoencoder()
    exact = code_stability(vae, PatchCodes(), clips=6, num_frames=17, tolerance=0, progress=False)
    assert exact["flicker"] == 0  # a patch whose pixels stay put keeps its code
    assert exact["follow"] > 0.5
    assert 0.3 < exact["still"] < 1  # objects move over part of the frame
    moved = 1 - exact["still"]
    assert exact["kept"] == pytest.approx(1 - moved * exact["follow"])
    noise = code_stability(vae, PatchCodes(noise=True), clips=6, num_frames=17, progress=False)
    assert noise["flicker"] > 0.9 and noise["kept"] < 0.1
    coarse_in_time = PatchCodes()
    coarse_in_time.ratio = (2, 1, 1)
    with pytest.raises(ArlonError, match="r_t must be 1"):
        code_stability(vae, coarse_in_time, clips=1, progress=False)


def test_codec_is_applied_between_encode_and_decode():
    noisy = world_recon(
        IdentityAutoencoder(), clips=2, num_frames=5, codec=lambda z: z + 0.1, progress=False
    )
    assert noisy["psnr"] < 30


def test_psnr_and_ssim():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    assert psnr(a, a) == PSNR_CAP
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2))
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, a.shape, dtype=np.uint8)
    assert ssim(b, b) == pytest.approx(1.0)
    assert ssim(b, rng.integers(0, 256, a.shape, dtype=np.uint8)) < 0.1


def test_centre_crop_keeps_the_middle():
    clip = np.zeros((3, 2, 40, 80), np.uint8)
    clip[:, :, :, 20:60] = 255  # the central square
    frames = centre_crop_resize(clip, 16, 16)
    assert frames.shape == (2, 16, 16, 3)
    assert (frames == 255).all()


def test_real_recon_on_the_packaged_clips():
    report = real_recon(PoolAutoencoder(), num_frames=9, progress=False)
    assert len(report["files"]) >= 1
    assert math.isfinite(report["psnr"]) and report["psnr"] > 10
    assert all(math.isfinite(f["psnr"]) for f in report["files"].values())


def test_real_recon_skips_unreadable_files(tmp_path):
    clips = real_clips()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    report = real_recon(PoolAutoencoder(), [*clips[-1:], junk], num_frames=9, progress=False)
    assert list(report["files"]) == [clips[-1].name]
    assert report["skipped"] == ["junk.mp4"]
    with pytest.raises(ArlonError, match="could be read"):
        real_recon(PoolAutoencoder(), [junk], num_frames=9, progress=False)


def test_frame_counts_the_autoencoder_cannot_take_are_clear_errors():
    with pytest.raises(ArlonError, match="1 \\+ k\\*4 frames"):
        world_recon(PoolAutoencoder(), clips=1, num_frames=8, progress=False)

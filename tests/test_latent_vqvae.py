"""Latent VQ-VAE: shapes and padding, same path for codes and forward, it learns, codebook
statistics, save/load, clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from arlon.errors import ArlonError
from arlon.models.latent_vqvae import LATENT_VQVAE_PRESETS, LatentVQVAE, latent_vqvae

# Widths and depths per resolution level, for the smoke preset at other ratios.
SIZES = {
    (1, 1, 1): dict(block_channels=(16,), num_res_blocks=(1,)),
    (1, 2, 2): dict(block_channels=(8, 16), num_res_blocks=(0, 1)),
    (1, 4, 4): dict(block_channels=(8, 8, 16), num_res_blocks=(0, 0, 1)),
    (2, 2, 2): dict(block_channels=(8, 16), num_res_blocks=(0, 1)),
    (4, 2, 2): dict(block_channels=(8, 8, 16), num_res_blocks=(0, 0, 1)),
}


def smoke(ratio=(1, 2, 2), **overrides) -> LatentVQVAE:
    torch.manual_seed(0)
    return latent_vqvae("smoke", 4, ratio=ratio, **SIZES[ratio], **overrides)


def latents(b=2, c=4, t=5, h=8, w=8, seed=1) -> torch.Tensor:
    return torch.randn(b, c, t, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "ratio, t, grid",
    [
        ((1, 1, 1), 5, (5, 8, 8)),
        ((1, 2, 2), 5, (5, 4, 4)),
        ((1, 4, 4), 5, (5, 2, 2)),
        ((2, 2, 2), 4, (2, 4, 4)),
        ((2, 2, 2), 5, (3, 4, 4)),  # 1 + 4k frames: the front is padded, then cropped
        ((4, 2, 2), 5, (2, 4, 4)),
        ((4, 2, 2), 1, (1, 4, 4)),
    ],
)
def test_shapes_and_code_range(ratio, t, grid):
    vq = smoke(ratio).eval()
    x = latents(t=t)
    codes = vq.encode(x)
    assert codes.shape == (2, *grid) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < vq.codebook_size
    assert vq.token_grid(t, 8, 8) == grid
    assert vq.tokens_per_frame(8, 8) == grid[1] * grid[2]
    assert vq.decode_codes(codes, num_frames=t).shape == x.shape
    assert vq.decode_codes(codes).shape == (2, 4, grid[0] * ratio[0], 8, 8)
    out = vq(x)
    assert out.reconstruction.shape == x.shape and out.codes.shape == codes.shape


def test_front_padding_repeats_the_first_frame():
    """With r_t = 4 a 5-frame latent is coded as the frames [0, 0, 0, 0, 1, 2, 3, 4], and decoding
    with num_frames=5 keeps the last 5 frames."""
    vq = smoke((4, 2, 2)).eval()
    x = latents(t=5)
    padded = torch.cat([x[:, :, :1]] * 3 + [x], dim=2)
    codes = vq.encode(x)
    assert torch.equal(codes, vq.encode(padded))
    assert torch.equal(vq.decode_codes(codes, num_frames=5), vq.decode_codes(codes)[:, :, 3:])


def _train(vq: LatentVQVAE, x: torch.Tensor, steps: int = 30):
    """`steps` Adam steps on `x`: the losses and the last output."""
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        out = vq(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses, out


FSQ = dict(quantization="fsq", levels=(4, 4, 4), codebook_size=64)  # the smoke preset's 64 codes


@pytest.mark.parametrize(
    "ratio, quantizer",
    [
        ((1, 2, 2), {}),
        ((4, 2, 2), {}),
        ((4, 2, 2), FSQ),
        ((1, 2, 2), {**FSQ, "per_frame": True}),
        ((1, 2, 2), {**FSQ, "local_encoder": True}),
    ],
    ids=["vq", "vq-time", "fsq-time", "fsq-per-frame", "fsq-local"],
)
def test_decode_codes_is_the_forward_path(ratio, quantizer):
    vq = smoke(ratio, **quantizer).eval()
    x = latents(t=5)
    with torch.no_grad():
        out = vq(x)
    codes = vq.encode(x)
    assert torch.equal(codes, out.codes)
    assert torch.equal(vq.decode_codes(codes, num_frames=5), out.reconstruction)
    assert torch.allclose(out.loss, torch.mean((out.reconstruction - x) ** 2))


def test_training_lowers_the_loss_and_uses_the_codebook():
    vq = smoke().train()
    x = latents(b=4, t=3)
    losses, out = _train(vq, x)
    assert out.commit_loss.ndim == 0 and out.commit_loss.item() > 0
    assert losses[-1] < 0.5 * losses[0]
    assert 0 < vq.usage() <= 1
    # Every training forward counts its codes: the tracker has seen at least the last batch's.
    assert vq.usage() >= vq.codebook_stats(out.codes)["usage"]
    vq.reset_usage()
    assert vq.usage() == 0
    vq.eval()
    vq(x)
    assert vq.usage() == 0  # evaluation does not count


def test_dead_codes_are_replaced():
    """The EMA cluster sizes start at 1, below the threshold of 2: the first training batch
    replaces the random codebook by vectors of the batch (on the unit sphere: cosine codes)."""
    vq, x = smoke().train(), latents()
    with torch.no_grad():
        z = vq._frames(vq.encoder, x)  # (B, D, t, h, w): what the quantizer is given
    batch = F.normalize(z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1]), dim=-1)
    nearest = torch.cdist(vq.quantizer.codebook, batch).min(1).values
    assert nearest.min() > 0.1  # a random codebook: no code is a vector of the batch
    vq(x)
    nearest = torch.cdist(vq.quantizer.codebook, batch).min(1).values
    assert nearest.max() < 1e-3  # every code is one of them now


def test_frozen_codes_train_the_decoder_alone():
    """After `freeze_codes`, training moves the decoder only: the encoder, the codebook and so
    every latent's codes stay as they were, while the reconstruction still improves."""
    vq = smoke().train()
    x = latents(b=4, t=3)
    vq(x)  # the first training forward replaces the random codebook (see above)
    vq.freeze_codes()
    assert vq.training and not vq.encoder.training and not vq.quantizer.training
    encoder = {k: v.clone() for k, v in vq.encoder.state_dict().items()}
    codebook, codes = vq.quantizer.codebook.clone(), vq.encode(x)
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        out = vq(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert torch.equal(vq.quantizer.codebook, codebook) and torch.equal(vq.encode(x), codes)
    assert all(torch.equal(v, encoder[k]) for k, v in vq.encoder.state_dict().items())
    vq.eval().train()  # switching modes does not wake the encoder or the codebook
    assert vq.decoder.training and not vq.encoder.training and not vq.quantizer.training


def test_codebook_stats_exact():
    vq = smoke()  # K = 64
    codes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).view(1, 2, 2, 2)
    stats = vq.codebook_stats(codes)
    assert stats["usage"] == 4 / 64
    assert math.isclose(stats["perplexity"], 4.0, rel_tol=1e-6)
    skewed = torch.tensor([5, 5, 5, 9]).view(1, 1, 2, 2)  # p = (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(vq.codebook_stats(skewed)["perplexity"], math.exp(entropy), rel_tol=1e-6)


@pytest.mark.parametrize("quantizer", [{}, FSQ], ids=["vq", "fsq"])
def test_save_and_load_round_trip(tmp_path, quantizer):
    vq = smoke((4, 2, 2), **quantizer).train()
    x = latents(t=5)
    vq(x)  # move the codebook off its initial state
    vq.eval()
    vq.save_pretrained(tmp_path / "vq")
    loaded = LatentVQVAE.from_pretrained(tmp_path / "vq").eval()
    assert loaded.ratio == (4, 2, 2)
    codes = vq.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode_codes(codes, 5), vq.decode_codes(codes, 5))


def test_presets_build():
    assert set(LATENT_VQVAE_PRESETS) >= {"smoke", "shapes-tiny-fine", "shapes-tiny-coarse"}
    fine = latent_vqvae("shapes-tiny-fine", 8)
    assert fine.token_grid(9, 8, 8) == (9, 8, 8)
    assert latent_vqvae("shapes-tiny-coarse", 8).token_grid(9, 8, 8) == (9, 4, 4)
    with torch.device("meta"):
        paper = latent_vqvae("opensora-1.2-fine", 4)
    assert paper.token_grid(17, 64, 64) == (5, 8, 8)
    with pytest.raises(ArlonError, match="known: smoke"):
        latent_vqvae("huge", 8)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 4, 8, 8), "expected latents"),
        ((2, 3, 5, 8, 8), "expected latents"),
        ((2, 4, 5, 7, 8), "not a multiple"),
        ((2, 4, 0, 8, 8), "at least one frame"),
    ],
)
def test_bad_latents(shape, match):
    vq = smoke().eval()
    with pytest.raises(ArlonError, match=match):
        vq.encode(torch.zeros(shape))
    with pytest.raises(ArlonError, match=match):
        vq(torch.zeros(shape))


def test_bad_codes_and_config():
    vq = smoke((4, 2, 2)).eval()
    with pytest.raises(ArlonError, match="integer codes"):
        vq.decode_codes(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ArlonError, match=r"\[0, 64\)"):
        vq.decode_codes(torch.full((1, 2, 4, 4), 64))
    with pytest.raises(ArlonError, match="not 9"):
        vq.decode_codes(torch.zeros(1, 2, 4, 4, dtype=torch.long), num_frames=9)
    with pytest.raises(ArlonError, match="power of 2"):
        latent_vqvae("smoke", 4, ratio=(3, 2, 2))
    with pytest.raises(ArlonError, match="one entry each per level"):
        latent_vqvae("smoke", 4, ratio=(1, 8, 8))
    with pytest.raises(ArlonError, match="multiply to its codebook size 64"):
        latent_vqvae("smoke", 4, quantization="fsq", levels=(8, 5, 5, 5))
    with pytest.raises(ArlonError, match="'vq' or 'fsq'"):
        latent_vqvae("smoke", 4, quantization="lfq")


def test_per_frame_codes_depend_on_their_frame_alone():
    vq = smoke(per_frame=True).eval()
    x = latents(t=6)
    still = x[:, :, :1].expand(-1, -1, 6, -1, -1)
    codes = vq.encode(still)
    assert all(torch.equal(codes[:, 0], codes[:, i]) for i in range(6))  # a still scene keeps them
    changed = x.clone()
    changed[:, :, 3] += 1
    a, b = vq.encode(x), vq.encode(changed)
    assert torch.equal(a[:, :3], b[:, :3]) and torch.equal(a[:, 4:], b[:, 4:])
    assert not torch.equal(a[:, 3], b[:, 3])
    mixed = smoke().eval()  # across time, the same frame codes differently where it sits
    assert not torch.equal(mixed.encode(x)[:, 4:], mixed.encode(changed)[:, 4:])
    with pytest.raises(ArlonError, match="r_t = 1"):
        smoke((4, 2, 2), per_frame=True)


def test_local_codes_depend_on_their_cells_alone():
    """A local encoder's code changes only where the latent under it does; the default encoder's
    convolutions and attention carry a change into codes elsewhere in the frame and in time."""
    fsq = dict(quantization="fsq", levels=(4, 4, 4), codebook_size=64)
    x = latents(t=4)
    changed = x.clone()
    changed[:, :, 2, 4:6, 2:4] = -4 * x[:, :, 2, 4:6, 2:4]  # the cells of code (2, 1), frame 2
    others = torch.ones(4, 4, 4, dtype=torch.bool)
    others[2, 2, 1] = False
    local = smoke(local_encoder=True, **fsq).eval()
    assert torch.equal(local.encode(x)[:, others], local.encode(changed)[:, others])
    z, z_changed = local.encoder(x), local.encoder(changed)  # (B, D, t, h, w), before rounding
    assert torch.equal(z[:, :, others], z_changed[:, :, others])
    assert not torch.allclose(z[:, :, 2, 2, 1], z_changed[:, :, 2, 2, 1])
    mixed = smoke(**fsq).eval()
    assert not torch.allclose(mixed.encoder(x)[:, :, others], mixed.encoder(changed)[:, :, others])
    with pytest.raises(ArlonError, match="local encoder needs r_t = 1"):
        smoke((2, 2, 2), local_encoder=True)


def test_hysteresis_keeps_the_codes_of_a_wavering_still_patch():
    """A still latent with a little noise on top flips plain FSQ codes from frame to frame; with
    hysteresis the codes flip far less often, a real change still changes them, and a hysteresis
    too small to matter gives FSQ's own codes (so the values it rounds are the library's)."""
    fsq = dict(quantization="fsq", levels=(4, 4, 4), codebook_size=64, local_encoder=True)
    plain = smoke(**fsq).eval()
    with torch.no_grad():  # untrained, every cell would round to one code
        plain.quantizer.project_in.weight.mul_(30)
    sticky = smoke(**fsq, hysteresis=0.25).eval()
    sticky.load_state_dict(plain.state_dict())
    still = latents(t=1).expand(-1, -1, 24, -1, -1)
    wavering = still + 0.3 * latents(t=24, seed=2)

    def flips(codes):  # the share of codes that differ from the frame before
        return (codes[:, 1:] != codes[:, :-1]).float().mean().item()

    assert flips(sticky.encode(wavering)) < 0.5 * flips(plain.encode(wavering))
    moving = latents(t=24, seed=3)  # a new picture every frame
    assert flips(sticky.encode(moving)) > 0.5 * flips(plain.encode(moving)) > 0
    sticky.hysteresis = 1e-9
    assert torch.equal(sticky.encode(wavering), plain.encode(wavering))
    for bad in (dict(quantization="vq"), dict(**fsq, hysteresis=0.5)):
        with pytest.raises(ArlonError, match="hysteresis"):
            smoke(**{**fsq, "hysteresis": 0.25, **bad})


def test_fsq_codes_train_with_the_reconstruction_alone():
    """FSQ has no codebook to learn and no commitment loss; its codes still follow the data."""
    vq = smoke(**FSQ).train()
    losses, out = _train(vq, latents(b=4, t=3))
    assert out.commit_loss.item() == 0
    assert losses[-1] < 0.5 * losses[0]
    assert vq.codebook_stats(out.codes)["usage"] > 0.25  # of 64 codes, on 4 x 3 x 4 x 4 = 192 cells


@pytest.mark.parametrize("ratio", [(1, 1, 1), (2, 2, 2)])
def test_coarse_latents_decode_each_window_across_its_seams(ratio):
    """Windows of 3 token frames decoded with 2 frames of their neighbours: a window's latents
    depend on the codes within 2 frames of it and on no others, each window comes out as soon as
    that context is in, the codes of a video being continued are the first window's context, and
    without context each window is decoded alone."""
    from arlon.pipeline.coarse import coarse_latents

    vq = smoke(ratio).eval()
    g = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 64, (4, 4), generator=g) for _ in range(9)]
    consumed = []

    def stream(codes):
        for i, f in enumerate(codes):
            consumed.append(i)
            yield f

    def windows(codes, context=2):
        return list(coarse_latents(stream(codes), vq, 3, context))

    first = next(coarse_latents(stream(frames), vq, 3, 2))
    assert consumed == [0, 1, 2, 3, 4]  # window 0 and 2 frames of window 1, no more
    out = windows(frames)
    assert len(out) == 3 and all(
        w.shape == (1, 4, 3 * ratio[0], 4 * ratio[1], 4 * ratio[2]) for w in out
    )
    assert torch.equal(first, out[0])
    alone = windows(frames, context=0)
    for k, window in zip((0, 3, 6), alone, strict=True):
        assert torch.equal(window, vq.decode_codes(torch.stack(frames[k : k + 3])[None]))
    assert not torch.allclose(out[1], alone[1])  # the middle window sees both neighbours
    far, near = list(frames), list(frames)
    far[0], far[8] = (frames[0] + 1) % 64, (frames[8] + 1) % 64  # 3 frames from window 1
    near[7] = (frames[7] + 1) % 64  # 2 frames after window 1
    far_out = windows(far)
    assert torch.equal(far_out[1], out[1]) and not torch.equal(far_out[0], out[0])
    assert not torch.equal(windows(near)[1], out[1])
    # Continuing a video: the codes before are the first window's left context, so the windows
    # come out as they do in the whole stream.
    continued = list(coarse_latents(frames[3:], vq, 3, 2, history=frames[:3]))
    assert len(continued) == 2 and all(map(torch.equal, continued, out[1:]))
    with pytest.raises(ArlonError, match="2 token frames left over"):
        windows(frames[:8])
    with pytest.raises(ArlonError, match="context must lie"):
        windows(frames, context=4)

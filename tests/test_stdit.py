"""The STDiT, ARLON's semantic injection, and rectified flow: exact baseline start, references kept,
one Euler step by hand, guidance, uncertainty sampling, presets, and the two training stages."""

import json

import pytest
import torch

from arlon import cli
from arlon.data.latent_cache import build_cache
from arlon.diffusion.rectified_flow import flow_loss, guided, sample, scheduler
from arlon.errors import ArlonError
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.stdit import STDiT, gelu_tanh, stdit, uncertainty_sample
from arlon.models.video_vae import video_vae


def latent(b=2, t=3, seed=0) -> torch.Tensor:
    return torch.randn(b, 4, t, 4, 4, generator=torch.Generator().manual_seed(seed))


def text(b=2, length=5):
    states = torch.randn(b, length, 384, generator=torch.Generator().manual_seed(9))
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, 3:] = False  # the last caption is shorter
    return states, mask


def randomise(model: torch.nn.Module, seed=0) -> torch.nn.Module:
    """Every weight random, zero-initialised ones included, so that no path is silent."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(0)
    return randomise(stdit("smoke")).eval()


def test_velocity_has_the_latent_shape_and_bad_sizes_are_clear(baseline):
    x = latent()
    states, mask = text()
    assert baseline(x, torch.tensor([10.0, 900.0]), states, mask).shape == x.shape
    with pytest.raises(ArlonError, match="patch size"):
        baseline(torch.randn(1, 4, 3, 5, 4), torch.tensor([1.0]))
    with pytest.raises(ArlonError, match="frame_mask"):
        baseline(x, torch.tensor([1.0, 1.0]), frame_mask=torch.zeros(2, 5, dtype=torch.bool))


def test_arlon_built_from_a_baseline_computes_exactly_the_baseline(baseline):
    arlon = STDiT.from_baseline(baseline, injection_blocks=1).eval()
    x, t = latent(), torch.tensor([300.0, 700.0])
    states, mask = text()
    expected = baseline(x, t, states, mask)
    assert torch.equal(arlon(x, t, states, mask, condition=latent(seed=5)), expected)
    assert torch.equal(arlon(x, t, states, mask), expected)
    # once the injection has weights, the condition steers the output
    randomise(arlon.condition_path)
    randomise(arlon.injected_blocks()[0].injection)
    assert not torch.allclose(arlon(x, t, states, mask, condition=latent(seed=5)), expected)
    assert torch.equal(arlon(x, t, states, mask), expected)  # no condition: the backbone alone


def test_injection_goes_into_the_first_or_last_temporal_blocks():
    first = stdit("smoke", arlon=True, depth=3, injection_blocks=2)
    last = stdit("smoke", arlon=True, depth=3, injection_blocks=2, injection_position="last")
    temporal = [i for i, b in enumerate(first.blocks) if b.temporal]
    assert temporal == [1, 3, 5]
    assert [i for i, b in enumerate(first.blocks) if b.injection is not None] == [1, 3]
    assert [i for i, b in enumerate(last.blocks) if b.injection is not None] == [3, 5]
    names = {n for n, _ in first.named_parameters()}
    backbone = {id(p) for p in first.backbone_parameters()}
    injected = {n for n, p in first.named_parameters() if id(p) not in backbone}
    assert injected and all("injection" in n or n.startswith("condition_path") for n in injected)
    assert names - injected == {n for n, _ in stdit("smoke", depth=3).named_parameters()}


def test_reference_frames_get_timestep_zero(baseline):
    """A reference frame is seen at t = 0 whatever the segment's timestep."""
    x = latent(b=1)
    states, mask = text(b=1)
    ref = torch.tensor([[True, False, False]])
    masked = baseline(x, torch.tensor([999.0]), states, mask, frame_mask=ref)
    per_frame = baseline(x, torch.tensor([[0.0, 999.0, 999.0]]), states, mask)
    assert torch.allclose(masked, per_frame, atol=1e-6)
    assert not torch.allclose(masked, baseline(x, torch.tensor([999.0]), states, mask))


def test_one_euler_step_is_the_hand_computed_value(baseline):
    noise = latent(b=1)
    states, mask = text(b=1)
    out = sample(guided(baseline, 1.0), noise, 1, states, mask)
    # one step from sigma 1 to 0: x0 = x1 - v(x1, t=1000)
    v = baseline(noise, torch.tensor([1000.0]), states, mask)
    assert torch.allclose(out, noise - v, atol=1e-5)
    sched = scheduler()
    sched.set_timesteps(3)
    s0, s1 = sched.sigmas[0].item(), sched.sigmas[1].item()
    steps = []
    sample(guided(baseline, 1.0), noise, 3, states, mask, callback=lambda i, x: steps.append(x))
    v0 = baseline(noise, torch.tensor([1000.0 * s0]), states, mask)
    assert torch.allclose(steps[0], noise + (s1 - s0) * v0, atol=1e-5)


def test_reference_frames_stay_exactly_fixed_through_sampling(baseline):
    noise, reference = latent(seed=1), latent(seed=2)
    states, mask = text()
    frame_mask = torch.tensor([[True, True, False], [True, False, False]])
    out = sample(guided(baseline, 3.0), noise, 4, states, mask, reference, frame_mask)
    assert torch.equal(out[0, :, :2], reference[0, :, :2])
    assert torch.equal(out[1, :, :1], reference[1, :, :1])
    assert not torch.allclose(out[1, :, 1:], reference[1, :, 1:])


def test_guidance_mixes_the_text_and_null_predictions(baseline):
    x, t = latent(), torch.tensor([500.0, 500.0])
    states, mask = text()
    cond = baseline(x, t, states, mask)
    null = baseline(x, t, states, mask, drop_caption=torch.ones(2, dtype=torch.bool))
    assert torch.allclose(null, baseline(x, t), atol=1e-5)  # dropped = no caption at all
    assert torch.allclose(
        guided(baseline, 4.0)(x, t, states, mask), null + 4 * (cond - null), atol=1e-4
    )
    assert torch.equal(guided(baseline, 1.0)(x, t, states, mask), cond)


def test_sampling_errors_are_one_line(baseline):
    noise = latent()
    with pytest.raises(ArlonError, match="steps must be a positive integer"):
        sample(guided(baseline, 1.0), noise, 0)
    with pytest.raises(ArlonError, match="reference mask covers 5 frames"):
        sample(guided(baseline, 1.0), noise, 2, reference=noise, frame_mask=torch.ones(2, 5).bool())
    for strength, start, message in [
        (0.0, noise, "lie in"),
        (1.5, noise, "lie in"),
        (0.5, None, "latent to start from"),
        (0.5, noise[:1], "of the noise's shape"),
        (0.9, noise, "keeps all 5 steps, from pure noise"),  # 5 - int(5 * 0.1)
    ]:
        with pytest.raises(ArlonError, match=message):
            sample(guided(baseline, 1.0), noise, 5, start=start, strength=strength)


@pytest.mark.parametrize("strength, steps", [(1.0, 5), (0.6, 3), (0.5, 3), (0.3, 2), (0.01, 1)])
def test_a_strength_starts_from_the_noised_latent_and_runs_the_steps_below(strength, steps):
    """With the straight path's own velocity (noise - start), Euler lands on `start` from any
    time; a strength s runs the last 5 - int(5 (1 - s)) of 5 steps (diffusers' img2img), from
    start noised to the first of their times."""
    noise, start = latent(seed=1), latent(seed=2)
    times = []

    def velocity(x, t, *args, **kwargs):
        times.append(t[0].item())
        return noise - start

    out = sample(velocity, noise, 5, start=start, strength=strength)
    assert len(times) == steps and torch.allclose(out, start, atol=1e-5)
    sched = scheduler()
    sched.set_timesteps(5)
    assert times == sched.timesteps.tolist()[5 - steps :]
    first = []
    sample(
        velocity, noise, 5, start=start, strength=strength, callback=lambda i, x: first.append(x)
    )
    # start noised to the first time it runs, then one Euler step down
    s0, s1 = sched.sigmas[5 - steps].item(), sched.sigmas[6 - steps].item()
    one_step = s0 * noise + (1 - s0) * start + (s1 - s0) * (noise - start)
    assert torch.allclose(first[0], one_step, atol=1e-5)


def test_uncertainty_sampling_keeps_the_normalised_features():
    c = torch.randn(4, 10, 8) * 3 + 1
    out = uncertainty_sample(c, "blog", 1.0, torch.Generator().manual_seed(0))

    def normalised(z):
        return (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True)

    assert not torch.allclose(out, c)
    assert torch.allclose(normalised(out), normalised(c), atol=1e-4)  # only the statistics move
    assert torch.equal(uncertainty_sample(c, "none", 1.0), c)
    assert not torch.allclose(normalised(uncertainty_sample(c, "gaussian", 1.0)), normalised(c))
    with pytest.raises(ArlonError, match="known: none, blog, gaussian"):
        uncertainty_sample(c, "laplace", 1.0)


def test_uncertainty_sampling_only_while_training(baseline):
    arlon = randomise(STDiT.from_baseline(baseline, injection_blocks=1, uncertainty_prob=1.0))
    x, t, cond = latent(), torch.tensor([500.0, 500.0]), latent(seed=3)
    arlon.eval()
    assert torch.equal(arlon(x, t, condition=cond), arlon(x, t, condition=cond))
    arlon.train()
    torch.manual_seed(0)
    assert not torch.allclose(arlon(x, t, condition=cond), arlon(x, t, condition=cond))


def test_flow_loss_ignores_reference_frames():
    """Reference frames are context, never targets: their content does not enter the loss."""
    x0 = latent()
    frame_mask = torch.tensor([[True, False, False], [True, True, False]])

    def still(x, timestep, frame_mask=None, **_):  # predicts zero velocity everywhere
        return torch.zeros_like(x)

    torch.manual_seed(0)
    loss = flow_loss(still, x0, frame_mask)
    changed = x0.clone()
    changed[0, :, 0] += 100.0
    changed[1, :, :2] -= 100.0
    torch.manual_seed(0)
    assert torch.allclose(flow_loss(still, changed, frame_mask), loss)
    changed[1, :, 2] += 100.0
    torch.manual_seed(0)
    assert flow_loss(still, changed, frame_mask) > loss + 100


def test_save_and_load_round_trip(baseline, tmp_path):
    arlon = randomise(STDiT.from_baseline(baseline, injection_blocks=1)).eval()
    arlon.save_pretrained(tmp_path / "arlon")
    loaded = STDiT.from_pretrained(tmp_path / "arlon").eval()
    x, t, cond = latent(), torch.tensor([200.0, 800.0]), latent(seed=4)
    assert torch.equal(loaded(x, t, condition=cond), arlon(x, t, condition=cond))


def test_the_gelu_setting_travels_with_the_weights(tmp_path):
    exact = randomise(stdit("smoke", gelu="none")).eval()
    tanh = stdit("smoke").eval()
    tanh.load_state_dict(exact.state_dict())
    x, t = latent(), torch.tensor([300.0, 700.0])
    assert not torch.equal(exact(x, t), tanh(x, t))  # the same weights, another GELU
    assert torch.equal(STDiT.from_baseline(exact, injection_blocks=1).eval()(x, t), exact(x, t))
    exact.save_pretrained(tmp_path / "exact")
    assert torch.equal(STDiT.from_pretrained(tmp_path / "exact").eval()(x, t), exact(x, t))
    # a folder saved before the setting existed keeps the approximation it was trained with
    config = tmp_path / "exact" / "config.json"
    config.write_text(
        json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "gelu"})
    )
    assert torch.equal(STDiT.from_pretrained(tmp_path / "exact").eval()(x, t), tanh(x, t))
    with pytest.raises(ArlonError, match="gelu is 'tanh'"):
        stdit("smoke", gelu="erf")


def test_the_tanh_gelu_is_torchs_to_float_rounding_forward_and_backward():
    """The MLPs compute the tanh approximation as `x * sigmoid(2u)` (faster on AVX2): the function
    the tanh-GELU models were trained with, and the gradient their training takes."""
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64).float().requires_grad_()
    ours, theirs = gelu_tanh(x), torch.nn.functional.gelu(x, approximate="tanh")
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, torch.nn.functional.gelu(x), atol=1e-4)  # not exact GELU's


def test_opensora_preset_builds_on_meta_with_its_parameter_count():
    with torch.device("meta"):
        backbone = stdit("opensora-1.2")
        arlon = stdit("opensora-1.2", arlon=True)
    count = sum(p.numel() for p in backbone.parameters())
    assert 1.0e9 < count < 1.25e9  # STDiT3-XL/2: about 1.1B
    extra = sum(p.numel() for p in arlon.parameters()) - count
    assert len(arlon.injected_blocks()) == 14 and extra > 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("dit")
    argv = ["world", "dataset", "--clips", "3", "--clip-frames", "13", "--episodes", "1"]
    assert cli.main([*argv, "--frames", "41", "--out", str(out / "data")]) == 0
    torch.manual_seed(0)
    vae = video_vae("smoke").eval()
    fine = latent_vqvae("smoke", latent_channels=4).eval()
    coarse = latent_vqvae("smoke", latent_channels=4, ratio=(1, 2, 2)).eval()
    return build_cache(vae, out / "data" / "manifest.csv", out / "cache", fine, coarse, window=3)


def test_baseline_then_arlon_train_through_the_cli_with_a_frozen_backbone(cache, tmp_path, capsys):
    common = ["--preset", "smoke", "--data", str(cache), "--set", "data.frames=3", "ema_decay=0"]
    assert cli.main(["train", "dit", *common, "--out", str(tmp_path / "dit")]) == 0
    baseline = STDiT.from_pretrained(tmp_path / "dit" / "model")
    assert "flow_loss_heldout" in (tmp_path / "dit" / "eval.csv").read_text()
    argv = ["train", "arlon", *common, "--out", str(tmp_path / "arlon")]
    assert cli.main(argv) == 2
    assert "--baseline" in capsys.readouterr().err
    argv += ["--baseline", str(tmp_path / "dit" / "model")]
    assert cli.main(argv) == 0
    arlon = STDiT.from_pretrained(tmp_path / "arlon" / "model")
    assert arlon.condition_path is not None
    trained = dict(arlon.named_parameters())
    for name, p in baseline.named_parameters():
        assert torch.equal(trained[name], p), name  # the backbone did not move
    injection = arlon.injected_blocks()[0].injection.modulation.weight
    assert injection.abs().sum() > 0  # the injection did


def test_resolution_shift_follows_open_sora():
    from arlon.diffusion.rectified_flow import resolution_shift, shift_timesteps

    assert resolution_shift(9, 8, 8, base=(9, 8, 8)) == 1.0
    assert resolution_shift(20, 64, 64, base=(1, 64, 64)) == pytest.approx(20**0.5)
    assert resolution_shift(1, 128, 128, base=(1, 64, 64)) == pytest.approx(2.0)
    t = torch.tensor([0.25, 0.5])
    assert torch.allclose(shift_timesteps(t, 3.0), torch.tensor([0.5, 0.75]))  # towards noise

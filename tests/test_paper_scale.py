"""`arlon bench --preset opensora-1.2 --dry-run`: its counts on the meta device are what the model
computes and saves (checked against a count by hand and against real tensors on a small STDiT),
and its GPU count is the fewest that fit."""

import pytest
import torch

from arlon import cli
from arlon.cli.bench import DRY_RUN_PRESETS
from arlon.evaluation import paper_scale
from arlon.evaluation.paper_scale import (
    DryRun,
    dit_inputs,
    forward_flops,
    gpu_memory,
    gpus_needed,
    saved_activations,
    training_flops,
)
from arlon.models.stdit import stdit

SHAPE = (4, 3, 4, 4)  # the smoke DiT's latent: 3 frames of 2 x 2 patches


def by_hand(model, frames: int, patches: int) -> int:
    """Forward FLOPs of an STDiT (patch (1, 2, 2), 2 FLOPs per multiply-add, attention as its two
    matmuls) from its config: every linear, convolution and attention, nothing else."""
    c = model.config
    hid, text, cin = c.hidden_size, c.max_text_tokens, c.in_channels
    n, per_patch = frames * patches, 4 * cin  # tokens; values per patch
    flops = 2 * n * hid * per_patch  # x_embedder
    flops += (
        2 * frames * (256 * hid + hid * hid) + 2 * frames * hid * 6 * hid
    )  # t_embedder, t_block
    flops += 2 * text * (c.text_dim * hid + hid * hid)  # y_embedder
    for block in model.blocks:
        flops += 2 * n * hid * 3 * hid + 2 * n * hid * hid  # qkv, proj
        seq, count = (frames, patches) if block.temporal else (patches, frames)
        flops += 4 * count * seq * seq * hid  # self-attention
        flops += 2 * n * hid * hid * 2 + 2 * text * hid * 2 * hid + 4 * n * text * hid  # cross
        flops += 2 * 2 * n * hid * int(hid * c.mlp_ratio)  # mlp
        flops += 2 * n * hid * 3 * hid * (block.injection is not None)  # ARLON's injection
    if model.condition_path is not None:
        flops += 2 * n * hid * per_patch + 2 * n * hid * hid * (1 + 2 * c.num_adapters)
    return flops + 2 * n * hid * per_patch  # final layer


@pytest.fixture
def smoke():
    """The smoke ARLON DiT on the meta device, and on the CPU."""
    torch.manual_seed(0)
    with torch.device("meta"):
        on_meta = stdit("smoke", arlon=True)
    return on_meta, stdit("smoke", arlon=True)


def real(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The same inputs as real float32 tensors."""

    def make(t):
        if t.dtype == torch.bool:
            return torch.ones(t.shape, dtype=torch.bool)
        return torch.randn(t.shape) if t.ndim > 1 else torch.full(t.shape, 500.0)

    return tuple(make(a) for a in args), {k: make(v) for k, v in kwargs.items()}


def test_flops_counted_on_the_meta_device_are_the_models(smoke):
    model, on_cpu = smoke
    args, kwargs = dit_inputs(model, 1, SHAPE, dtype=torch.float32)
    counted = forward_flops(model, args, kwargs)
    assert counted == by_hand(model, frames=3, patches=4)
    cpu_args, cpu_kwargs = real(args, kwargs)
    assert forward_flops(on_cpu, cpu_args, cpu_kwargs) == counted
    full = training_flops(model, args, kwargs)
    assert training_flops(on_cpu, cpu_args, cpu_kwargs) == full
    for p in model.backbone_parameters():
        p.requires_grad_(False)
    frozen = training_flops(model, args, kwargs)
    assert counted < frozen < full < 3 * counted  # a frozen backbone has no weight gradients


def test_saved_activations_on_the_meta_device_are_what_real_tensors_save(smoke):
    model, on_cpu = smoke
    model.train(), on_cpu.train()
    args, kwargs = dit_inputs(model, 1, SHAPE, dtype=torch.float32)
    on_meta = saved_activations(model, args, kwargs)
    assert on_meta == saved_activations(on_cpu, *real(args, kwargs))
    assert 0 < on_meta.checkpointed < on_meta.plain
    block_input = 4 * model.config.hidden_size * 12  # 12 tokens, float32
    assert on_meta.inputs >= 2 * model.config.depth * block_input


def test_the_gpu_count_is_the_fewest_that_fit(smoke):
    smoke = smoke[0]
    settings = DryRun(global_batch=64, gpu_gib=1e-3)
    activations = 2_000
    fit = gpus_needed(smoke, activations, settings)
    budget = settings.gpu_gib * paper_scale.GIB * settings.headroom
    assert gpu_memory(smoke, fit["gpus"], fit["per_gpu_batch"], activations, True) <= budget
    fewer = fit["gpus"] - 1
    assert fewer == 0 or gpu_memory(smoke, fewer, -(-64 // fewer), activations, True) > budget
    assert fit["per_gpu_batch"] * fit["gpus"] >= 64


def test_the_cli_names_the_dry_run_presets_and_pairs_its_flags(capsys):
    assert DRY_RUN_PRESETS == paper_scale.PRESETS
    assert cli.main(["bench", "--dry-run"]) == 2
    assert "--preset" in capsys.readouterr().err
    assert cli.main(["bench", "--preset", "opensora-1.2"]) == 2
    assert "--dry-run" in capsys.readouterr().err

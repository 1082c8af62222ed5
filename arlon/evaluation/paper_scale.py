"""`arlon bench --preset opensora-1.2 --dry-run`: what training and sampling a preset costs, derived
from its models built on the meta device (shapes only: no weights, no arithmetic).

    report = dry_run(DryRun("opensora-1.2"))
    print(dry_run_markdown(report))

- parameters of every component; the text encoder (T5-v1.1-XXL's encoder) built from its config;
- the DiT's FLOPs, counted by `torch.utils.flop_counter` on a forward (and backward) over meta
  tensors: per training sample of the ARLON stage (backbone frozen, so no weight gradients for it)
  and of the baseline's full training, and per sampling step (one forward of batch 2: classifier-
  free guidance). Attention counts as its two matmuls forward and four backward;
- the activations one training sample saves for backward, in bf16, as a GPU's flash attention keeps
  them (q, k, v, the output and its log-sum-exp, not the attention matrix): without, and with
  activation checkpointing of every block (the shipped FSDP config: the block inputs, plus one
  block's own while it is recomputed);
- the GPUs a global batch needs under FSDP full shard: the fewest at which each GPU holds its shard
  of the fp32 weights, gradients and AdamW state, the trainer's whole fp32 EMA copy, the bf16
  weights of the blocks being gathered (two, with prefetch) and of the rest of the model, and its
  samples' checkpointed activations, within `headroom` of its memory. The text encoder runs beside
  the trainer, not in this budget.

Frame sizes are Open-Sora v1.2's 16:9 buckets; their latents come from the VAE built on the meta
device, the width padded to the DiT's patch as Open-Sora pads it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5EncoderModel

from arlon.errors import ArlonError
from arlon.models.ar_transformer import ar_transformer
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.opensora_vae import OpenSoraVAE
from arlon.models.stdit import STDiT, STDiTBlock, stdit

GIB = 2**30
# DeepFloyd/t5-v1_1-xxl's config.json: the encoder is what ARLON runs.
T5_V1_1_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
# Open-Sora v1.2's 16:9 buckets: (frames, height, width) in pixels.
SIZES = {"240p x 51 frames": (51, 240, 426), "480p x 102 frames": (102, 480, 854)}
PRESETS = ("opensora-1.2",)


@dataclass(frozen=True)
class DryRun:
    """The preset, and the training set-up the GPU count is for."""

    preset: str = "opensora-1.2"
    global_batch: int = 64
    gpu_gib: float = 80.0
    headroom: float = 0.9  # of a GPU's memory the tensors may take (the rest: allocator, NCCL)
    ema: bool = True  # the opensora-1.2 presets keep an EMA (0.9999)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ArlonError(
                f"the dry run knows the preset(s) {', '.join(PRESETS)}, not {self.preset!r}"
            )
        if self.global_batch < 1 or self.gpu_gib <= 0 or not 0 < self.headroom <= 1:
            raise ArlonError("the global batch, the GPU memory and the headroom must be positive")


# ------------------------------------------------------------------------------------------------
# Counting on the meta device
# ------------------------------------------------------------------------------------------------


def parameters(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def latent_shape(vae: OpenSoraVAE, frames: int, height: int, width: int, patch) -> tuple:
    """`(C, T, H, W)` of a video's latent: frames by the VAE's rule, the frame through its spatial
    encoder on the meta device, then padded up to the DiT's patch."""
    with torch.device("meta"):
        moments = vae.spatial_vae.encoder(torch.empty(1, 3, height, width))  # (1, 2C, h, w)
    t = vae.latent_frames(frames)
    h, w = (-(-n // p) * p for n, p in zip(moments.shape[2:], patch[1:], strict=True))
    return (vae.latent_channels, -(-t // patch[0]) * patch[0], h, w)


def dit_inputs(model: STDiT, batch: int, shape: tuple, dtype=torch.bfloat16) -> tuple[tuple, dict]:
    """Meta inputs of one DiT forward on `batch` latents of `shape`: a full caption of
    `max_text_tokens`, and the coarse latent when the model takes one."""
    c = model.config
    with torch.device("meta"):
        x = torch.empty(batch, *shape, dtype=dtype)
        text = torch.empty(batch, c.max_text_tokens, c.text_dim, dtype=dtype)
        mask = torch.ones(batch, c.max_text_tokens, dtype=torch.bool)
        kwargs = {"condition": torch.empty_like(x)} if model.condition_path is not None else {}
        return (x, torch.full((batch,), 500.0), text, mask), kwargs


def forward_flops(model: STDiT, args: tuple, kwargs: dict) -> int:
    """FLOPs of one forward (a sampling step). Attention runs as its matmuls, which the counter
    sees (it does not count the CPU's fused kernel)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def training_flops(model: STDiT, args: tuple, kwargs: dict) -> int:
    """FLOPs of one forward and backward, for the parameters that require gradients."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs).float().square().mean().backward()
    return counter.get_total_flops()


class FlashAttention(TorchFunctionMode):
    """Routes `scaled_dot_product_attention` to a flash kernel (the CPU one, which has meta
    shapes), so that what autograd saves is what a GPU's flash attention saves."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        mask = kwargs.get("attn_mask")
        if mask is not None and mask.dtype == torch.bool:  # the kernel adds a float mask
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~mask, float("-inf")
            )
        attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return attention(q, k, v, attn_mask=mask)[0]


@dataclass
class SavedActivations:
    """Bytes saved for backward by one forward: `plain` in all; under activation checkpointing of
    every block, `outside` the blocks, the blocks' `inputs`, and the largest block's own `inside`."""

    plain: int
    outside: int
    inputs: int
    inside: int

    @property
    def checkpointed(self) -> int:
        return self.outside + self.inputs + self.inside


def saved_activations(model: STDiT, args: tuple, kwargs: dict) -> SavedActivations:
    """What one training forward saves for backward (weights left out), each storage once."""
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, torch.UntypedStorage] = {}  # storages counted (kept alive: ids stay unique)
    inputs: dict[int, torch.UntypedStorage] = {}
    inside: defaultdict[int, int] = defaultdict(int)
    state = {"block": None, "outside": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in weights and key not in seen:
            seen[key] = storage
            if state["block"] is None:
                state["outside"] += storage.nbytes()
            elif key not in inputs:
                inside[state["block"]] += storage.nbytes()
        return tensor

    def enter(block, block_args, block_kwargs):
        state["block"] = id(block)
        for value in (*block_args, *block_kwargs.values()):
            if isinstance(value, torch.Tensor):
                inputs.setdefault(value.untyped_storage()._cdata, value.untyped_storage())

    def leave(block, block_args, block_kwargs, output):
        state["block"] = None

    blocks = [m for m in model.modules() if isinstance(m, STDiTBlock)]
    hooks = [b.register_forward_pre_hook(enter, with_kwargs=True) for b in blocks]
    hooks += [b.register_forward_hook(leave, with_kwargs=True) for b in blocks]
    try:
        with FlashAttention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    input_bytes = sum(s.nbytes() for key, s in inputs.items() if key not in weights)
    return SavedActivations(
        plain=sum(s.nbytes() for s in seen.values()),
        outside=state["outside"],
        inputs=input_bytes,
        inside=max(inside.values(), default=0),
    )


# ------------------------------------------------------------------------------------------------
# The GPUs a batch needs
# ------------------------------------------------------------------------------------------------


def gpu_memory(model: STDiT, gpus: int, per_gpu_batch: int, activations: int, ema: bool) -> int:
    """Bytes one GPU holds under FSDP full shard: fp32 weights, and fp32 gradients and AdamW
    moments of the trainable ones, sharded; the EMA's whole fp32 copy; bf16 copies of two gathered
    blocks and of the weights outside the blocks; the checkpointed activations of its samples."""
    total, trainable = parameters(model), parameters(model, trainable=True)
    blocks = [parameters(b) for b in model.modules() if isinstance(b, STDiTBlock)]
    sharded = (4 * total + 12 * trainable) / gpus
    gathered = 2 * (2 * max(blocks) + (total - sum(blocks)))
    return int(sharded + 4 * total * ema + gathered + per_gpu_batch * activations)


def gpus_needed(model: STDiT, activations: int, settings: DryRun) -> dict:
    """The fewest GPUs (and the samples each takes) at which the global batch fits."""
    budget = settings.gpu_gib * GIB * settings.headroom
    for gpus in range(1, 1 << 16):
        batch = -(-settings.global_batch // gpus)
        memory = gpu_memory(model, gpus, batch, activations, settings.ema)
        if memory <= budget:
            return {"gpus": gpus, "per_gpu_batch": batch, "gib_per_gpu": memory / GIB}
    raise ArlonError(f"no number of {settings.gpu_gib:g} GiB GPUs holds this model")


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def _components(preset: str) -> dict[str, int]:
    with torch.device("meta"):
        dit = stdit(preset, arlon=True)
        backbone = sum(p.numel() for p in dit.backbone_parameters())
        return {
            "DiT backbone (STDiT3-XL/2)": backbone,
            "ARLON's condition path and injections": parameters(dit) - backbone,
            "AR transformer": parameters(ar_transformer(preset)),
            "latent VQ-VAE, fine (AR tokens)": parameters(latent_vqvae(f"{preset}-fine", 4)),
            "latent VQ-VAE, coarse (DiT condition)": parameters(
                latent_vqvae(f"{preset}-coarse", 4)
            ),
            "video VAE (Open-Sora v1.2)": parameters(OpenSoraVAE()),
            "text encoder (T5-v1.1-XXL encoder)": parameters(
                T5EncoderModel(T5Config(**T5_V1_1_XXL))
            ),
        }


def _size_report(size: tuple[int, int, int], vae: OpenSoraVAE, settings: DryRun) -> dict:
    with torch.device("meta"):
        arlon = stdit(settings.preset, arlon=True).bfloat16()
        baseline = stdit(settings.preset).bfloat16()
    for p in arlon.backbone_parameters():
        p.requires_grad_(False)  # the ARLON stage: the backbone frozen, as in the paper
    shape = latent_shape(vae, *size, arlon.patch_size)
    args, kwargs = dit_inputs(arlon, 1, shape)
    arlon.train()
    saved = saved_activations(arlon, args, kwargs)
    report = {
        "latent": list(shape),
        "tokens": math.prod(n // p for n, p in zip(shape[1:], arlon.patch_size, strict=True)),
        "train_tflop_arlon": training_flops(arlon, args, kwargs) / 1e12,
        "train_tflop_full": training_flops(baseline, *dit_inputs(baseline, 1, shape)) / 1e12,
        "sample_tflop": forward_flops(arlon.eval(), *dit_inputs(arlon, 2, shape)) / 1e12,
        "activations_gib": saved.plain / GIB,
        "activations_checkpointed_gib": saved.checkpointed / GIB,
    }
    report["gpus_arlon"] = gpus_needed(arlon, saved.checkpointed, settings)
    baseline.train()
    full = saved_activations(baseline, *dit_inputs(baseline, 1, shape)).checkpointed
    report["gpus_full"] = gpus_needed(baseline, full, settings)
    return report


def dry_run(settings: DryRun) -> dict:
    """The dry run's figures: parameters per component, and per frame size the DiT's latent,
    tokens, FLOPs, activations and GPUs."""
    with torch.device("meta"):
        vae = OpenSoraVAE()
    return {
        "preset": settings.preset,
        "global_batch": settings.global_batch,
        "gpu_gib": settings.gpu_gib,
        "headroom": settings.headroom,
        "parameters": _components(settings.preset),
        "sizes": {name: _size_report(size, vae, settings) for name, size in SIZES.items()},
    }


def dry_run_markdown(report: dict) -> str:
    """The dry run as two markdown tables: parameters, and costs per frame size."""
    lines = ["| component | parameters |", "|---|---:|"]
    lines += [f"| {name} | {count / 1e6:,.1f} M |" for name, count in report["parameters"].items()]
    sizes = report["sizes"]
    gpus = f"{report['gpu_gib']:g} GiB GPUs for a global batch of {report['global_batch']}"
    rows = [
        ("latent (C x T x H x W)", lambda s: " x ".join(map(str, s["latent"]))),
        ("DiT tokens per sample", lambda s: f"{s['tokens']:,}"),
        (
            "training FLOPs per sample, ARLON stage (backbone frozen)",
            lambda s: f"{s['train_tflop_arlon']:,.1f} TFLOP",
        ),
        ("training FLOPs per sample, full DiT", lambda s: f"{s['train_tflop_full']:,.1f} TFLOP"),
        ("sampling step (a forward of batch 2: CFG)", lambda s: f"{s['sample_tflop']:,.1f} TFLOP"),
        (
            "activations per sample, bf16, no checkpointing",
            lambda s: f"{s['activations_gib']:,.1f} GiB",
        ),
        (
            "activations per sample, block checkpointing",
            lambda s: f"{s['activations_checkpointed_gib']:,.2f} GiB",
        ),
        (f"{gpus}, ARLON stage", lambda s: _gpus(s["gpus_arlon"])),
        (f"{gpus}, full DiT", lambda s: _gpus(s["gpus_full"])),
    ]
    lines += ["", f"| {report['preset']} | " + " | ".join(sizes) + " |"]
    lines += ["|---|" + "---:|" * len(sizes)]
    lines += [
        f"| {name} | " + " | ".join(cell(s) for s in sizes.values()) + " |" for name, cell in rows
    ]
    return "\n".join(lines) + "\n"


def _gpus(fit: dict) -> str:
    return f"{fit['gpus']} ({fit['per_gpu_batch']} per GPU, {fit['gib_per_gpu']:.0f} GiB each)"

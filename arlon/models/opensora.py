"""Open-Sora v1.2's released weights, read into ARLON's models.

    dit = stdit_from_opensora("checkpoints/OpenSora-STDiT-v3")    # the baseline STDiT (no injection)
    vae = vae_from_opensora("checkpoints/OpenSora-VAE-v1.2")       # OpenSoraVAE

The folders are read as their owners publish them on the Hugging Face hub (hpcai-tech/
OpenSora-STDiT-v3, hpcai-tech/OpenSora-VAE-v1.2): `config.json` (transformers' config of `STDiT3`
or `VideoAutoencoderPipeline`, optional) and the weights, `model.safetensors` (sharded safetensors
with their index, or `pytorch_model.bin`, are read too). Parameter names follow Open-Sora's source at
tag v1.2.0 (opensora/models/stdit/stdit3.py, layers/blocks.py, vae/vae.py, vae/vae_temporal.py).

Besides names, the STDiT's conversion changes three things so that it computes Open-Sora's function:

- the output: Open-Sora predicts `x_0 - noise` over twice the channels (`pred_sigma`; the second half
  is unused by its rectified flow); ARLON predicts `noise - x_0`, so the final linear layer keeps the
  first half of each patch's channels, negated;
- RoPE: Open-Sora's temporal attention rotates interleaved pairs (rotary-embedding-torch), ARLON's
  the two halves of each head (Llama). Permuting each head's query and key channels (and their RMS
  norm weights) from (0, 1, 2, 3, ...) to (0, 2, ..., 1, 3, ...) turns one into the other; attention
  scores do not change under a permutation applied to both;
- positions and frame rate: the preset's `position_grid` and `fps_conditioning` (see `STDiT`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from arlon.errors import ArlonError
from arlon.models.opensora_vae import SCALE, SDXL_VAE, SHIFT, OpenSoraVAE
from arlon.models.stdit import STDiT
from arlon.utils import read_json

# STDiT3Config's defaults (opensora/models/stdit/stdit3.py), what a config.json leaves out.
STDIT3_DEFAULTS = dict(
    in_channels=4,
    patch_size=[1, 2, 2],
    hidden_size=1152,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    caption_channels=4096,
    model_max_length=300,
    pred_sigma=True,
    qk_norm=True,
    input_sq_size=512,
)
VAE_SPATIAL_RATIO = 8  # Open-Sora v1.2's VAE: the STDiT's pixels per latent cell
SAMPLING_FPS = 24.0  # the frame rate Open-Sora v1.2 samples at (configs/opensora-v1-2/inference)
ROPE_THETA = 10000.0

# ------------------------------------------------------------------------------------------------
# Reading a folder
# ------------------------------------------------------------------------------------------------


def read_config(folder: str | Path, model_type: str | None = None) -> dict:
    """The folder's `config.json`, or {} without one; with `model_type`, checked to be one (a
    config without `model_type` passes)."""
    path = Path(folder) / "config.json"
    config = read_json(path, "checkpoint") if path.is_file() else {}
    kind = config.get("model_type", model_type)
    if model_type is not None and kind != model_type:
        raise ArlonError(f"{folder} holds a {kind}, not Open-Sora's {model_type}")
    return config


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: `model.safetensors`, its shards (with
    `model.safetensors.index.json`), or `pytorch_model.bin` (read without unpickling code)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArlonError(f"checkpoint folder {folder} does not exist")
    index = folder / "model.safetensors.index.json"
    try:
        if (folder / "model.safetensors").is_file():
            return load_file(str(folder / "model.safetensors"))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
        if (folder / "pytorch_model.bin").is_file():
            path = folder / "pytorch_model.bin"
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a damaged file, a missing shard
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArlonError(f"cannot read the weights in {folder}: {first}") from None
    raise ArlonError(
        f"no weights in {folder}: expected model.safetensors (or its shards, or pytorch_model.bin)"
    )


def _load(model: torch.nn.Module, state: dict, what: str, folder: Path, assign: bool) -> None:
    """Load `state` strictly; a mismatch is a one-line error naming a few of the keys."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [k for k in state if k in ours and state[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        parts = [
            f"{name} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for name, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong),
            )
            if keys
        ]
        raise ArlonError(f"{folder} is not {what}: {'; '.join(parts)}")
    model.load_state_dict(state, assign=assign)


# ------------------------------------------------------------------------------------------------
# The STDiT
# ------------------------------------------------------------------------------------------------


def stdit_config(opensora: dict) -> dict:
    """`STDiT` settings from an STDiT3 config (its defaults where it is silent)."""
    c = {**STDIT3_DEFAULTS, **opensora}
    if not c["qk_norm"]:
        raise ArlonError("this STDiT3 has no query-key norm; ARLON's STDiT always has one")
    patch = tuple(int(p) for p in c["patch_size"])
    return dict(
        in_channels=int(c["in_channels"]),
        patch_size=patch,
        hidden_size=int(c["hidden_size"]),
        depth=int(c["depth"]),
        num_heads=int(c["num_heads"]),
        mlp_ratio=float(c["mlp_ratio"]),
        text_dim=int(c["caption_channels"]),
        max_text_tokens=int(c["model_max_length"]),
        position_grid=int(c["input_sq_size"]) // (VAE_SPATIAL_RATIO * patch[1]),
        fps_conditioning=SAMPLING_FPS,
    )


_RENAMES = (  # Open-Sora's prefix -> ARLON's, after the blocks are renumbered
    ("x_embedder.proj.", "x_embedder."),
    ("y_embedder.y_proj.fc1.", "y_embedder.proj.0."),
    ("y_embedder.y_proj.fc2.", "y_embedder.proj.2."),
    ("y_embedder.y_embedding", "y_embedder.null"),
    (".cross_attn.q_linear.", ".cross_attn.q."),
    (".cross_attn.kv_linear.", ".cross_attn.kv."),
)
_BLOCK = re.compile(r"^(spatial|temporal)_blocks\.(\d+)\.")


def _renamed(name: str) -> str:
    """`spatial_blocks.i.` -> `blocks.2i.`, `temporal_blocks.i.` -> `blocks.2i+1.`, then _RENAMES."""
    m = _BLOCK.match(name)
    if m:
        index = 2 * int(m[2]) + (m[1] == "temporal")
        name = f"blocks.{index}." + name[m.end() :]
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def rope_permutation(head_dim: int) -> torch.Tensor:
    """Channel order that turns interleaved RoPE pairs (2i, 2i+1) into half-split ones (i, i + d/2)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _halves_rope(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """A temporal block's qkv weight `(3C, ...)` or bias `(3C,)` with q and k permuted per head."""
    three = qkv.unflatten(0, (3, heads, -1))  # (3, heads, head_dim, ...)
    order = rope_permutation(three.shape[2])
    return torch.cat([three[:2, :, order], three[2:]]).flatten(0, 2)


def _check_rope(freqs: torch.Tensor, head_dim: int) -> None:
    """rotary-embedding-torch keeps its frequencies as a parameter: they must be the standard ones."""
    expected = ROPE_THETA ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    if freqs.shape != expected.shape or (
        not freqs.is_meta and not torch.allclose(freqs.float(), expected, rtol=1e-4)
    ):
        raise ArlonError("the checkpoint's RoPE frequencies are not theta 10000 over the head")


def stdit_state(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """An STDiT3 state dict -> ARLON's `STDiT` (built with `stdit_config(config)`) state dict."""
    c = {**STDIT3_DEFAULTS, **config}
    heads, channels = int(c["num_heads"]), int(c["in_channels"])
    out = {}
    for name, tensor in state.items():
        if name == "rope.freqs":
            _check_rope(tensor, int(c["hidden_size"]) // heads)
            continue
        if name == "pos_embed.inv_freq":  # recomputed, never learned
            continue
        new = _renamed(name)
        if new.startswith("blocks.") and int(new.split(".")[1]) % 2 == 1:  # temporal: RoPE
            if new.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
                tensor = _halves_rope(tensor, heads)
            elif new.endswith((".attn.q_norm.weight", ".attn.k_norm.weight")):
                tensor = tensor[rope_permutation(tensor.shape[0])]
        if new.startswith("final_layer.linear."):
            per_patch = tensor.unflatten(0, (-1, channels * (2 if c["pred_sigma"] else 1)))
            tensor = -per_patch[:, :channels].flatten(0, 1)  # x_0 - noise -> noise - x_0
        out[new] = tensor
    return out


def stdit_from_opensora(folder: str | Path) -> STDiT:
    """The baseline STDiT (no injection) with the weights of an STDiT3 checkpoint folder, float32."""
    folder = Path(folder)
    config = read_config(folder, "STDiT3")
    settings = stdit_config(config)
    state = stdit_state(read_weights(folder), config)
    with torch.device("meta"):
        model = STDiT(**settings)
    _load(model, state, "Open-Sora v1.2's STDiT3", folder, assign=True)
    return model.float().eval()


# ------------------------------------------------------------------------------------------------
# The VAE
# ------------------------------------------------------------------------------------------------

# diffusers' attention names before 0.14, as older AutoencoderKL checkpoints spell them.
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}  # fmt: skip


def vae_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `VideoAutoencoderPipeline` state dict -> `OpenSoraVAE`'s (the statistics left out)."""
    out = {}
    for name, tensor in state.items():
        if name in ("shift", "scale"):
            continue
        if name.startswith("spatial_vae.module."):
            name = "spatial_vae." + name.removeprefix("spatial_vae.module.")
            for old, new in _OLD_ATTENTION.items():
                if old in name:
                    name = name.replace(old, new)
                    if tensor.ndim == 4:  # a 1x1 convolution in the oldest checkpoints
                        tensor = tensor[:, :, 0, 0]
        out[name] = tensor
    return out


def vae_settings(config: dict, state: dict[str, torch.Tensor]) -> dict:
    """`OpenSoraVAE` settings: the checkpoint's statistics, else its config's, else Open-Sora's."""

    def values(name: str, default) -> tuple[float, ...]:
        value = state[name].flatten().tolist() if name in state else config.get(name, default)
        return tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value] * 4))

    spatial = config.get("vae_2d") if isinstance(config.get("vae_2d"), dict) else {}
    return dict(
        micro_frame_size=int(config.get("micro_frame_size") or 17),
        micro_batch_size=int(spatial.get("micro_batch_size") or 4),
        shift=values("shift", SHIFT),
        scale=values("scale", SCALE),
    )


def vae_sizes(state: dict[str, torch.Tensor]) -> dict:
    """`OpenSoraVAE`'s sizes, read off an `OpenSoraVAE` state dict: the folder holds no config of
    its spatial VAE (Open-Sora fetches PixArt-Sigma's SDXL VAE config at run time). Group norms
    keep Open-Sora's 32 groups, which shapes do not tell."""

    def count(pattern: str) -> int:
        return next(i for i in range(1000) if pattern.format(i) not in state)

    try:
        levels = count("spatial_vae.encoder.down_blocks.{}.resnets.0.conv1.weight")
        widths = [
            state[f"spatial_vae.encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]
            for i in range(levels)
        ]
        spatial = SDXL_VAE | dict(
            down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels,
            block_out_channels=widths,
            layers_per_block=count("spatial_vae.encoder.down_blocks.0.resnets.{}.conv1.weight"),
            latent_channels=state["spatial_vae.quant_conv.weight"].shape[0] // 2,
        )
        encoder = "temporal_vae.encoder."
        filters = state[encoder + "conv_in.conv.weight"].shape[0]
        depth = count(encoder + "block_res_blocks.{}.0.conv1.conv.weight")
        multipliers = [
            state[f"{encoder}block_res_blocks.{i}.0.conv2.conv.weight"].shape[0] // filters
            for i in range(depth)
        ]
    except KeyError as e:
        raise ArlonError(f"not Open-Sora v1.2's VAE: no {e.args[0]}") from None
    return dict(
        spatial=spatial,
        temporal_filters=filters,
        temporal_blocks=count(encoder + "block_res_blocks.0.{}.conv1.conv.weight"),
        temporal_multipliers=multipliers,
        temporal_downsample=[
            f"{encoder}conv_blocks.{i}.conv.weight" in state for i in range(depth - 1)
        ],
    )


def vae_from_opensora(folder: str | Path) -> OpenSoraVAE:
    """`OpenSoraVAE` with the weights of a `VideoAutoencoderPipeline` checkpoint folder, float32."""
    folder = Path(folder)
    config = read_config(folder, "VideoAutoencoderPipeline")
    weights = read_weights(folder)
    state = vae_state(weights)
    model = OpenSoraVAE(**vae_sizes(state), **vae_settings(config, weights))
    _load(model, state, "Open-Sora v1.2's VAE", folder, assign=False)
    return model.float().eval()

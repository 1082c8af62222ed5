"""Training under the shipped FSDP config (arlon/training/fsdp.yaml): what it asks for, and the smoke
preset trained sharded on two CPU processes, its checkpoints whole, its resume exact."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import arlon.training
from arlon.models.video_vae import VideoVAE, video_vae

CONFIG = Path(arlon.training.__file__).parent / "fsdp.yaml"
ENTRY = Path(__file__).parent / "fsdp_cpu.py"  # routes accelerate's FSDP to CPU processes
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}


def fsdp_on_gloo() -> str | None:
    """Why this torch cannot shard a model over CPU processes, or None when it can."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "this torch has no gloo backend"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return "this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)"
    return None


def test_the_shipped_config_is_full_shard_bf16_with_activation_checkpointing():
    config = yaml.safe_load(CONFIG.read_text())
    fsdp = config["fsdp_config"]
    assert config["distributed_type"] == "FSDP" and config["mixed_precision"] == "bf16"
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_activation_checkpointing"] is True and not fsdp["fsdp_offload_params"]
    # no class list: each model names its blocks in `_no_split_modules`
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.skipif(
    fsdp_on_gloo() is not None, reason=f"{fsdp_on_gloo()}; DDP stays tested in test_training.py"
)
def test_smoke_trains_sharded_on_two_processes_and_resumes_exactly(tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG)]
    launch += ["--num_processes", "2", str(ENTRY), "train", "vae", "--preset", "smoke"]

    def run(out: Path, *extra: str) -> None:
        command = [*launch, "--out", str(out), *extra]
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]

    out = tmp_path / "fsdp"
    run(out, "--max-steps", "2", "--set", "checkpoint_every=1", "mixed_precision=bf16")
    state = json.loads((out / "checkpoints" / "step_0000002" / "state.json").read_text())
    assert state["sharded"] is True and state["processes"] == 2  # FSDP ran, not DDP
    whole = {k: tuple(v.shape) for k, v in video_vae("smoke").state_dict().items()}
    for name in ("model", "ema"):
        saved = load_file(out / "checkpoints" / "step_0000002" / f"{name}.safetensors")
        assert {k: tuple(v.shape) for k, v in saved.items()} == whole  # gathered, not shards
    model = VideoVAE.from_pretrained(out / "model")
    video = torch.zeros(1, 3, 5, 64, 64)
    assert model.decode(model.encode(video)).shape == video.shape

    # Rewound to its first checkpoint, it resumes (weights, AdamW, EMA) to the same end.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "model")
    shutil.rmtree(resumed / "checkpoints" / "step_0000002")
    (resumed / "checkpoints" / "latest").write_text("step_0000001")
    run(resumed, "--resume")
    for name in ("model/diffusion_pytorch_model", "checkpoints/step_0000002/ema"):
        a, b = load_file(out / f"{name}.safetensors"), load_file(resumed / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

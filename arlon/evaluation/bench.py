"""`arlon bench`: how fast the system runs here, and in how much memory, in one report.

    arlon bench                                  # 120, 600 and 2,400 frames; DiT FLOP/s; training
    arlon bench --lengths 600 --train-data cache/shapes-finecond --out runs/bench

- generation: `arlon generate` end to end and per stage (AR, DiT, VAE) at each length, each length
  in a fresh process (peak resident memory is per process), frames streamed into an mp4 as the CLI
  does; frames/s, real-time factor at 8 fps, peak memory, and the ratio of the longest's peak to the
  shortest's;
- the DiT: one denoising step (a forward of batch 2: classifier-free guidance) counted by
  `torch.utils.flop_counter`, its achieved FLOP/s against a square matmul's FLOP/s measured in the
  same run (the best of before and after);
- training: samples/s of each stage's training step at its default preset (the VAE on world clips
  rendered on the fly; the other stages on the latent cache `--train-data`, skipped without one).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from arlon.errors import ArlonError

PROMPT = "a red circle moves right and a blue square moves up on a black background"
TRAIN_STAGES = ("vae", "vqvae", "ar", "dit", "arlon")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line for line in info if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------


def generation_speed(
    model: str | Path | None, frames: int, steps: int = 5, mode: str = "arlon", guidance=1.0
) -> dict:
    """One `arlon generate` of `frames` frames in this process: seconds per stage, peak memory."""
    from arlon.data.video_io import VideoWriter
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    pipe = ARLONPipeline.from_pretrained(model or ROOT)
    loaded = peak_rss_mib()
    stream = pipe.stream(
        PROMPT,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        mode=mode,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "v.mp4", fps=8) as writer:
            for frame in stream:
                writer.write_frame(frame)
        seconds = time.perf_counter() - start
    stages = pipe.last_times.as_dict()["seconds"]
    return {
        "frames": frames,
        "mode": mode,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 2),
        "realtime_factor_at_8fps": round(frames / 8 / seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        "stage_frames_per_second": {
            k: round(frames / v, 1) for k, v in stages.items() if k != "total" and v > 0
        },
        "segments": pipe.last_times.segments,
        "rss_after_load_mib": round(loaded, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def generation_lengths(lengths: list[int], argv: list[str], progress: bool = True) -> dict:
    """`generation_speed` at each length, each in a fresh `arlon bench --child` process."""
    runs = []
    for frames in lengths:
        command = [sys.executable, "-m", "arlon.cli", "bench", "--child", str(frames), *argv]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ArlonError(
                f"the {frames}-frame run failed: {done.stderr.strip().splitlines()[-1]}"
            )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if progress:
            print(json.dumps(runs[-1]), flush=True)
    out = {"runs": runs}
    if len(runs) > 1:
        out["peak_ratio_longest_to_shortest"] = round(
            runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3
        )
    return out


# ------------------------------------------------------------------------------------------------
# The DiT against the machine
# ------------------------------------------------------------------------------------------------


def matmul_flops(size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a square fp32 matmul: what this machine's BLAS reaches."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


@torch.inference_mode()
def dit_step(model, batch: int, frames: int, height: int, width: int, repeats: int) -> dict:
    """FLOPs and seconds of one forward of the DiT on a latent `(batch, C, frames, height, width)`."""
    c = model.config
    x = torch.randn(batch, c.in_channels, frames, height, width)
    states, mask = torch.randn(batch, 30, c.text_dim), torch.ones(batch, 30, dtype=torch.bool)
    kwargs = dict(condition=torch.randn_like(x)) if model.condition_path is not None else {}
    t = torch.full((batch,), 500.0)
    with FlopCounterMode(display=False) as counter:
        model(x, t, states, mask, **kwargs)
    model(x, t, states, mask, **kwargs)
    start = time.perf_counter()
    for _ in range(repeats):
        model(x, t, states, mask, **kwargs)
    return {"flops": counter.get_total_flops(), "seconds": (time.perf_counter() - start) / repeats}


def dit_efficiency(model, batch: int = 2, frames: int = 9, size: int = 8, repeats: int = 20):
    """The DiT's achieved FLOP/s and its fraction of the matmul FLOP/s measured around it."""
    before = matmul_flops()
    step = dit_step(model.eval(), batch, frames, size, size, repeats)
    machine = max(before, matmul_flops())
    achieved = step["flops"] / step["seconds"]
    return {
        "batch": batch,
        "latent": [model.config.in_channels, frames, size, size],
        "threads": torch.get_num_threads(),
        "forward_ms": round(step["seconds"] * 1000, 2),
        "forward_gflop": round(step["flops"] / 1e9, 3),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_gflops": round(machine / 1e9, 2),
        "fraction_of_matmul": round(achieved / machine, 3),
    }


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def training_speed(name: str, data: Path | None, steps: int = 6) -> dict:
    """Samples/s of `steps` training steps of stage `name` at its default preset (fp32, no
    evaluation), the median of the steps after the first; in a temporary run folder."""
    from arlon.training.config import TrainConfig
    from arlon.training.stages import DEFAULT_PRESETS, stage, train_config
    from arlon.training.trainer import train

    cfg = train_config(name, DEFAULT_PRESETS[name]).to_dict()
    budget = dict(max_steps=steps, log_every=1, eval_every=-1, checkpoint_every=steps + 1)
    cfg |= {**budget, "mixed_precision": "no"}
    if name != "vae":
        if data is None:
            return {"stage": name, "skipped": "needs a latent cache: --train-data DIR"}
        cfg["data"] = {**cfg["data"], "cache": str(data)}
    with tempfile.TemporaryDirectory() as tmp:
        if name == "arlon":  # any baseline of the right size: speed does not depend on weights
            dit_cfg = train_config("dit", DEFAULT_PRESETS["dit"], data={"cache": str(data)})
            baseline = Path(tmp) / "baseline"
            stage("dit").build_model(dit_cfg).save_pretrained(baseline)
            cfg["data"] = {**cfg["data"], "baseline": str(baseline)}
        config = TrainConfig.from_dict(cfg)
        train(stage(name), config, Path(tmp) / "run")
        with open(Path(tmp) / "run" / "train.csv") as f:
            rates = sorted(float(row["samples_per_s"]) for row in csv.DictReader(f))[1:]
    rate = rates[len(rates) // 2]
    return {
        "stage": name,
        "preset": config.preset,
        "batch_size": config.batch_size,
        "samples_per_s": round(rate, 2),
        "steps_per_s": round(rate / config.batch_size, 3),
    }


def markdown(report: dict) -> str:
    """The report as markdown tables."""
    m = report["machine"]
    lines = [f"{m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}", ""]
    lines += [
        "| frames | seconds | frames/s | x real time (8 fps) | AR s | DiT s | VAE s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["generation"]["runs"]:
        st = r["stage_seconds"]
        lines.append(
            f"| {r['frames']} | {r['seconds']} | {r['frames_per_second']} | "
            f"{r['realtime_factor_at_8fps']} | {st['ar']} | {st['dit']} | {st['vae']} | "
            f"{r['peak_rss_mib']} |"
        )
    if "peak_ratio_longest_to_shortest" in report["generation"]:
        lines.append(
            f"\npeak memory, longest / shortest: "
            f"{report['generation']['peak_ratio_longest_to_shortest']}"
        )
    d = report["dit"]
    lines += [
        "",
        f"DiT step (batch {d['batch']}, latent {d['latent']}): {d['forward_ms']} ms, "
        f"{d['achieved_gflops']} GFLOP/s = {100 * d['fraction_of_matmul']:.0f}% of the "
        f"{d['matmul_gflops']} GFLOP/s matmul",
    ]
    if report.get("training"):
        lines += ["", "| stage | preset | batch | samples/s | steps/s |", "|---|---|---|---|---|"]
        for t in report["training"]:
            if "skipped" in t:
                lines.append(f"| {t['stage']} | skipped: {t['skipped']} | | | |")
            else:
                lines.append(
                    f"| {t['stage']} | {t['preset']} | {t['batch_size']} | {t['samples_per_s']} "
                    f"| {t['steps_per_s']} |"
                )
    return "\n".join(lines) + "\n"

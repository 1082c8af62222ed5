"""`arlon bench`: how fast the system runs here, and in how much memory, in one report.

    arlon bench                                  # 120, 600 and 2,400 frames; DiT FLOP/s; training
    arlon bench --lengths 600 --no-train --out runs/bench

Every speed is also a ratio against this machine measured in the same run, so that a report from a
noisy or a faster machine still says how close to the hardware each stage runs:

- generation: `arlon generate` end to end and per stage (AR, DiT, VAE) at each length, each length
  in a fresh process (peak resident memory is per process), frames streamed into an mp4 as the CLI
  does; frames/s, real-time factor at 8 fps, peak memory, and per stage its FLOPs (counted by
  `torch.utils.flop_counter` on one unit of it: an AR code, a DiT forward, the VAE's decoding) and
  its FLOP/s as a fraction of a square matmul's FLOP/s measured in the same process;
- the AR: ms per code of the fast path (`ARDecoder`, `LOOKAHEAD` codes checked per forward) and
  of the reference path (the model's own forward with the KV cache, one code per forward),
  interleaved in one process, the best of three each, and whether they drew the same codes;
- the DiT: one denoising step (a forward of batch 2: classifier-free guidance), its achieved FLOP/s
  against the matmul's (the best of before and after);
- training: samples/s of each stage's training step at its default preset (the VAE on world clips
  rendered on the fly; the other stages on the latent cache `--train-data`, skipped without one).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from arlon.data.video_io import VideoWriter
from arlon.diffusion.rectified_flow import strength_steps
from arlon.errors import ArlonError
from arlon.models.ar_sampler import ARSampler, ARSampling, precision_name
from arlon.pipeline.coarse import SEAM_CONTEXT
from arlon.pipeline.job import DiTSampling
from arlon.pipeline.pipeline import ARLONPipeline
from arlon.pipeline.threads import generation_threads
from arlon.timeline import Timeline
from arlon.training.config import TrainConfig
from arlon.training.presets import DEFAULT_PRESETS, train_config
from arlon.training.stages import stage
from arlon.training.trainer import train
from arlon.utils import atomic_path, write_json
from arlon.weights import ROOT

PROMPT = "a red circle moves right and a blue square moves up on a black background"
TRAIN_STAGES = ("vae", "vqvae", "ar", "dit", "arlon")


@dataclass(frozen=True)
class BenchSettings:
    """What `arlon bench` measures: generation at `lengths`, the DiT step, training speeds."""

    model: Path | None = None  # a pipeline folder; None: the embedded model
    lengths: tuple[int, ...] = (120, 600, 2400)
    sampling: DiTSampling = field(default_factory=DiTSampling)
    ar_sampling: ARSampling = field(default_factory=ARSampling)
    threads: int = 2  # the cores to use: a generation splits them as `arlon generate` does
    overlap: bool = True  # the AR drawing beside the DiT, as `arlon generate` does by default
    train_data: Path | None = None  # a latent cache; without it only the VAE's training speed
    train_steps: int = 6
    train: bool = True

    def __post_init__(self):
        if not self.lengths or min(self.lengths) < 1 or self.threads < 1:
            raise ArlonError("lengths and threads must be positive")
        if self.train_steps < 2:
            raise ArlonError(f"train_steps must be at least 2, got {self.train_steps}")


def run_bench(settings: BenchSettings, out: Path | None = None) -> dict:
    """Every measurement of `settings`; printed as JSON lines as they come, and, with `out`,
    written to `out/bench.json` and `out/bench.md`."""
    torch.set_num_threads(settings.threads)
    report = {"machine": machine()}
    lengths = sorted(settings.lengths)
    report["generation"] = generation_lengths(
        settings.model,
        lengths,
        settings.sampling,
        settings.ar_sampling,
        settings.threads,
        settings.overlap,
    )
    # the AR and the DiT alone on the threads each has in a generation
    overlap = settings.overlap and settings.sampling.mode != "baseline"
    torch.set_num_threads(generation_threads(overlap, settings.threads))
    pipe = ARLONPipeline.from_pretrained(settings.model or ROOT)
    report["ar"] = ar_speed(pipe, settings.ar_sampling)
    print(json.dumps({"ar": report["ar"]}), flush=True)
    report["dit"] = dit_efficiency(pipe.dit)
    print(json.dumps({"dit": report["dit"]}), flush=True)
    if settings.train:
        torch.set_num_threads(settings.threads)
        report["training"] = []
        for name in TRAIN_STAGES:
            speed = training_speed(name, settings.train_data, settings.train_steps)
            report["training"].append(speed)
            print(json.dumps(speed), flush=True)
    if out is not None:
        write_json(out / "bench.json", report)
        with atomic_path(out / "bench.md") as tmp:
            tmp.write_text(markdown(report))
    return report


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
    model: str | Path | None,
    frames: int,
    sampling: DiTSampling,
    ar_sampling: ARSampling = ARSampling(),
    cores: int | None = None,
    overlap: bool = True,
) -> dict:
    """One `arlon generate` of `frames` frames in this process, on `cores` cores (default: all):
    seconds per stage, peak memory. The matmul the stages are compared with runs on the threads
    each stage had."""
    overlap = overlap and sampling.mode != "baseline"  # no AR: nothing to overlap
    torch.set_num_threads(generation_threads(overlap, cores))
    pipe = ARLONPipeline.from_pretrained(model or ROOT)
    sampling = pipe.resolved(sampling)  # the model's text guidance and strength, unless given
    loaded = peak_rss_mib()
    stream = pipe.stream(
        PROMPT,
        num_frames=frames,
        sampling=sampling,
        ar_sampling=ar_sampling,
        progress=False,
        overlap=overlap,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "v.mp4", fps=8) as writer:
            for frame in stream:
                writer.write_frame(frame)
        seconds = time.perf_counter() - start
    stages = pipe.last_times.as_dict()["seconds"]
    peak = peak_rss_mib()  # before the counting below
    machine = matmul_flops()
    flops = stage_flops(pipe, frames, sampling, ar_sampling)
    efficiency = {
        name: {
            "flops": int(flops[name]),
            "gflop": round(flops[name] / 1e9, 2),
            "gflops_per_s": round(flops[name] / stages[name] / 1e9, 2),
            "fraction_of_matmul": round(flops[name] / stages[name] / machine, 3),
        }
        for name in flops
        if stages[name] > 0
    }
    codes = pipe.token_frames(pipe.plan(frames)[1]) * pipe.ar.tokens_per_frame
    return {
        "frames": frames,
        "mode": sampling.mode,
        "steps": sampling.num_inference_steps,
        "guidance": sampling.guidance_scale,
        "strength": sampling.strength,
        "ar_precision": precision_name(pipe.ar, ar_sampling.precision),
        "ar_window": ar_sampling.window,
        "overlap": overlap,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 2),
        "realtime_factor_at_8fps": round(frames / 8 / seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        "stage_frames_per_second": {
            k: round(frames / v, 1)
            for k, v in stages.items()
            if k in ("ar", "dit", "vae") and v > 0
        },
        "segments": pipe.last_times.segments,
        "ar_ms_per_code": round(1000 * stages["ar"] / codes, 3) if stages["ar"] else None,
        "matmul_gflops": round(machine / 1e9, 2),
        "stage_efficiency": efficiency,
        "rss_after_load_mib": round(loaded, 1),
        "peak_rss_mib": round(peak, 1),
    }


def generation_lengths(
    model: Path | None,
    lengths: list[int],
    sampling: DiTSampling,
    ar_sampling: ARSampling,
    cores: int,
    overlap: bool,
) -> dict:
    """`generation_speed` at each length, each in a fresh process: peak memory is per process."""
    runs = []
    context = multiprocessing.get_context("spawn")  # fresh: no memory of the runs before
    for frames in lengths:
        with context.Pool(1) as pool:
            args = (model, frames, sampling, ar_sampling, cores, overlap)
            runs.append(pool.apply(generation_speed, args))
            pool.close()  # the worker exits on its own, releasing what it made (tqdm's lock)
            pool.join()
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


def best_seconds(work, repeats: int) -> float:
    """The fastest of `repeats` runs of `work()`, after one to warm up: on a shared machine other
    work only ever adds time, so each figure and the matmul it is a fraction of are timed alike."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a square fp32 matmul: what this machine's BLAS reaches."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_seconds(lambda: a @ b, repeats)


def count_flops(work) -> int:
    """FLOPs of the matmuls, convolutions and attention `work()` runs (attention through the math
    kernel while counting: the counter does not see the fused CPU one)."""
    with (
        torch.inference_mode(),
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):
        work()
    return counter.get_total_flops()


def ar_flops(pipe: ARLONPipeline, token_frames: int, sampling: ARSampling = ARSampling()) -> float:
    """FLOPs of the AR's fast path drawing `token_frames` token frames with `sampling`: the first
    `max_frames + window_stride` counted one by one (the cache fills, then the window slides once
    by its stride), each later one as the mean of the last stride's worth of those (from there on
    the window repeats itself: a refill or a slide every `window_stride` frames; Jacobi decoding's
    forwards, an estimate: their number varies from frame to frame)."""
    sampler = ARSampler(pipe.ar, pipe.text_encoder, pipe.resolved_ar(sampling), seed=0)
    frames = sampler.frames(Timeline.of(PROMPT), token_frames)
    first = min(token_frames, pipe.ar.config.max_frames + sampling.window_stride)
    counted = [count_flops(lambda: next(frames)) for _ in range(first)]
    cycle = counted[-sampling.window_stride :]
    return sum(counted) + sum(cycle) / len(cycle) * (token_frames - first)


def stage_flops(
    pipe: ARLONPipeline, frames: int, sampling: DiTSampling, ar_sampling: ARSampling
) -> dict[str, float]:
    """FLOPs of each stage of a `frames`-frame generation with `sampling` as the generation used it
    (`pipe.resolved`) and `ar_sampling`: the VAE's streamed decoding counted whole, one unit of the
    others counted (an AR code, a VQ window's decoding, a DiT forward) and multiplied."""
    segments, new_latents = pipe.plan(frames)
    c, s, r = pipe.dit.config, pipe.config.segment_frames, pipe.config.reference_frames
    height, width = (n // pipe.vae.spatial_ratio for n in pipe.default_size())
    # the latents as the pipeline streams them: a first segment, then each one's new frames
    chunks = [s] + [s - r] * (segments - 1)
    latents = (torch.zeros(1, c.in_channels, n, height, width) for n in chunks)
    flops = {"vae": count_flops(lambda: collections.deque(pipe.vae.decode_stream(latents), 0))}
    if sampling.mode != "baseline":
        a = pipe.ar.config
        token_frames = pipe.token_frames(new_latents)
        # a window is decoded with SEAM_CONTEXT token frames of its neighbours on either side
        window = torch.zeros(1, a.code_window + 2 * SEAM_CONTEXT, a.frame_height, a.frame_width)
        vq = count_flops(lambda: pipe.vq.decode_codes(window.long())) * token_frames / a.code_window
        flops["ar"] = ar_flops(pipe, token_frames, ar_sampling) + vq
    if sampling.mode != "ar-only":
        batch = 1 if sampling.guidance_scale == 1 else 2
        dit = pipe.dit_for(sampling.mode)
        args, kwargs = dit_inputs(dit, batch, s, height, width)
        if sampling.mode == "baseline":
            kwargs = {}
        forward = count_flops(lambda: dit(*args, **kwargs))
        steps = strength_steps(sampling.num_inference_steps, sampling.strength)
        flops["dit"] = forward * steps * segments
    return flops


def ar_speed(
    pipe: ARLONPipeline,
    sampling: ARSampling = ARSampling(),
    token_frames: int | None = None,
    repeats: int = 3,
) -> dict:
    """Ms per code of the AR's fast path and of its reference path (the model's own forward with the
    KV cache, one code per forward), both with `sampling`, in this process, interleaved, the best
    of `repeats` each; and whether they drew the same codes (`token_frames` token frames, default
    three contexts' worth: the window slides, refilled or not, for the last two thirds)."""
    token_frames = token_frames or 3 * pipe.ar.config.max_frames
    sampling, timeline = pipe.resolved_ar(sampling), Timeline.of(PROMPT)
    seconds: dict[str, list[float]] = {"fast": [], "reference": []}
    codes = {}
    for _ in range(repeats):
        for path in seconds:
            fast = path == "fast"
            path_sampling = sampling if fast else replace(sampling, lookahead=1)
            sampler = ARSampler(pipe.ar, pipe.text_encoder, path_sampling, seed=0, fast=fast)
            start = time.perf_counter()
            codes[path] = torch.stack(list(sampler.frames(timeline, token_frames)))
            seconds[path].append(time.perf_counter() - start)
    per_code = {k: 1000 * min(v) / codes[k].numel() for k, v in seconds.items()}
    flops = ar_flops(pipe, token_frames, sampling) / codes["fast"].numel()
    machine = matmul_flops()
    fast, reference = round(per_code["fast"], 3), round(per_code["reference"], 3)
    return {
        "codes": codes["fast"].numel(),
        "threads": torch.get_num_threads(),
        "lookahead": sampling.lookahead,
        "window": sampling.window,
        "precision": precision_name(pipe.ar, sampling.precision),
        "ms_per_code": fast,
        "reference_ms_per_code": reference,
        "speedup": round(reference / fast, 2),  # of the figures shown beside it
        "identical_codes": torch.equal(codes["fast"], codes["reference"]),
        "mflop_per_code": round(flops / 1e6, 2),
        "fraction_of_matmul": round(flops / (per_code["fast"] / 1000) / machine, 3),
    }


def dit_inputs(model, batch: int, frames: int, height: int, width: int) -> tuple[tuple, dict]:
    """Random inputs of one DiT forward on a latent `(batch, C, frames, height, width)`: the
    latent, a timestep, 30 text states and their mask, and a condition when the model takes one."""
    c = model.config
    x = torch.randn(batch, c.in_channels, frames, height, width)
    states, mask = torch.randn(batch, 30, c.text_dim), torch.ones(batch, 30, dtype=torch.bool)
    kwargs = dict(condition=torch.randn_like(x)) if model.condition_path is not None else {}
    return (x, torch.full((batch,), 500.0), states, mask), kwargs


@torch.inference_mode()  # as generation runs it: no autograd records
def dit_step(model, batch: int, frames: int, height: int, width: int, repeats: int) -> dict:
    """FLOPs and seconds of one forward of the DiT on a latent `(batch, C, frames, height, width)`."""
    args, kwargs = dit_inputs(model, batch, frames, height, width)
    flops = count_flops(lambda: model(*args, **kwargs))
    return {"flops": flops, "seconds": best_seconds(lambda: model(*args, **kwargs), repeats)}


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
        "| frames | seconds | frames/s | x real time (8 fps) | AR s | DiT s | VAE s | waited on AR s | "
        "AR ms/code | AR, DiT, VAE: % of matmul FLOP/s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["generation"]["runs"]:
        st, eff = r["stage_seconds"], r["stage_efficiency"]
        fractions = ", ".join(
            f"{100 * eff[k]['fraction_of_matmul']:.0f}" if k in eff else "-"
            for k in ("ar", "dit", "vae")
        )
        lines.append(
            f"| {r['frames']} | {r['seconds']} | {r['frames_per_second']} | "
            f"{r['realtime_factor_at_8fps']} | {st['ar']} | {st['dit']} | {st['vae']} | {st['waited']} | "
            f"{r['ar_ms_per_code']} | {fractions} | {r['peak_rss_mib']} |"
        )
    if "peak_ratio_longest_to_shortest" in report["generation"]:
        lines.append(
            f"\npeak memory, longest / shortest: "
            f"{report['generation']['peak_ratio_longest_to_shortest']}"
        )
    a = report["ar"]
    lines += [
        "",
        f"AR ({a['precision']}, window {a['window']}), ms per code: {a['ms_per_code']} (fast path) "
        f"against {a['reference_ms_per_code']} "
        f"(reference path, same run): {a['speedup']}x, identical codes: {a['identical_codes']}; "
        f"{a['mflop_per_code']} MFLOP per code = {100 * a['fraction_of_matmul']:.0f}% of the matmul",
    ]
    d = report["dit"]
    lines += [
        "",
        f"DiT step (batch {d['batch']}, latent {d['latent']}): {d['forward_ms']} ms, "
        f"{d['achieved_gflops']} GFLOP/s = {100 * d['fraction_of_matmul']:.0f}% of the "
        f"{d['matmul_gflops']} GFLOP/s matmul, both on {d['threads']} thread(s)",
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

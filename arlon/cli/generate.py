"""`arlon generate`, `arlon coarse` (the AR's video alone) and `arlon assemble` (pipeline folders)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from arlon.cli.common import (
    VIDEO_SUFFIXES,
    add_ar_args,
    ar_settings,
    cut_prompt_warnings,
    input_file,
    non_negative_float,
    note,
    output_file,
    positive_float,
    positive_int,
    report_prompts,
    seed,
    timeline_of,
    warn,
)
from arlon.errors import ArlonError

MODES = ("arlon", "baseline", "ar-only")  # the pipeline's, named here without importing torch
TIMELINE_HELP = "file of 'START_FRAME<TAB>prompt' lines (progressive prompts)"


def add_parsers(commands) -> None:
    _add_generate(commands)
    _add_coarse(commands)
    _add_assemble(commands)


def _add_generate(commands) -> None:
    p = commands.add_parser(
        "generate",
        help="generate a video from a prompt or a timeline of prompts",
        description="Generate a video: the AR transformer draws coarse tokens for the whole video, "
        "the DiT renders it segment by segment guided by them, the VAE decodes frames straight "
        "into the output file (memory does not grow with --frames). Without --model, the "
        "embedded shapes-tiny model, which knows the shapes world: circles, squares and "
        "triangles in eight colours moving over one of four backgrounds; it warns about words it "
        "never saw. Ctrl-C or SIGTERM keeps the frames made so far in a playable file.",
    )
    p.add_argument("text", nargs="?", metavar="PROMPT", help="the prompt")
    p.add_argument(
        "--prompt", action="append", default=[], help="a prompt; repeat it with --switch-every"
    )
    p.add_argument("--switch-every", type=positive_int, help="frames per --prompt (progressive)")
    p.add_argument("--timeline", type=Path, help=TIMELINE_HELP)
    p.add_argument(
        "-o", "--out", type=Path, default=Path("arlon.mp4"), help="output .mp4 or .gif (arlon.mp4)"
    )
    p.add_argument("--gif", action="store_true", help="also write OUT with a .gif suffix")
    p.add_argument("--frames", type=positive_int, default=600, help="frames (default 600)")
    p.add_argument("--steps", type=positive_int, default=5, help="DiT steps per segment (5)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="arlon",
        help="arlon: the AR's tokens guide the DiT (default); baseline: the DiT alone; ar-only: the "
        "AR's tokens decoded without the DiT",
    )
    p.add_argument(
        "--guidance",
        type=non_negative_float,
        help="DiT text guidance (default: the model's, 1 for the embedded model)",
    )
    p.add_argument(
        "--strength",
        type=positive_float,
        help="in (0, 1]: below 1 the DiT runs about that fraction of --steps, the last ones, from "
        "the AR's coarse latent noised to their first time instead of from noise (default: the "
        "model's, 1 for the embedded model)",
    )
    p.add_argument("--height", type=positive_int, help="frame height (default: the model's)")
    p.add_argument("--width", type=positive_int, help="frame width (default: the model's)")
    p.add_argument("--fps", type=positive_float, help="frames per second (default: the model's)")
    p.add_argument("--model", type=Path, help="a pipeline folder (default: the embedded model)")
    p.add_argument(
        "--init-video", type=Path, help="continue this video: OUT holds the frames that follow it"
    )
    add_ar_args(p, prefix="ar-")
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="the AR and the DiT take turns (default: the AR draws ahead in a thread of its own)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch threads (default: half of torch's own count, the physical cores, at least 1, as "
        "the AR and the DiT work side by side; all of them with --no-overlap or --mode baseline)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    prompts = ([args.text] if args.text is not None else []) + args.prompt
    timeline = timeline_of(prompts, args.switch_every, args.timeline)
    output_file(args.out, VIDEO_SUFFIXES)
    if args.init_video is not None:
        input_file(args.init_video, "video to continue")
        if args.init_video.resolve() == args.out.resolve():
            raise ArlonError(f"-o {args.out} is the video to continue: write the new one elsewhere")
    settings = ar_settings(args, prefix="ar_")
    report_prompts(timeline)

    # Only now the heavy imports (torch, diffusers): every mistake above is reported at once.
    # They and the model take seconds before the first progress bar: said at a terminal.
    if not args.quiet and sys.stderr is not None and sys.stderr.isatty():
        note(f"loading {args.model or 'the embedded model'}")
    import torch

    from arlon.pipeline.threads import generation_threads

    overlap = not args.no_overlap and args.mode != "baseline"  # baseline: no AR to overlap
    threads = torch.get_num_threads()  # this process's again afterwards (tests call main)
    torch.set_num_threads(args.threads or generation_threads(overlap))
    try:
        _generate(args, timeline, settings, overlap)
    finally:
        torch.set_num_threads(threads)


def _generate(args: argparse.Namespace, timeline, settings: dict, overlap: bool) -> None:
    from arlon.pipeline import ARLONPipeline, ARSampling, DiTSampling
    from arlon.pipeline.output import VideoOutput, write_video
    from arlon.weights import ROOT

    sampling = DiTSampling(args.steps, args.guidance, args.mode, args.strength)
    pipe = ARLONPipeline.from_pretrained(args.model or ROOT)
    for message in cut_prompt_warnings(timeline, pipe.text_encoder):
        warn(message)
    frames = pipe.stream(
        timeline=timeline,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        sampling=sampling,
        ar_sampling=ARSampling(**settings),
        seed=args.seed,
        init_video=args.init_video,
        progress=not args.quiet,
        overlap=overlap,
    )
    output = VideoOutput(args.out, gif=args.gif)
    started = time.perf_counter()
    written = write_video(frames, output, fps=args.fps or pipe.config.fps)
    seconds = time.perf_counter() - started
    times = pipe.last_times.as_dict()["seconds"]
    print(
        f"wrote {', '.join(map(str, output.paths))}: {written} frames in {seconds:.1f} s "
        f"({written / seconds:.1f} frames/s; AR {times['ar']:.1f} s, DiT {times['dit']:.1f} s, "
        f"VAE {times['vae']:.1f} s)"
    )


def _add_coarse(commands) -> None:
    p = commands.add_parser(
        "coarse",
        help="the AR transformer's coarse video for a prompt or timeline (what guides the DiT)",
        description="Sample codes with the AR transformer for a prompt, a timeline, or prompts "
        "switched every N frames, decode them through the fine VQ-VAE and the VAE, and write the "
        "coarse video (what the DiT is guided by) to OUT. Components default to the embedded "
        "model's.",
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeatable")
    p.add_argument("--timeline", type=Path, help=TIMELINE_HELP)
    p.add_argument("--switch-every", type=positive_int, help="with several --prompt: frames each")
    p.add_argument("--frames", type=positive_int, default=120, help="video frames (default 120)")
    p.add_argument("--out", required=True, type=Path, help="output .mp4 or .gif")
    p.add_argument("--fps", type=positive_float, default=8.0, help="frames per second (8)")
    add_component_args(p)
    add_ar_args(p)
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.set_defaults(run=run_coarse)


def add_component_args(p: argparse.ArgumentParser) -> None:
    """`--ar`, `--vq` and `--vae` folders, each defaulting to the embedded one."""
    parts = (("ar", "AR transformer"), ("vq", "latent VQ-VAE of the AR's tokens"), ("vae", "VAE"))
    for name, what in parts:
        p.add_argument(f"--{name}", type=Path, help=f"trained {what} folder (default: embedded)")


def load_ar_parts(args: argparse.Namespace, names=("ar", "vq", "vae")) -> list:
    """The models of `add_component_args`, from their folders or embedded."""
    from arlon.models.loading import load_model
    from arlon.weights import embedded

    return [load_model(getattr(args, name) or embedded(name), name) for name in names]


def run_coarse(args: argparse.Namespace) -> None:
    timeline = timeline_of(args.prompt, args.switch_every, args.timeline)
    output_file(args.out, VIDEO_SUFFIXES)
    settings = ar_settings(args)
    report_prompts(timeline)

    from arlon.models.ar_sampler import ARSampler, ARSampling
    from arlon.models.text_encoder import TextEncoder
    from arlon.pipeline.coarse import coarse_video
    from arlon.pipeline.output import VideoOutput, write_video

    ar, vq, vae = load_ar_parts(args)
    sampler = ARSampler(ar, TextEncoder.from_pretrained(), ARSampling(**settings), args.seed)
    frames = coarse_video(sampler, vq, vae, timeline, args.frames)
    written = write_video(frames, VideoOutput(args.out), fps=args.fps)
    print(f"wrote {args.out} ({written} frames)")


def _add_assemble(commands) -> None:
    p = commands.add_parser(
        "assemble",
        help="put trained components together into a pipeline folder for 'generate --model'",
        description="Write a pipeline folder (diffusers layout: model_index.json and one subfolder "
        "per component) from trained component folders, each defaulting to the embedded one. "
        "--vae also takes a diffusers video autoencoder folder (Wan, LTX-Video, CogVideoX, ...), "
        "--text-encoder any local transformers text encoder (T5, CLIP, ...).",
    )
    p.add_argument("--out", required=True, type=Path, help="pipeline folder to write")
    add_component_args(p)
    p.add_argument("--dit", type=Path, help="DiT folder, baseline or ARLON (default: embedded)")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a text-only DiT folder for mode baseline, where the ARLON DiT trained its backbone "
        "(default: none; the DiT without its condition)",
    )
    p.add_argument("--text-encoder", type=Path, help="text encoder folder (default: MiniLM)")
    p.add_argument(
        "--segment-frames", type=positive_int, default=9, help="latent frames per DiT segment (9)"
    )
    p.add_argument(
        "--reference-frames",
        type=positive_int,
        default=2,
        help="latent frames of the previous segment kept as reference (default 2)",
    )
    p.add_argument("--shift", type=positive_float, default=1.0, help="sampling timestep shift")
    p.add_argument("--fps", type=positive_float, default=8.0, help="frames per second (8)")
    p.add_argument(
        "--guidance",
        type=non_negative_float,
        default=1.0,
        help="the DiT's text guidance when a call leaves it to the model (default 1)",
    )
    p.add_argument(
        "--strength",
        type=positive_float,
        default=1.0,
        help="in (0, 1]: the DiT's strength in mode arlon when a call leaves it to the model "
        "(default 1: from noise)",
    )
    p.add_argument(
        "--ar-temperature",
        type=non_negative_float,
        default=1.0,
        help="the AR's sampling temperature when a call leaves it to the model (default 1)",
    )
    p.set_defaults(run=run_assemble)


def run_assemble(args: argparse.Namespace) -> None:
    if args.reference_frames >= args.segment_frames:
        raise ArlonError("--reference-frames must be fewer than --segment-frames")
    if not args.strength <= 1:
        raise ArlonError(f"--strength lies in (0, 1], got {args.strength}")
    from arlon.pipeline import ARLONPipeline
    from arlon.pipeline.folders import MODELS, OPTIONAL, assemble
    from arlon.weights import embedded

    folders = {name: getattr(args, name) or embedded(name) for name in MODELS}
    folders |= {name: getattr(args, name) for name in OPTIONAL}
    settings = {k: getattr(args, k) for k in ("segment_frames", "reference_frames", "fps")}
    settings |= {
        "guidance_scale": args.guidance,
        "strength": args.strength,
        "ar_temperature": args.ar_temperature,
    }
    out = assemble(args.out, folders, args.text_encoder, args.shift, settings)
    ARLONPipeline.from_pretrained(out)  # it loads, or the error says which part does not
    print(f"wrote the pipeline {out}")

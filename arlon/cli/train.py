"""`arlon train STAGE` and `arlon cache`: the training stages and the latent cache they read."""

from __future__ import annotations

import argparse
from pathlib import Path

from arlon.cli.common import input_file, positive_float, positive_int
from arlon.errors import ArlonError

STAGES = ("vae", "vqvae", "ar", "dit", "arlon")


def add_parsers(commands) -> None:
    _add_train(commands)
    _add_cache(commands)


def _add_train(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train one stage (vae, vqvae, ar, dit, arlon) from a preset",
        description="Train one stage into OUT: checkpoints in OUT/checkpoints (resume exactly with "
        "--resume), logs in OUT/train.csv and OUT/eval.csv, the final model in OUT/model. Settings "
        "come from the preset (or, resuming, the run's own config.yaml), then --config, then --set, "
        "then the data and budget options. Runs unchanged under "
        "'accelerate launch --multi_gpu --num_processes N -m arlon.cli train ...' (on CPU too).",
    )
    p.add_argument("stage", choices=STAGES, help="the stage to train")
    p.add_argument(
        "--preset",
        help="vae: smoke, shapes-tiny (default); vqvae: smoke, shapes-tiny-fine (default), "
        "shapes-tiny-coarse, opensora-1.2-fine, opensora-1.2-coarse; ar: smoke, shapes-tiny "
        "(default), shapes-tiny-coarse, opensora-1.2; dit, arlon: smoke, shapes-tiny (default), "
        "opensora-1.2",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT exactly")
    p.add_argument(
        "--data",
        type=Path,
        help="a CSV manifest of videos (vae; default: shapes-world clips rendered on the fly) or a "
        "latent cache (vqvae, ar, dit, arlon)",
    )
    p.add_argument("--baseline", type=Path, help="arlon: the trained baseline DiT folder")
    p.add_argument("--init-from", type=Path, help="start from the weights of this model folder")
    p.add_argument("--config", type=Path, help="YAML/JSON file of settings to override")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override settings, e.g. lr=1e-4 data.num_frames=9 "
        "data.text_encoder=PIPELINE/text_encoder (the captions' encoder; default MiniLM) "
        "keep_best=perplexity_heldout (export the best held-out evaluation's weights)",
    )
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=positive_float, help="stop after this many minutes")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    for path, what in ((args.config, "config file"), (args.data, "training data")):
        if path is not None and not path.exists():
            raise ArlonError(f"no such {what}: {path}")
    if args.out.exists() and not args.out.is_dir():
        raise ArlonError(f"--out {args.out} is a file")
    from arlon.training.presets import RunRequest, run_config
    from arlon.training.stages import stage
    from arlon.training.trainer import train

    request = RunRequest(
        stage=args.stage,
        out=args.out,
        resume=args.resume,
        preset=args.preset,
        config_file=args.config,
        sets=tuple(args.set),
        data=args.data,
        baseline=args.baseline,
        init_from=args.init_from,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
    )
    cfg = run_config(request)
    train(stage(cfg.stage), cfg, args.out, resume=args.resume)


def _add_cache(commands) -> None:
    p = commands.add_parser(
        "cache",
        help="encode a data set once into latents (and VQ codes) for the later stages",
        description="Encode every video of a CSV manifest with a trained VAE (causally, in chunks) "
        "into sharded safetensors in OUT, with the captions and timelines. With --fine-vq and "
        "--coarse-vq, every window of latent frames also gets its fine codes (the AR's tokens) and "
        "its coarse latent (the DiT's training condition). OUT is replaced only once complete. "
        "With --add-codes, the codes go into the existing cache OUT, whose latents are kept. With "
        "--append, the manifest's videos are added to the existing cache OUT (with the VQ-VAEs it "
        "was built with), keeping its entries and their held-out split; videos already in it are "
        "skipped.",
    )
    p.add_argument("--vae", type=Path, help="trained VAE folder, or a diffusers video VAE folder")
    p.add_argument("--manifest", type=Path, help="CSV manifest, e.g. from 'arlon world dataset'")
    p.add_argument("--add-codes", action="store_true", help="add codes to the existing cache OUT")
    p.add_argument("--append", action="store_true", help="add the manifest's videos to OUT")
    p.add_argument("--out", required=True, type=Path, help="cache folder")
    p.add_argument("--fine-vq", type=Path, help="trained fine latent VQ-VAE folder")
    p.add_argument("--coarse-vq", type=Path, help="trained coarse latent VQ-VAE folder")
    p.add_argument("--window", type=positive_int, default=9, help="latent frames per VQ window")
    p.set_defaults(run=run_cache)


def run_cache(args: argparse.Namespace) -> None:
    if args.add_codes and args.append:
        raise ArlonError("--add-codes and --append do not go together")
    if args.add_codes and (args.vae is not None or args.manifest is not None):
        raise ArlonError("--add-codes keeps the cache's latents: leave out --vae and --manifest")
    if not args.add_codes and (args.vae is None or args.manifest is None):
        raise ArlonError("building a cache needs --vae and --manifest (or --add-codes)")
    if args.manifest is not None:
        input_file(args.manifest, "manifest")

    from arlon.data.latent_cache import add_codes, build_cache
    from arlon.data.manifest import read_manifest
    from arlon.models.loading import load_model

    if args.manifest is not None:
        read_manifest(args.manifest)  # a damaged manifest is reported before any model loads

    fine = load_model(args.fine_vq, "vq") if args.fine_vq else None
    coarse = load_model(args.coarse_vq, "vq") if args.coarse_vq else None
    if args.add_codes:
        print(f"added codes to the latent cache {add_codes(args.out, fine, coarse)}")
        return
    vae = load_model(args.vae, "vae")
    out = build_cache(vae, args.manifest, args.out, fine, coarse, args.window, append=args.append)
    print(f"{'added to' if args.append else 'wrote'} the latent cache {out}")

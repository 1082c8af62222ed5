"""`arlon convert opensora`: released checkpoints as an ARLON pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from arlon.errors import ArlonError


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "convert",
        help="turn released checkpoints into ARLON's folders (opensora)",
        description="Turn another project's released checkpoints, in local folders, into an ARLON "
        "pipeline folder. Nothing is downloaded.",
    )
    sources = p.add_subparsers(title="sources", required=True, metavar="SOURCE")
    o = sources.add_parser(
        "opensora",
        help="Open-Sora v1.2: STDiT3-XL/2, its VAE and T5-v1.1-XXL",
        description="Write OUT (a new folder) from Open-Sora v1.2's released checkpoints: dit/ "
        "(the baseline for 'arlon train arlon --baseline OUT/dit'), vae/ (for 'arlon cache --vae "
        "OUT/vae'), text_encoder/ (T5, 300 tokens; its files are linked, not copied, for "
        "'--set data.text_encoder=OUT/text_encoder'). Train the latent VQ-VAEs and the AR on the "
        "cache, then complete OUT with 'arlon assemble'.",
    )
    o.add_argument(
        "--stdit", required=True, type=Path, help="local copy of hpcai-tech/OpenSora-STDiT-v3"
    )
    o.add_argument(
        "--vae", required=True, type=Path, help="local copy of hpcai-tech/OpenSora-VAE-v1.2"
    )
    o.add_argument(
        "--text-encoder", required=True, type=Path, help="local copy of DeepFloyd/t5-v1_1-xxl"
    )
    o.add_argument("--out", required=True, type=Path, help="pipeline folder to write (new)")
    o.set_defaults(run=run_opensora)


def run_opensora(args: argparse.Namespace) -> None:
    for name in ("stdit", "vae", "text_encoder"):
        folder = getattr(args, name)
        if not folder.is_dir():
            raise ArlonError(f"no such {name.replace('_', ' ')} folder: {folder}")
    if args.out.exists():
        raise ArlonError(f"{args.out} exists; convert into a new folder")
    from arlon.pipeline.convert import OpenSoraSources, convert_opensora

    sources = OpenSoraSources(args.stdit, args.vae, args.text_encoder)
    out = convert_opensora(sources, args.out)
    print(
        f"wrote {out}: dit/, vae/, text_encoder/ (the AR and the latent VQ-VAE come from training)"
    )

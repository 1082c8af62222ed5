"""`arlon recipe NAME --out DIR`: train a whole pipeline from an empty folder, every budget in one file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from arlon.cli.common import emit_json
from arlon.errors import ArlonError


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "recipe",
        help="train a whole pipeline (data, VAE, VQ-VAE, AR, DiTs) from an empty folder",
        description="Run a recipe's stages in order into OUT: the shapes-world data set, the VAE, "
        "the latent cache, the coarse VQ-VAE and its codes, the AR, the baseline DiT, ARLON's DiT "
        "and the assembled pipeline (OUT/pipeline, ready for 'arlon generate --model'). Each stage "
        "writes OUT/STAGE and, once finished, OUT/STAGE/done.json with its minutes. --resume skips "
        "finished stages and continues a training stage from its last checkpoint. Runs unchanged "
        "under 'accelerate launch -m arlon.cli recipe ...' (training on every process).",
    )
    p.add_argument("recipe", help="a packaged recipe (shapes-tiny, smoke) or a recipe YAML file")
    p.add_argument("--out", required=True, type=Path, help="the recipe's run folder")
    p.add_argument("--dry-run", action="store_true", help="list the stages, budgets and state")
    p.add_argument("--resume", action="store_true", help="continue the recipe run in OUT")
    p.add_argument(
        "--stages",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        help="run only these stages, e.g. dit,arlon (a second process beside another)",
    )
    p.add_argument(
        "--embedded-vae",
        action="store_true",
        help="take the embedded VAE as the VAE stage instead of training one",
    )
    p.add_argument(
        "--embedded-ar",
        action="store_true",
        help="start the AR from the embedded AR's transformer blocks instead of from random "
        "weights (its code table and head start fresh, its cell table too on another grid)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a stage's setting, e.g. ar.max_steps=2000 ar.lr=5e-4",
    )
    p.add_argument(
        "--preview",
        type=Path,
        metavar="PIPELINE",
        help="write a pipeline folder from where the run in OUT stands (unfinished training "
        "stages: their best evaluation or last checkpoint), to try with 'arlon generate --model' "
        "or 'arlon eval --model' while it trains; trains nothing",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run each stage in a process of its own as soon as what it reads is finished, this "
        "machine's cores shared among them (on a CPU: the AR beside the DiTs, then on every core; "
        "a training stage is resumed with its new share), each stage's output in OUT/logs/STAGE.log",
    )
    p.add_argument("--json", action="store_true", help="--dry-run: print the plan as JSON")
    p.set_defaults(run=run_recipe)


def run_recipe(args: argparse.Namespace) -> None:
    from arlon.training.parallel import die_with_parent, run_parallel
    from arlon.training.recipe import check_settings, done, plan, read_recipe
    from arlon.training.recipe import run_recipe as run

    die_with_parent()  # a stage that `--parallel` started stops with it
    recipe = read_recipe(args.recipe, args.set)
    if args.stages is not None and not args.stages:
        raise ArlonError("--stages names no stage; give e.g. --stages dit,arlon")
    for name in args.stages or ():
        recipe.stage(name)  # an unknown stage is a mistake before anything runs
    if args.json and not args.dry_run:
        raise ArlonError("--json prints the plan of --dry-run: give both")
    if args.parallel and (args.stages or args.dry_run or args.preview):
        raise ArlonError("--parallel runs every stage: not with --stages, --dry-run or --preview")
    if args.parallel and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ArlonError("--parallel shares one machine's cores: not under 'accelerate launch'")
    if args.out.exists() and not args.out.is_dir():
        raise ArlonError(f"--out {args.out} is a file")
    if args.resume and not args.dry_run and not args.out.is_dir():
        raise ArlonError(f"nothing to resume in {args.out}: it does not exist")
    check_settings(recipe, args.out)
    if args.preview is not None:
        from arlon.training.recipe import preview

        if not args.out.is_dir():
            raise ArlonError(f"nothing to preview in {args.out}: it does not exist")
        folder = preview(recipe, args.out, args.preview)
        print(f"recipe {recipe.name}: a preview of {args.out} in {folder}")
        return
    if args.dry_run:
        rows = plan(recipe, args.out)
        if args.json:
            emit_json({"recipe": recipe.name, "stages": rows}, None)
            return
        print(f"recipe {recipe.name} into {args.out}:")
        print(_table(rows))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.parallel:
        flags = ["--embedded-vae"] * args.embedded_vae + ["--embedded-ar"] * args.embedded_ar
        flags += ["--set", *args.set] if args.set else []
        folder = run_parallel(recipe, args.recipe, args.out, args.resume, flags)
        print(f"recipe {recipe.name}: {folder}")
        return
    folder = run(recipe, args.out, args.resume, args.stages, args.embedded_vae, args.embedded_ar)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`: one report
        return
    to_do = [stage.name for stage in recipe.stages if done(args.out, stage) is None]
    if to_do:  # --stages ran some of them
        print(f"recipe {recipe.name}: still to do {', '.join(to_do)} (--resume continues)")
    else:
        print(f"recipe {recipe.name}: {folder}")


def _table(rows: list[dict]) -> str:
    keys = ("stage", "kind", "budget", "reads", "state", "output")
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)

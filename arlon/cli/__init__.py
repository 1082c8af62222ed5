"""The `arlon` command: one thin module per command group, each with its own parser.

    arlon generate "a red circle moves right" -o out.mp4 --frames 600 --steps 5    # the embedded model
    arlon generate --timeline story.txt --frames 2400 --gif                         # progressive prompts
    arlon world render --seed 0 --frames 600 --out episode.mp4      # + episode.json (ground truth)
    arlon world score episode.mp4 --truth episode.json               # world metrics as JSON
    arlon train ar --data cache/shapes --out runs/ar                 # --resume continues a run
    arlon recipe shapes-tiny --out runs/recipe                       # the whole model, one command
    arlon eval --suite short --out runs/suite/short                  # generate and score a suite
    arlon bench --lengths 600 --no-train                             # speed and memory
    arlon convert opensora --stdit S --vae V --text-encoder T --out P  # Open-Sora v1.2's weights
    arlon serve --port 7860                                          # the web page

A handler checks its arguments and input files first, then imports the library (torch and
diffusers take seconds to import) and calls it. A user's mistake prints one line (`arlon: error:
...`) at once and exits with status 2; Ctrl-C exits with 130 and SIGTERM with 143, both keeping what
was finished (outputs are written atomically, and a video being generated keeps its frames so far).
"""

from __future__ import annotations

import signal
import sys
import threading

from arlon import __version__
from arlon.cli import bench, convert, evaluate, generate, recipe, serve, train, world
from arlon.cli.common import Parser
from arlon.errors import ArlonError, Stopped


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status (0, 2 for a mistake, 130 / 143 when stopped)."""
    handles_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handles_signals else None
    try:
        args = parser().parse_args(argv)
        args.run(args)
        return 0
    except ArlonError as e:
        print(f"arlon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        kept = e.kept if isinstance(e, Stopped) and e.kept else "finished outputs are kept"
        print(f"\narlon: interrupted: {kept}", file=sys.stderr)
        return e.exit_code if isinstance(e, Stopped) else 130
    finally:
        if handles_signals:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    """SIGTERM stops a run as Ctrl-C does: what was finished is kept."""
    raise Stopped(128 + signum)


def parser() -> Parser:
    root = Parser(
        prog="arlon",
        description="ARLON: long text-to-video generation (autoregressive tokens guide a "
        "diffusion transformer).",
    )
    root.add_argument("--version", action="version", version=f"arlon {__version__}")
    commands = root.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for group in (generate, world, train, recipe, evaluate, bench, convert, serve):
        group.add_parsers(commands)
    return root

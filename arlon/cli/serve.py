"""`arlon serve`: the web page, on the embedded model unless `--model` names a pipeline folder.

    arlon serve                          # http://127.0.0.1:7860
    arlon serve --host 0.0.0.0 --port 8080 --model mymodel

Gradio is an optional extra (`pip install 'arlon[serve]'`): without it the command says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from arlon.cli.common import positive_int
from arlon.errors import ArlonError


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "serve",
        help="a web page to write a story and watch it become a video",
        description="Serve a web page (Gradio) that generates videos from a prompt or a timeline of "
        "prompts: progress per stage and the frames as they are made, a Stop button that keeps "
        "them, live direction (a new prompt takes effect at the next token frame the AR draws), "
        "the finished and the coarse video, and the timeline and command that regenerate it with "
        "'arlon generate'. One generation runs at a time; other visitors wait in a queue. The page "
        "fetches nothing from the internet.",
    )
    p.add_argument("--model", type=Path, help="a pipeline folder (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=port, default=7860, help="port to listen on (7860)")
    p.add_argument(
        "--max-frames", type=positive_int, default=2400, help="longest video a visitor may ask"
    )
    p.set_defaults(run=run_serve)


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in [1, 65535], got {text}")
    return value


def run_serve(args: argparse.Namespace) -> None:
    if args.model is not None and not args.model.is_dir():
        raise ArlonError(f"no such pipeline folder: {args.model}")
    if importlib.util.find_spec("gradio") is None:
        raise ArlonError("arlon serve needs Gradio: pip install 'arlon[serve]'")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # it would call home at import

    from arlon.serve.app import serve

    print(f"loading the model; the page will be at http://{args.host}:{args.port}/", flush=True)
    serve(args.model, args.host, args.port, args.max_frames)

"""What every command shares: the parser class, argument types, timelines, JSON reports.

Arguments and input files are checked here, before any model loads (torch alone takes about two
seconds to import), so a mistake is reported at once, on one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from arlon.errors import ArlonError
from arlon.timeline import Timeline
from arlon.utils import check_seed, write_json
from arlon.world.captions import unknown_words
from arlon.world.prompts import whole_scenes

# What `arlon generate` writes (the video writer's formats, without importing it and torch).
VIDEO_SUFFIXES = (".mp4", ".gif")
# The AR's precisions and windows (`arlon.models.ar_sampler`'s, without importing torch).
PRECISIONS = ("auto", "float32", "bfloat16")
WINDOWS = ("refill", "slide")
PRECISION_HELP = (
    "the AR's arithmetic: auto (default: bfloat16 on a CPU with bf16 matmuls of its own, "
    "AVX512-BF16 or AMX, else float32), float32 or bfloat16"
)
WINDOW_HELP = (
    "what the AR's full context does with the frames it keeps: refill (default: recomputes them, "
    "as in training) or slide (keeps their keys and values, which saw the dropped frames: faster)"
)


class Parser(argparse.ArgumentParser):
    """argparse, whose mistakes are `ArlonError`s: one line, no usage dump, exit status 2; options
    spelt out (an abbreviation that fits one option today may fit two tomorrow, and a command's
    parser reads its subcommand's options too: `eval ar --ar` against `eval --ar-window`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self.prog.removeprefix("arlon").strip()
        raise ArlonError(f"{command}: {message}" if command else message)


# -- argument types: each names the rule it enforces --------------------------------------------


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def count(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def share(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}")
    return value


def seed(text: str) -> int:
    try:
        return check_seed(_number(text, int))
    except ArlonError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. `1,3,5`."""
    return [positive_int(part) for part in text.split(",")]


def float_list(text: str) -> list[float]:
    """Comma-separated numbers of 0 or more, e.g. `1,2,4,7`."""
    return [non_negative_float(part) for part in text.split(",")]


def run_spec(text: str) -> tuple[str, int | None, float | None, float | None]:
    """One suite run: `ar-only`, `MODE@STEPS` (the model's guidance and, for arlon, strength),
    `MODE@STEPS:gGUIDANCE` (e.g. `baseline@30:g4`), each DiT run with `:sSTRENGTH` or not (e.g.
    `arlon@5:s0.6`)."""
    m = re.fullmatch(r"([\w-]+)(?:@(\d+)(?::g([\d.]+))?(?::s([\d.]+))?)?", text.strip())
    if m is None or (m[1] != "ar-only") == (m[2] is None):
        raise argparse.ArgumentTypeError(
            f"expected ar-only, MODE@STEPS, MODE@STEPS:gGUIDANCE or either with :sSTRENGTH, "
            f"got {text!r}"
        )
    steps = None if m[2] is None else positive_int(m[2])
    guidance = None if m[3] is None else non_negative_float(m[3])
    strength = None if m[4] is None else positive_float(m[4])
    if strength is not None and not strength <= 1:
        raise argparse.ArgumentTypeError(f"a strength lies in (0, 1], got {text!r}")
    if strength is not None and strength < 1 and m[1] != "arlon":
        raise argparse.ArgumentTypeError(
            f"a strength starts the DiT from the AR's latent: arlon runs only, got {text!r}"
        )
    return m[1], steps, guidance, strength


def name_list(choices: tuple[str, ...]):
    """A type for comma-separated names, each one of `choices`."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        wrong = [n for n in names if n not in choices]
        if not names or wrong:
            raise argparse.ArgumentTypeError(
                f"takes comma-separated names of {', '.join(choices)}, got {text!r}"
            )
        return names

    return parse


def _number(text: str, kind: type):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if kind is float and value != value:  # NaN compares false with everything
        raise argparse.ArgumentTypeError("expected a number, got nan")
    return value


# -- files ----------------------------------------------------------------------------------------


def output_file(path: Path, suffixes: tuple[str, ...] = ()) -> Path:
    """An output path whose folder exists and whose suffix is one of `suffixes` (when given)."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise ArlonError(f"cannot write {path}: the suffix must be one of {', '.join(suffixes)}")
    if path.is_dir():
        raise ArlonError(f"cannot write {path}: it is a folder")
    if not path.parent.is_dir():
        raise ArlonError(f"cannot write {path}: the folder {path.parent} does not exist")
    return path


def input_file(path: Path, what: str) -> Path:
    if path.is_dir():
        raise ArlonError(f"the {what} {path} is a folder, not a file")
    if not path.is_file():
        raise ArlonError(f"no such {what}: {path}")
    return path


# -- prompts --------------------------------------------------------------------------------------


def timeline_of(prompts: list[str], every: int | None, file: Path | None) -> Timeline:
    """The timeline of `--timeline FILE`, or of prompts (several: switched every `every` frames)."""
    if file is not None:
        if prompts:
            raise ArlonError("give prompts or --timeline, not both")
        return Timeline.read(file)
    if not prompts:
        raise ArlonError("give a prompt (or --prompt ... --switch-every N, or --timeline FILE)")
    if len(prompts) > 1 and every is None:
        raise ArlonError("several prompts need --switch-every N (frames per prompt)")
    if every is not None:
        return Timeline.every(prompts, every)
    return Timeline.of(prompts[0])


def report_prompts(timeline: Timeline) -> None:
    """Say which words of each prompt no training caption used (the model knows nothing of them),
    and how each prompt that states only a change is read."""
    for message in unknown_word_warnings(timeline):
        warn(message)
    for message in reading_notes(timeline):
        note(message)


def unknown_word_warnings(timeline: Timeline) -> list[str]:
    """A warning for each prompt with words no training caption used (the web page shows them)."""
    messages = []
    for start, prompt in timeline:
        unknown = unknown_words(prompt)
        if unknown:
            shown = ", ".join(unknown[:12]) + (", ..." if len(unknown) > 12 else "")
            where = "" if len(timeline) == 1 else f" (frame {start})"
            messages.append(f"the model never saw these words in training{where}: {shown}")
    return messages


def reading_notes(timeline: Timeline) -> list[str]:
    """How each prompt that states only a change is read: as the whole scene it asks for, which is
    what the models are told (`arlon.world.prompts.whole_scenes`)."""
    read = whole_scenes(timeline)
    return [
        f"frame {start}: {told!r} is read as {seen!r}"
        for (start, told), (_, seen) in zip(timeline, read, strict=True)
        if told != seen
    ]


def cut_prompt_warnings(timeline: Timeline, text_encoder) -> list[str]:
    """A warning for each prompt longer than the text encoder reads."""
    limit = text_encoder.max_length
    return [
        f"the prompt at frame {start} is cut to its first {limit} tokens"
        for start, prompt in timeline
        if text_encoder.tokens(prompt) > limit
    ]


def warn(message: str) -> None:
    print(f"arlon: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    print(f"arlon: {message}", file=sys.stderr)


# -- AR sampling ----------------------------------------------------------------------------------


def add_ar_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The AR's sampling settings as options (`--ar-temperature` with prefix "ar-")."""
    parser.add_argument(
        f"--{prefix}temperature",
        type=non_negative_float,
        help="AR sampling temperature, 0: greedy (default: the model's, its pipeline's "
        "ar_temperature; 1 for an AR alone)",
    )
    parser.add_argument(
        f"--{prefix}top-k", type=count, default=0, help="keep the k likeliest codes (0: all)"
    )
    parser.add_argument(
        f"--{prefix}top-p",
        type=positive_float,
        default=1.0,
        help="nucleus sampling mass in (0, 1] (default 1)",
    )
    parser.add_argument(
        f"--{prefix}guidance",
        type=non_negative_float,
        help="AR classifier-free guidance (default 3; 1: none, faster)",
    )
    parser.add_argument(
        f"--{prefix}window-stride",
        type=positive_int,
        default=1,
        help="token frames the AR's full context drops at once (default 1: it keeps the most "
        "history; k: its cache is refilled k times less often, with k - 1 fewer frames at times)",
    )
    parser.add_argument(f"--{prefix}window", choices=WINDOWS, default="refill", help=WINDOW_HELP)
    parser.add_argument(
        f"--{prefix}precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
    )
    parser.add_argument(
        f"--{prefix}lookahead",
        type=positive_int,
        help="codes the AR guesses and checks in one forward (default 8); the same codes at any "
        "value, only faster or slower (1: one code per forward)",
    )


def ar_settings(args: argparse.Namespace, prefix: str = "") -> dict:
    """The AR options of `add_ar_args` as `ARSampling`'s keyword arguments (None: its default)."""
    names = ("temperature", "top_k", "top_p", "window_stride", "window", "precision")
    settings = {name: getattr(args, prefix + name) for name in names}
    if getattr(args, prefix + "lookahead") is not None:
        settings["lookahead"] = getattr(args, prefix + "lookahead")
    if getattr(args, prefix + "guidance") is not None:
        settings["guidance_scale"] = getattr(args, prefix + "guidance")
    if not settings["top_p"] <= 1:
        raise ArlonError(f"--{prefix.replace('_', '-')}top-p must lie in (0, 1]")
    return settings


# -- reports --------------------------------------------------------------------------------------


def emit_json(report: dict, out: Path | None) -> None:
    """Print a report as JSON, and write it atomically to `out` too when given."""
    if out is not None:
        write_json(out, report)
    print(json.dumps(report, indent=2))

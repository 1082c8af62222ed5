"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from arlon.errors import ArlonError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or Ctrl-C inside the block leaves no half-written file behind under the final name.
    The temporary name keeps the suffix so that writers which pick a format by suffix still work.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ArlonError(f"{path} is a directory, not a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as e:
        raise ArlonError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices with instructions of its own (AVX512-BF16, AMX).
    Elsewhere oneDNN emulates them: the AR drew 1.7x (AVX-512 without them) to 4.3x (AVX2) slower
    in bf16 than in float32, and its Jacobi decoding was no longer exact; a training step of the
    recipe's AR took 87 s in bf16 against 5.6 s in float32 (AVX2, one thread)."""
    import torch

    supported = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in supported)


def settings_for(cls: type, settings: dict) -> dict:
    """`settings`, once each is a parameter of `cls`'s constructor: a mistyped model setting (`--set
    model.num_layer=8`) is a one-line error that lists the known ones, not a TypeError."""
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ArlonError(
            f"{cls.__name__} has no setting {', '.join(unknown)}; its settings: "
            + ", ".join(sorted(known))
        )
    return settings


def hold_lock(folder: Path):
    """Hold `folder/.lock` until the returned file is closed: one process at a time works in a run
    folder (two would delete each other's checkpoints, or write the same files)."""
    import fcntl  # here: POSIX only, and only those that write run folders need it

    handle = open(folder / ".lock", "w")  # noqa: SIM115 - held until the caller closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ArlonError(
            f"another process is working in {folder}: let it finish or stop it"
        ) from None
    return handle


def write_json(path: str | os.PathLike, value) -> None:
    """Write `value` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def check_seed(seed) -> int:
    """A seed every generator here takes (torch's and numpy's): an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ArlonError(f"a seed is an integer in [0, 2**63), got {seed!r}")
    return seed


def read_json(path: Path, what: str = "model") -> dict:
    """A JSON object from `path`, or a one-line error naming the file (`what`: whose folder)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArlonError(f"{path.parent} is not a {what} folder (no {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e).splitlines()[0]
        raise ArlonError(f"cannot read {path}: {reason}") from None
    if not isinstance(value, dict):
        raise ArlonError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value

"""Open-Sora-style CSV manifests of captioned videos, and a dataset of fixed-length clips from them.

A manifest has the columns `path,text,num_frames,height,width,fps` and optionally `truth`, the path
of a ground-truth JSON whose `"timeline"` (a list of `[start_frame, caption]` pairs sorted by start)
captions the video piece by piece. Relative paths are relative to the CSV's folder. Only `path` and
`text` are required; missing numbers are read from the video.
"""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from arlon.data.video_io import read_clip, video_info
from arlon.errors import ArlonError
from arlon.utils import atomic_path

COLUMNS = ("path", "text", "num_frames", "height", "width", "fps")
REQUIRED = ("path", "text")
_UINT = re.compile(r"[0-9]+")
_UFLOAT = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


@dataclass
class ManifestRow:
    path: Path
    text: str
    num_frames: int
    height: int
    width: int
    fps: float
    truth: Path | None = None

    @classmethod
    def from_video(
        cls, path: str | Path, text: str, truth: str | Path | None = None
    ) -> ManifestRow:
        """A row whose numbers are read from the video itself."""
        info = video_info(path)
        truth = Path(truth) if truth else None
        return cls(Path(path), text, info.num_frames, info.height, info.width, info.fps, truth)


def read_manifest(csv_path: str | Path) -> list[ManifestRow]:
    """The rows of a manifest, with paths resolved against the CSV's folder."""
    csv_path = Path(csv_path)
    reader = csv.DictReader(io.StringIO(_read_text(csv_path, "manifest"), newline=""))
    try:
        if reader.fieldnames is None:
            raise ArlonError(f"{csv_path} is empty; a manifest starts with the line path,text,...")
        missing = [c for c in REQUIRED if c not in reader.fieldnames]
        if missing:
            raise ArlonError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
        return [_parse_row(csv_path, reader.line_num, record) for record in reader]
    except csv.Error as e:  # e.g. a field over csv.field_size_limit()
        raise ArlonError(f"{csv_path}, line {reader.line_num}: not CSV: {e}") from None


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a manifest or truth file, or a one-line error naming the file.

    Binary files fail here rather than deep inside csv or json: bytes that are not UTF-8, or NUL
    (valid UTF-8, but never in text). A UTF-8 byte-order mark, as spreadsheets write, is dropped.
    """
    if path.is_dir():
        raise ArlonError(f"the {what} {path} is a directory, not a file")
    if not path.is_file():
        raise ArlonError(f"no such {what}: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArlonError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ArlonError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            f"is it really a {what}?"
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ArlonError(f"{path}, line {line}: a NUL byte, not text; is it really a {what}?")
    return text


def _parse_row(csv_path: Path, line: int, record: dict[str, str | None]) -> ManifestRow:
    where = f"{csv_path}, line {line}"
    if not record["path"]:
        raise ArlonError(f"{where}: the path is empty")
    path = csv_path.parent / record["path"]
    if not path.is_file():
        raise ArlonError(f"{where}: no such video {path}")
    truth = csv_path.parent / record["truth"] if record.get("truth") else None
    if truth is not None and not truth.is_file():
        raise ArlonError(f"{where}: no such truth file {truth}")
    text = record["text"] or ""
    numbers = [record.get(c) for c in COLUMNS[2:]]
    if not all(numbers):
        try:
            return ManifestRow.from_video(path, text, truth)
        except ArlonError as e:
            raise ArlonError(f"{where}: {e}") from None
    # int() and float() also take "٣", " 8 ", "1_0", "nan" and "inf"; none is a frame count or rate.
    num_frames, height, width, fps = numbers
    if not all(_UINT.fullmatch(n) for n in numbers[:3]) or not _UFLOAT.fullmatch(fps):
        raise ArlonError(
            f"{where}: num_frames, height, width must be whole numbers and fps a decimal number "
            f"(ASCII digits), got {', '.join(map(repr, numbers))}"
        )
    num_frames, height, width, fps = int(num_frames), int(height), int(width), float(fps)
    if min(num_frames, height, width) < 1 or not 0 < fps < math.inf:
        raise ArlonError(f"{where}: num_frames, height, width and fps must be positive")
    return ManifestRow(path, text, num_frames, height, width, fps, truth)


def write_manifest(csv_path: str | Path, rows: list[ManifestRow]) -> None:
    """Write rows atomically; paths under the CSV's folder are written relative to it."""
    csv_path = Path(csv_path)
    folder = csv_path.parent
    columns = COLUMNS + (("truth",) if any(r.truth for r in rows) else ())
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            record = [_relative(r.path, folder), r.text, r.num_frames, r.height, r.width, r.fps]
            if "truth" in columns:
                record.append(_relative(r.truth, folder) if r.truth else "")
            writer.writerow(record)


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` when it lies inside it, else absolute: the manifest can move."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


class ClipDataset(Dataset):
    """Fixed-length clips from the videos of a manifest, each index always giving the same clip.

    Index i belongs to one video (in manifest order, `clips_per_video` indices each; by default
    one per clip length of video, so long videos are sampled as densely as short ones) and its
    start frame is drawn from an RNG seeded with (seed, i). Videos shorter than one clip are
    skipped with a warning. Items are dicts: `video` float32 `(C, T, H, W)` in [-1, 1], `text`
    (the caption active at the first frame when the row has a truth timeline, else the row's
    text), `path`, `start`.
    """

    def __init__(
        self,
        csv_path: str | Path,
        num_frames: int,
        frame_stride: int = 1,
        seed: int = 0,
        clips_per_video: int | None = None,
    ) -> None:
        if min(num_frames, frame_stride, clips_per_video or 1) < 1:
            raise ArlonError("num_frames, frame_stride and clips_per_video must be >= 1")
        self.num_frames, self.frame_stride, self.seed = num_frames, frame_stride, seed
        self.span = (num_frames - 1) * frame_stride + 1
        rows = read_manifest(csv_path)
        self.rows = [r for r in rows if r.num_frames >= self.span]
        if not self.rows:
            raise ArlonError(f"no video in {csv_path} has the {self.span} frames a clip needs")
        if len(self.rows) < len(rows):
            warnings.warn(
                f"{len(rows) - len(self.rows)} of {len(rows)} videos in {csv_path} are shorter than "
                f"{self.span} frames and are skipped",
                stacklevel=2,
            )
        counts = [clips_per_video or r.num_frames // self.span for r in self.rows]
        self._ends = list(itertools.accumulate(counts))  # index i: first video with end > i
        self._timelines: dict[Path, tuple[list[int], list[str]] | None] = {}

    def __len__(self) -> int:
        return self._ends[-1]

    def clip(self, index: int) -> tuple[ManifestRow, int]:
        """The video and start frame of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} clips")
        row = self.rows[bisect.bisect_right(self._ends, index)]
        start = np.random.default_rng((self.seed, index)).integers(row.num_frames - self.span + 1)
        return row, int(start)

    def __getitem__(self, index: int) -> dict:
        row, start = self.clip(index)
        clip = read_clip(row.path, start, self.num_frames, self.frame_stride)
        return {
            "video": torch.from_numpy(clip).float() / 127.5 - 1.0,  # (C, T, H, W)
            "text": self._caption(row, start),
            "path": str(row.path),
            "start": start,
        }

    def _caption(self, row: ManifestRow, frame: int) -> str:
        if row.truth is None:
            return row.text
        if row.truth not in self._timelines:
            self._timelines[row.truth] = _read_timeline(row.truth)
        timeline = self._timelines[row.truth]
        if timeline is None:
            return row.text
        starts, captions = timeline
        i = bisect.bisect_right(starts, frame) - 1
        return captions[i] if i >= 0 else row.text


def _read_timeline(truth: Path) -> tuple[list[int], list[str]] | None:
    """The (starts, captions) of a truth JSON's timeline, or None; the rest of the file is dropped."""
    try:
        truth_data = json.loads(_read_text(truth, "truth file"))
    except json.JSONDecodeError as e:
        raise ArlonError(f"cannot read the truth file {truth}: not JSON: {e}") from None
    timeline = truth_data.get("timeline") if isinstance(truth_data, dict) else None
    if timeline is None:
        return None
    # A pair is a JSON list [int, str]: int() would also take "12", 4.5 or true as a start frame.
    if not isinstance(timeline, list) or not all(
        isinstance(pair, list)
        and len(pair) == 2
        and type(pair[0]) is int
        and isinstance(pair[1], str)
        for pair in timeline
    ):
        raise ArlonError(f"{truth}: timeline must be [start_frame, caption] pairs sorted by start")
    starts = [start for start, _ in timeline]
    if starts != sorted(starts):
        raise ArlonError(f"{truth}: timeline must be [start_frame, caption] pairs sorted by start")
    return starts, [caption for _, caption in timeline]

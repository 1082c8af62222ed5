"""Writing a generated video: one or more files, fed frame by frame, kept when interrupted.

    written = write_video(pipe.stream(...), VideoOutput(Path("out.mp4"), gif=True), fps=8)

An error removes the partial files. An interruption (Ctrl-C, or SIGTERM turned into one by the
CLI) closes them properly, so the frames made so far stay as playable videos, and then goes on up
as `Stopped`, which says what was kept. Interrupted before the first frame, nothing is left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arlon.data.video_io import VideoWriter
from arlon.errors import Stopped


@dataclass(frozen=True)
class VideoOutput:
    """Where a video goes: `path` (.mp4 or .gif), and with `gif` also `path` as .gif."""

    path: Path
    gif: bool = False

    @property
    def paths(self) -> list[Path]:
        return [self.path] + ([self.path.with_suffix(".gif")] if self.gif else [])


def write_video(frames: Iterable[np.ndarray], output: VideoOutput, fps: float) -> int:
    """Write frames `(H, W, 3)` uint8 to every path of `output`; the number of frames written."""
    with contextlib.ExitStack() as files:
        writers = [files.enter_context(VideoWriter(path, fps=fps)) for path in output.paths]
        try:
            for frame in frames:
                for writer in writers:
                    writer.write_frame(frame)
        except KeyboardInterrupt as stop:
            if writers[0].num_frames == 0:
                raise  # nothing to keep: the writers remove their temporary files
            interrupted = stop
        else:
            interrupted = None
    if interrupted is not None:
        code = interrupted.exit_code if isinstance(interrupted, Stopped) else 130
        kept = f"kept the {writers[0].num_frames} frames made so far in {output.path}"
        raise Stopped(code, kept) from interrupted
    return writers[0].num_frames

"""Streaming video files with PyAV: write frame by frame, read whole videos, clips or frame iterators.

A frame is a numpy `(H, W, 3)` RGB array and a video a `(C, T, H, W)` array, C = 3. Writers accept
uint8 in [0, 255] or floating point in [-1, 1] (numpy arrays or torch tensors; floats are clipped,
then mapped to uint8 by round((x + 1) * 127.5)); readers return uint8.

    with VideoWriter("out.mp4", fps=8) as writer:
        for chunk in chunks:           # (3, T, H, W) each; the whole video never sits in memory
            writer.write(chunk)
    clip = read_clip("out.mp4", start=5000, num_frames=16)  # seeks: costs one GOP, not 5000 frames
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import Interpolation, VideoReformatter

from arlon.errors import ArlonError
from arlon.frames import to_uint8
from arlon.utils import atomic_path

FORMATS = {".mp4": "mp4", ".gif": "gif"}
PIX_FMTS = ("yuv420p", "yuv444p")
# A keyframe every 16 frames bounds the cost of reading a clip anywhere in a long video.
GOP_SIZE = 16
# x264 threads, fixed: left to "auto", x264 counts the CPUs this process may run on (its affinity)
# and encodes one slice per CPU, so the bytes, and the pixels (up to 12 levels), changed with the
# machine, a taskset or a job scheduler's CPU set (measured). A fixed number of slices is
# reproducible, and x264 caps it at one per 64 rows: 64x64 videos encode on one thread, as before.
X264_SLICES = 4

# swscale's defaults lose ~4 dB on the RGB <-> YUV round trip; box-filtered chroma when writing and
# full chroma interpolation when reading, both with accurate rounding, bring it back (measured).
_TO_YUV = Interpolation.AREA | Interpolation.ACCURATE_RND
_TO_RGB = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def _to_uint8(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """uint8 as is; floats in [-1, 1] clipped and mapped to round((x + 1) * 127.5); else an error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16
        x = (x.float() if x.is_floating_point() else x).numpy()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ArlonError(
            f"{what} has dtype {x.dtype}; expected uint8 in [0, 255] or float in [-1, 1]"
        )
    if not np.isfinite(x).all():
        raise ArlonError(f"{what} contains NaN or infinite values")
    return to_uint8(x)


class VideoWriter:
    """Encode frames to `.mp4` (H.264) or `.gif` as they come; publish the file only on success.

    The file is written under a temporary name beside `path` and renamed onto it by `close()` or a
    clean exit from the `with` block; an exception inside the block leaves nothing under `path`.
    `crf` (0 = lossless .. 51) and `pix_fmt` apply to mp4: crf 8 re-reads smooth 64x64 video at
    ~40 dB PSNR with yuv420p (sharp colour edges at ~27 dB, the 4:2:0 chroma limit); "yuv444p"
    keeps full colour (~50 dB) but some players (browsers) cannot play it. GIF uses a palette per
    frame, so flat synthetic frames are lossless and gradients are dithered. The same frames give
    the same bytes from run to run, whatever the load or the CPUs the process may use (x264 is set
    up for it in `_open_stream`).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = 8,
        crf: int = 8,
        pix_fmt: str = "yuv420p",
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(float(fps)).limit_denominator(1001)
        self.num_frames = 0
        fmt = FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise ArlonError(
                f"cannot write {self.path}: unsupported suffix, use one of {list(FORMATS)}"
            )
        if self.fps <= 0:
            raise ArlonError(f"cannot write {self.path}: fps must be positive, got {fps}")
        if not 0 <= crf <= 51:
            raise ArlonError(f"cannot write {self.path}: crf must be in [0, 51], got {crf}")
        if pix_fmt not in PIX_FMTS:
            raise ArlonError(f"cannot write {self.path}: pix_fmt must be one of {PIX_FMTS}")
        self._fmt, self._crf, self._pix_fmt = fmt, crf, pix_fmt
        self._size: tuple[int, int] | None = None
        self._stream: av.VideoStream | None = None
        self._palette: av.filter.Graph | None = None
        # One reformatter for the whole video: a fresh one per frame costs 1 ms at 64x64.
        self._to_yuv = VideoReformatter()
        self._container: av.container.OutputContainer | None = None
        self._files = contextlib.ExitStack()
        tmp = self._files.enter_context(atomic_path(self.path))
        try:
            self._container = av.open(str(tmp), "w", format=fmt)
        except av.FFmpegError as e:
            error = ArlonError(f"cannot write {self.path}: {_reason(e)}")
            self._abort(error)
            raise error from None

    def write_frame(self, frame: np.ndarray | torch.Tensor) -> None:
        """Encode one frame `(H, W, 3)`, uint8 or float in [-1, 1]."""
        frame = _to_uint8(frame, f"frame for {self.path}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ArlonError(
                f"frame for {self.path} has shape {tuple(frame.shape)}; expected (H, W, 3)"
            )
        self._encode(frame)

    def write(self, video: np.ndarray | torch.Tensor) -> None:
        """Encode a chunk of frames `(C, T, H, W)`, C = 3, uint8 or float in [-1, 1]."""
        video = _to_uint8(video, f"video for {self.path}")
        if video.ndim != 4 or video.shape[0] != 3:
            raise ArlonError(
                f"video for {self.path} has shape {tuple(video.shape)}; expected (3, T, H, W)"
            )
        for t in range(video.shape[1]):
            self._encode(video[:, t].transpose(1, 2, 0))

    def close(self) -> None:
        """Flush the encoder and publish the file under its final name."""
        if self._container is None:
            return
        if self.num_frames == 0:
            error = ArlonError(f"no frames were written to {self.path}")
            self._abort(error)
            raise error
        try:
            self._mux(None)
            self._container.close()
        except av.FFmpegError as e:
            error = ArlonError(f"cannot write {self.path}: {_reason(e)}")
            self._abort(error)
            raise error from None
        self._container = None
        self._files.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        elif self._container is not None:
            self._abort(exc)

    def _encode(self, rgb: np.ndarray) -> None:
        if self._container is None:
            raise ArlonError(f"{self.path} is already closed")
        height, width = rgb.shape[:2]
        if self._size is None:
            self._open_stream(height, width)
        elif (height, width) != self._size:
            raise ArlonError(
                f"frame {self.num_frames} for {self.path} is {height}x{width}; "
                f"the first frame was {self._size[0]}x{self._size[1]}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self._fmt == "mp4":
            frame = self._to_yuv.reformat(frame, format=self._pix_fmt, interpolation=_TO_YUV)
        frame.pts = self.num_frames
        frame.time_base = 1 / self.fps
        self._mux(frame)
        self.num_frames += 1

    def _open_stream(self, height: int, width: int) -> None:
        if self._fmt == "mp4" and self._pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ArlonError(
                f"cannot write {self.path}: {height}x{width} frames must have even sides for yuv420p"
            )
        codec = "libx264" if self._fmt == "mp4" else "gif"
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.height, stream.width = height, width
        if self._fmt == "mp4":
            stream.pix_fmt = self._pix_fmt
            stream.codec_context.gop_size = GOP_SIZE
            # A thread setup that does not depend on the machine, so the same frames give the same
            # bytes: see X264_SLICES.
            stream.codec_context.thread_type = "SLICE"
            stream.codec_context.thread_count = X264_SLICES
            # No macroblock-tree rate control: x264's AVX-512 code for it reads memory it never
            # wrote, so the same frames gave other bytes (pixels up to ~10 levels apart) whenever
            # the heap held other garbage: from run to run of a generator, even between two videos
            # in one process (measured; B-frames on, 64x64). Without it x264 also gives the same
            # bytes with its SSE4 to AVX-512 code (forced on one machine), at the same speed and
            # PSNR (+0.1 dB), for ~50% larger files at crf 8. bframes=0 also hid the bug (+8..45%),
            # but still runs that AVX-512 code.
            stream.options = {"crf": str(self._crf), "mbtree": "0"}
        else:
            stream.pix_fmt = "pal8"
            self._palette = _palette_graph(height, width, self.fps)
        self._stream, self._size = stream, (height, width)

    def _mux(self, frame: av.VideoFrame | None) -> None:
        """Encode `frame` (None flushes) and write the packets out."""
        frames = [frame] if self._palette is None else _filter(self._palette, frame)
        if frame is None and self._palette is not None:
            frames.append(None)  # after the filter's last frames, flush the encoder too
        for f in frames:
            self._container.mux(self._stream.encode(f))

    def _abort(self, exc: BaseException) -> None:
        if self._container is not None:
            with contextlib.suppress(av.FFmpegError):
                self._container.close()
            self._container = None
        # Exiting atomic_path with the exception deletes the temporary file instead of renaming it.
        self._files.__exit__(type(exc), exc, exc.__traceback__)


def _palette_graph(height: int, width: int, fps: Fraction) -> av.filter.Graph:
    """rgb24 -> pal8 with a palette computed per frame, so frames stream through one at a time."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format="rgb24", time_base=1 / fps)
    split = graph.add("split")
    palettegen = graph.add("palettegen", "stats_mode=single")
    paletteuse = graph.add("paletteuse", "new=1")
    source.link_to(split)
    split.link_to(palettegen, 0, 0)
    split.link_to(paletteuse, 1, 0)
    palettegen.link_to(paletteuse, 0, 1)
    paletteuse.link_to(graph.add("buffersink"))
    graph.configure()
    return graph


def _filter(graph: av.filter.Graph, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
    """Push `frame` (None: end of stream) and pull every frame the graph has ready."""
    graph.vpush(frame)
    out = []
    while True:
        try:
            out.append(graph.vpull())
        except (av.BlockingIOError, av.EOFError):
            return out


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself; num_frames is exact."""

    num_frames: int
    fps: float
    height: int
    width: int


def video_info(path: str | Path) -> VideoInfo:
    """Frame count (exact: counted from packets when the container does not store it), fps, size."""
    with _open_video(path) as (container, stream):
        if stream.height < 1 or stream.width < 1:
            # Seen in GIF headers followed by garbage: readers would fail on the first frame.
            raise ArlonError(f"{path}: the video has no frame size (corrupt or truncated?)")
        num_frames = stream.frames or sum(
            1 for packet in container.demux(stream) if packet.size > 0
        )
        return VideoInfo(num_frames, float(_frame_rate(stream)), stream.height, stream.width)


def iter_frames(path: str | Path, start: int = 0) -> Iterator[np.ndarray]:
    """Yield the frames `(H, W, 3)` uint8 of a video from frame `start` on.

    Seeks to the keyframe before `start` and decodes forward, so starting deep into a long video
    costs one GOP of decoding. Frame indices come from timestamps, assuming a constant frame rate.
    """
    if start < 0:
        raise ArlonError(f"start must be >= 0, got {start}")
    to_rgb = VideoReformatter()
    with _open_video(path) as (container, stream):
        for frame in _decode_from(container, stream, start):
            yield to_rgb.reformat(frame, format="rgb24", interpolation=_TO_RGB).to_ndarray()


def read_clip(path: str | Path, start: int, num_frames: int, stride: int = 1) -> np.ndarray:
    """Frames start, start + stride, ... (num_frames of them) as a `(C, T, H, W)` uint8 array."""
    if num_frames < 1 or stride < 1:
        raise ArlonError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    span = (num_frames - 1) * stride + 1
    frames = []
    for offset, frame in enumerate(iter_frames(path, start)):
        if offset % stride == 0:
            frames.append(frame.transpose(2, 0, 1))
        if offset + 1 == span:
            return np.stack(frames, axis=1)
    raise ArlonError(
        f"{path} ends before frame {start + span - 1} (clip of {span} frames at {start})"
    )


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video as a `(C, T, H, W)` uint8 array."""
    frames = [frame.transpose(2, 0, 1) for frame in iter_frames(path)]
    if not frames:
        raise ArlonError(f"{path} has no decodable frames (empty, corrupt or truncated?)")
    return np.stack(frames, axis=1)


def write_video(
    path: str | Path, video: np.ndarray | torch.Tensor, fps: float = 8, **kwargs
) -> None:
    """Write a whole `(C, T, H, W)` video (uint8 or float in [-1, 1]); kwargs go to VideoWriter."""
    with VideoWriter(path, fps=fps, **kwargs) as writer:
        writer.write(video)


@contextlib.contextmanager
def _open_video(path: str | Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open the first video stream of `path`; PyAV errors, here or in the block, become ArlonError."""
    path = Path(path)
    if path.is_dir():
        raise ArlonError(f"{path} is a directory, not a video file")
    if not path.is_file():
        raise ArlonError(f"no such video file: {path}")
    if path.stat().st_size == 0:
        raise ArlonError(f"{path} is empty, not a video")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise ArlonError(f"cannot read {path}: {_reason(e)} (not a video, or corrupt)") from None
    try:
        if not container.streams.video:
            raise ArlonError(f"{path} has no video stream")
        stream = container.streams.video[0]
        # A damaged header can name a codec FFmpeg does not know: PyAV then has no decoder for it.
        if stream.codec_context is None:
            raise ArlonError(f"{path}: unknown video codec (not a video, or corrupt)")
        yield container, stream
    except av.FFmpegError as e:
        raise ArlonError(f"cannot decode {path}: {_reason(e)} (corrupt or truncated?)") from None
    finally:
        container.close()


def _decode_from(
    container: av.container.InputContainer, stream: av.VideoStream, start: int
) -> Iterator[av.VideoFrame]:
    """Decoded frames from index `start` on; a frame's index is its timestamp times the fps."""
    rate = _frame_rate(stream)
    origin = stream.start_time or 0

    def index(frame: av.VideoFrame, count: int) -> int:
        if frame.pts is None:
            return count
        return round((frame.pts - origin) * frame.time_base * rate)

    if start > 0:
        with contextlib.suppress(av.FFmpegError):  # not seekable: decode from the beginning
            container.seek(origin + math.floor(start / rate / stream.time_base), stream=stream)
    frames = container.decode(stream)
    first = next(frames, None)
    if first is None:
        return
    if index(first, 0) > start:
        # The seek landed past `start` (odd indexes in foreign files): start over from the beginning.
        container.seek(origin, stream=stream)
        frames = container.decode(stream)
    else:
        frames = itertools.chain([first], frames)
    for count, frame in enumerate(frames):
        if index(frame, count) >= start:
            yield frame


def _frame_rate(stream: av.VideoStream) -> Fraction:
    rate = stream.guessed_rate or stream.average_rate
    if not rate:
        raise ArlonError(f"{stream.container.name} does not say its frame rate")
    return rate


def _reason(error: av.FFmpegError) -> str:
    return (getattr(error, "strerror", None) or str(error)).replace("\n", " ")

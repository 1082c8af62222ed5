import contextlib
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from arlon.data import video_io
from arlon.data.video_io import (
    VideoInfo,
    VideoWriter,
    iter_frames,
    read_clip,
    read_video,
    video_info,
    write_video,
)
from arlon.errors import ArlonError
from arlon.frames import from_frames, to_frames


def moving_gradients(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """A smooth synthetic video `(3, T, H, W)` uint8: sinusoids drifting at different speeds."""
    t = np.arange(num_frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    r = 127.5 + 127.5 * np.sin(2 * np.pi * (x + 2 * t) / width) + 0 * y
    g = 127.5 + 127.5 * np.cos(2 * np.pi * (y + t) / height) + 0 * x
    b = 128 + 60 * np.sin(2 * np.pi * (x - y + t) / 64)
    return np.stack([r, g, b]).astype(np.uint8)


def moving_squares(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Flat colours with sharp edges `(3, T, H, W)` uint8: a red square sliding over blue."""
    video = np.empty((num_frames, height, width, 3), np.uint8)
    video[:] = (40, 60, 200)
    for t in range(num_frames):
        x = (3 * t) % (width - 16)
        video[t, 21:37, x : x + 16] = (230, 30, 30)
    return video.transpose(3, 0, 1, 2)


def moving_discs(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Smooth frames `(3, T, H, W)` uint8 like a generator's: soft coloured discs over a gradient."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((3, num_frames, height, width), np.uint8)
    colours = np.array([(230, 40, 40), (40, 220, 60), (250, 250, 30)], np.float32)
    for t in range(num_frames):
        frame = np.stack(
            [60 + 40 * np.sin((x + t) / 20), 80 + 30 * np.cos((y - t) / 15), 0 * x + 120]
        )
        for k, colour in enumerate(colours):
            cx = width / 2 + width / 3 * np.sin(0.07 * t * (k + 1) + k)
            cy = height / 2 + height / 3 * np.cos(0.05 * t * (k + 2) + 2 * k)
            r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (height / 8) ** 2
            alpha = np.clip(1.5 - r2, 0, 1)
            frame = frame * (1 - alpha) + colour[:, None, None] * alpha
        video[:, t] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_mp4_round_trip_keeps_shape_fps_and_pixels(tmp_path):
    video = moving_gradients(24)
    write_video(tmp_path / "a.mp4", video, fps=12)
    out = read_video(tmp_path / "a.mp4")
    assert out.shape == video.shape and out.dtype == np.uint8
    assert video_info(tmp_path / "a.mp4") == VideoInfo(24, 12.0, 64, 64)
    assert psnr(out, video) > 38


def test_non_integer_fps_is_kept(tmp_path):
    write_video(tmp_path / "a.mp4", moving_gradients(4), fps=30000 / 1001)
    assert video_info(tmp_path / "a.mp4").fps == pytest.approx(29.97, abs=1e-3)


def test_yuv444p_keeps_sharp_colour_edges_that_yuv420p_blurs(tmp_path):
    video = moving_squares(8)
    write_video(tmp_path / "420.mp4", video)
    write_video(tmp_path / "444.mp4", video, pix_fmt="yuv444p")
    full_colour = psnr(read_video(tmp_path / "444.mp4"), video)
    assert full_colour > 45
    assert psnr(read_video(tmp_path / "420.mp4"), video) < full_colour


def test_gif_round_trip_is_exact_for_flat_colours(tmp_path):
    video = moving_squares(10)
    write_video(tmp_path / "a.gif", video, fps=10)
    assert np.array_equal(read_video(tmp_path / "a.gif"), video)
    assert video_info(tmp_path / "a.gif") == VideoInfo(10, 10.0, 64, 64)


def test_gif_accepts_gradients(tmp_path):
    video = moving_gradients(6)
    write_video(tmp_path / "a.gif", video)
    assert psnr(read_video(tmp_path / "a.gif"), video) > 25


@pytest.mark.parametrize(
    "as_float",
    [
        lambda v: v.astype(np.float32) / 127.5 - 1,
        lambda v: v.astype(np.float64) / 127.5 - 1,
        lambda v: torch.from_numpy(v).float() / 127.5 - 1,
    ],
    ids=["float32", "float64", "torch"],
)
def test_float_input_in_minus_one_one_equals_uint8_input(tmp_path, as_float):
    video = moving_gradients(6)
    # crf 0 is lossless, so the comparison does not depend on the encoder's choices.
    write_video(tmp_path / "u8.mp4", video, crf=0)
    write_video(tmp_path / "f.mp4", as_float(video), crf=0)
    assert np.array_equal(read_video(tmp_path / "f.mp4"), read_video(tmp_path / "u8.mp4"))


def test_bfloat16_tensors_are_accepted(tmp_path):
    video = moving_gradients(4)
    write_video(tmp_path / "a.mp4", (torch.from_numpy(video) / 127.5 - 1).bfloat16())
    assert psnr(read_video(tmp_path / "a.mp4"), video) > 30


def test_floats_outside_minus_one_one_are_clipped(tmp_path):
    video = moving_gradients(4).astype(np.float32) / 127.5 - 1
    write_video(tmp_path / "wide.mp4", 3 * video, crf=0)
    write_video(tmp_path / "clipped.mp4", np.clip(3 * video, -1, 1), crf=0)
    assert np.array_equal(read_video(tmp_path / "wide.mp4"), read_video(tmp_path / "clipped.mp4"))


# Encodes in a fresh process that may use only one CPU and runs torch with more threads: left to
# "auto", x264 chose its slices from the CPUs it could use, so bytes differed from the parent's.
ENCODE_ELSEWHERE = """
import os, sys
import numpy as np
import torch
from arlon.data.video_io import write_video

if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
torch.set_num_threads(2)
for frames, out in zip(sys.argv[1::2], sys.argv[2::2]):
    write_video(out, np.load(frames))
"""


def test_the_same_frames_give_the_same_bytes_in_any_process(tmp_path):
    """Two videos in this process caught x264's AVX-512 mbtree code reading garbage (64x64); the
    child, on one CPU, caught its "auto" slices (128x128, where there can be more than one)."""
    cases = [("64.mp4", 64), ("128.mp4", 128), ("64.gif", 64)]
    args = []
    for name, size in cases:
        np.save(tmp_path / f"{name}.npy", moving_discs(40, size, size))
        args += [str(tmp_path / f"{name}.npy"), str(tmp_path / f"child-{name}")]
    subprocess.run(
        [sys.executable, "-c", ENCODE_ELSEWHERE, *args],
        cwd=Path(__file__).parents[1],
        check=True,
    )
    for name, _ in cases:
        video = np.load(tmp_path / f"{name}.npy")
        write_video(tmp_path / f"a-{name}", video)
        write_video(tmp_path / f"b-{name}", video)
        data = (tmp_path / f"a-{name}").read_bytes()
        assert data == (tmp_path / f"b-{name}").read_bytes(), name
        assert data == (tmp_path / f"child-{name}").read_bytes(), name


def test_write_frame_and_write_chunks_give_the_same_video(tmp_path):
    video = moving_gradients(10)
    with VideoWriter(tmp_path / "frames.mp4", crf=0) as writer:
        for t in range(10):
            writer.write_frame(video[:, t].transpose(1, 2, 0))
    with VideoWriter(tmp_path / "chunks.mp4", crf=0) as writer:
        writer.write(video[:, :3])
        writer.write(video[:, 3:])
    assert np.array_equal(read_video(tmp_path / "frames.mp4"), read_video(tmp_path / "chunks.mp4"))


def test_streaming_write_holds_only_a_frame_in_memory(tmp_path):
    x = np.arange(64)
    colours = np.array([0, 85, 170])
    tracemalloc.start()
    try:
        with VideoWriter(tmp_path / "long.mp4") as writer:
            for t in range(2000):
                frame = (4 * x[None, :, None] + 2 * x[:, None, None] + t + colours) % 256
                writer.write_frame(frame.astype(np.uint8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2000 * 64 * 64 * 3 / 20
    assert video_info(tmp_path / "long.mp4").num_frames == 2000


def test_iter_frames_from_start_equals_the_tail_of_read_video(tmp_path):
    write_video(tmp_path / "a.mp4", moving_gradients(40))
    whole = read_video(tmp_path / "a.mp4")
    # Around the keyframes (every 16 frames), and the last frame.
    for start in [0, 1, 15, 16, 17, 33, 39]:
        tail = np.stack(list(iter_frames(tmp_path / "a.mp4", start=start)))  # (T, H, W, C)
        assert np.array_equal(tail.transpose(3, 0, 1, 2), whole[:, start:]), start


def test_iter_frames_from_start_in_a_gif(tmp_path):
    write_video(tmp_path / "a.gif", moving_squares(12))
    whole = read_video(tmp_path / "a.gif")
    tail = np.stack(list(iter_frames(tmp_path / "a.gif", start=7)))  # (T, H, W, C)
    assert np.array_equal(tail.transpose(3, 0, 1, 2), whole[:, 7:])


def test_read_clip_matches_read_video(tmp_path):
    write_video(tmp_path / "a.mp4", moving_gradients(40))
    whole = read_video(tmp_path / "a.mp4")
    assert np.array_equal(read_clip(tmp_path / "a.mp4", 5, 8), whole[:, 5:13])
    assert np.array_equal(read_clip(tmp_path / "a.mp4", 20, 4, stride=3), whole[:, 20:30:3])
    with pytest.raises(ArlonError, match="ends before frame 40"):
        read_clip(tmp_path / "a.mp4", 33, 8)


class CountingContainer:
    """A PyAV container that counts the frames it decodes."""

    def __init__(self, container):
        self.container, self.decoded = container, 0

    def seek(self, *args, **kwargs):
        return self.container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


def test_a_clip_deep_in_a_long_video_is_cheap_to_read(tmp_path, monkeypatch):
    write_video(tmp_path / "long.mp4", np.repeat(moving_gradients(50), 12, axis=1), crf=30)
    whole = read_video(tmp_path / "long.mp4")
    opened, original = [], video_io._open_video

    @contextlib.contextmanager
    def counting(path):
        with original(path) as (container, stream):
            opened.append(CountingContainer(container))
            yield opened[-1], stream

    monkeypatch.setattr(video_io, "_open_video", counting)
    clip = read_clip(tmp_path / "long.mp4", 580, 8)
    assert np.array_equal(clip, whole[:, 580:588])
    assert opened[-1].decoded <= 8 + 2 * 16  # from the keyframe before it (GOP of 16), not frame 0


def one_line_error(call) -> str:
    with pytest.raises(ArlonError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_unwritable_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    message = one_line_error(lambda: VideoWriter(tmp_path / "file" / "a.mp4"))
    assert "a.mp4" in message


def test_unsupported_suffix_is_a_clear_error(tmp_path):
    assert ".avi" in one_line_error(lambda: VideoWriter(tmp_path / "a.avi"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "frame, problem",
    [
        (np.zeros((3, 64, 64), np.uint8), "shape"),
        (np.zeros((64, 64, 4), np.uint8), "shape"),
        (np.zeros((64, 64), np.uint8), "shape"),
        (np.zeros((64, 64, 3), np.int64), "dtype int64"),
        (np.zeros((64, 64, 3), bool), "dtype bool"),
        (np.full((64, 64, 3), np.nan, np.float32), "NaN"),
        (np.zeros((63, 64, 3), np.uint8), "even"),
    ],
)
def test_bad_frames_are_clear_errors_and_leave_no_file(tmp_path, frame, problem):
    def write():
        with VideoWriter(tmp_path / "a.mp4") as writer:
            writer.write_frame(frame)

    assert problem in one_line_error(write)
    assert not list(tmp_path.iterdir())


def test_bad_chunks_are_clear_errors(tmp_path):
    with VideoWriter(tmp_path / "a.mp4") as writer:
        assert "(3, T, H, W)" in one_line_error(lambda: writer.write(np.zeros((64, 64, 3))))
        assert "(3, T, H, W)" in one_line_error(lambda: writer.write(np.zeros((4, 2, 64, 64))))
        writer.write(moving_gradients(2))
        assert "first frame" in one_line_error(lambda: writer.write(moving_gradients(2, 32, 32)))
    assert video_info(tmp_path / "a.mp4").num_frames == 2


def test_an_exception_inside_the_writer_leaves_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "a.mp4") as writer:
        writer.write(moving_gradients(4))
        raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())


def test_a_writer_given_no_frames_leaves_no_file(tmp_path):
    def write():
        with VideoWriter(tmp_path / "a.mp4"):
            pass

    assert "no frames" in one_line_error(write)
    assert not list(tmp_path.iterdir())


READERS = {
    "read_video": read_video,
    "video_info": video_info,
    "iter_frames": lambda p: list(iter_frames(p)),
    "iter_frames from 3": lambda p: next(iter_frames(p, 3)),
    "read_clip": lambda p: read_clip(p, 0, 2),
    "read_clip at 5": lambda p: read_clip(p, 5, 2, stride=2),
}


@pytest.fixture(params=list(READERS))
def read(request):
    return READERS[request.param]


def test_missing_file_is_a_clear_error(tmp_path, read):
    assert "missing.mp4" in one_line_error(lambda: read(tmp_path / "missing.mp4"))


def a_valid_mp4(folder: Path) -> bytes:
    write_video(folder / "valid.mp4", moving_gradients(8))
    return (folder / "valid.mp4").read_bytes()


# Each writes a file under the folder it is given and returns its path.
BAD_FILES = {
    "random bytes": lambda d: d / "random.mp4",
    "empty": lambda d: d / "empty.mp4",
    "a directory": lambda d: d / "folder.mp4",
    "text": lambda d: d / "text.mp4",
    "random bytes as gif": lambda d: d / "random.gif",
    "a gif header and garbage": lambda d: d / "header.gif",
    "truncated": lambda d: d / "truncated.mp4",
    "an unknown codec": lambda d: d / "codec.mp4",
}


def make_bad_file(folder: Path, kind: str) -> Path:
    path = BAD_FILES[kind](folder)
    rng = np.random.default_rng(0)
    if kind in ("random bytes", "random bytes as gif"):
        path.write_bytes(rng.bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "a directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("path,text\nvideos/a.mp4,a red circle\n")
    elif kind == "a gif header and garbage":
        path.write_bytes(b"GIF89a" + rng.bytes(200))
    elif kind == "truncated":
        data = a_valid_mp4(folder)
        path.write_bytes(data[: len(data) // 2])
    else:  # FFmpeg opens it but has no decoder: PyAV's stream has no codec context
        path.write_bytes(a_valid_mp4(folder).replace(b"avc1", b"zzzz"))
    return path


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_files_that_are_not_videos_are_one_line_errors(tmp_path, read, kind):
    path = make_bad_file(tmp_path, kind)
    message = one_line_error(lambda: read(path))
    assert str(path) in message


def test_the_errors_say_what_is_wrong(tmp_path):
    assert "is a directory" in one_line_error(
        lambda: read_video(make_bad_file(tmp_path, "a directory"))
    )
    assert "is empty" in one_line_error(lambda: video_info(make_bad_file(tmp_path, "empty")))
    assert "not a video" in one_line_error(lambda: read_clip(make_bad_file(tmp_path, "text"), 0, 1))
    codec = make_bad_file(tmp_path, "an unknown codec")
    assert "unknown video codec" in one_line_error(lambda: video_info(codec))
    header = make_bad_file(tmp_path, "a gif header and garbage")
    assert "no frame size" in one_line_error(lambda: video_info(header))


def test_frames_go_into_the_models_and_back_unchanged():
    frames = np.arange(2 * 4 * 8 * 4 * 3, dtype=np.int64).reshape(2, 4, 8, 4, 3) % 256
    frames = frames.astype(np.uint8)  # every uint8 value, (B, T, H, W, 3)
    video = from_frames(frames)
    assert video.shape == (2, 3, 4, 8, 4) and video.dtype == torch.float32
    assert video.min() == -1 and video.max() == 1
    assert torch.equal(video[1, :, 2, 5, 3], from_frames(torch.from_numpy(frames[1]))[:, 2, 5, 3])
    np.testing.assert_array_equal(to_frames(video), frames)
    np.testing.assert_array_equal(to_frames(from_frames(frames[0])), frames[0])

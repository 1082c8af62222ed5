import time
import tracemalloc

import numpy as np
import pytest
import torch

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


def test_a_clip_deep_in_a_long_video_is_cheap_to_read(tmp_path):
    write_video(tmp_path / "long.mp4", np.repeat(moving_gradients(50), 12, axis=1), crf=30)
    begin = time.perf_counter()
    whole = read_video(tmp_path / "long.mp4")
    full = time.perf_counter() - begin
    begin = time.perf_counter()
    clip = read_clip(tmp_path / "long.mp4", 580, 8)
    part = time.perf_counter() - begin
    assert np.array_equal(clip, whole[:, 580:588])
    assert part < full / 5  # one GOP of 16 frames, not 580


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


@pytest.mark.parametrize("read", [read_video, video_info, lambda p: next(iter_frames(p, 3))])
def test_missing_file_is_a_clear_error(tmp_path, read):
    assert "missing.mp4" in one_line_error(lambda: read(tmp_path / "missing.mp4"))


@pytest.mark.parametrize("read", [read_video, video_info])
def test_corrupt_files_are_clear_errors(tmp_path, read):
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "random.mp4" in one_line_error(lambda: read(tmp_path / "random.mp4"))
    write_video(tmp_path / "a.mp4", moving_gradients(8))
    data = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    assert "truncated.mp4" in one_line_error(lambda: read(tmp_path / "truncated.mp4"))

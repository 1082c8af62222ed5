import json
import re
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from arlon.data.manifest import ClipDataset, ManifestRow, read_manifest, write_manifest
from arlon.data.video_io import read_clip, write_video
from arlon.errors import ArlonError


def ramp_video(num_frames: int, size: int = 32) -> np.ndarray:
    """`(3, T, H, W)` uint8 whose brightness grows with the frame index, so clips differ."""
    t = np.arange(num_frames)[None, :, None, None]
    y = np.arange(size)[None, None, :, None]
    channel = np.arange(3)[:, None, None, None]
    video = np.broadcast_to((4 * t + 2 * y + 60 * channel) % 256, (3, num_frames, size, size))
    return video.astype(np.uint8)


@pytest.fixture
def videos(tmp_path):
    """A 40-frame and a 6-frame video in tmp_path/videos, and a truth JSON for the long one."""
    folder = tmp_path / "videos"
    write_video(folder / "long.mp4", ramp_video(40), fps=10)
    write_video(folder / "short.mp4", ramp_video(6), fps=10)
    truth = {"timeline": [[5, "a red circle"], [20, "a blue circle"]], "frames": [{}] * 40}
    (folder / "long.json").write_text(json.dumps(truth))
    return folder


def write_csv(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_write_read_round_trip(tmp_path, videos):
    rows = [
        ManifestRow.from_video(videos / "long.mp4", 'text, with "quotes"', videos / "long.json"),
        ManifestRow.from_video(videos / "short.mp4", "short"),
    ]
    write_manifest(tmp_path / "m.csv", rows)
    assert read_manifest(tmp_path / "m.csv") == rows
    assert rows[0].num_frames == 40 and rows[0].fps == 10.0 and rows[0].height == 32


def test_paths_are_written_relative_to_the_csv_so_the_folder_can_move(tmp_path, videos):
    write_manifest(tmp_path / "m.csv", [ManifestRow.from_video(videos / "long.mp4", "x")])
    assert "videos/long.mp4" in (tmp_path / "m.csv").read_text().splitlines()[1].split(",")[0]
    moved = tmp_path / "moved"
    shutil.copytree(videos, moved / "videos")
    shutil.copy(tmp_path / "m.csv", moved)
    shutil.rmtree(videos)
    assert read_manifest(moved / "m.csv")[0].path == moved / "videos" / "long.mp4"


def test_relative_paths_are_relative_to_the_csv_folder_not_the_cwd(tmp_path, videos, monkeypatch):
    csv_path = write_csv(tmp_path / "lists" / "m.csv", "path,text\n../videos/long.mp4,hi\n")
    monkeypatch.chdir(videos)
    assert read_manifest(csv_path)[0].path.resolve() == (videos / "long.mp4").resolve()


def test_missing_numbers_are_read_from_the_video(tmp_path, videos):
    csv_path = write_csv(tmp_path / "m.csv", "text,path,fps\nhi,videos/long.mp4,\n")
    row = read_manifest(csv_path)[0]
    assert (row.num_frames, row.height, row.width, row.fps) == (40, 32, 32, 10.0)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("path,caption\nvideos/long.mp4,hi\n", "lacks the column(s) text"),
        ("path,text\nvideos/long.mp4,hi\nvideos/gone.mp4,hi\n", "line 3: no such video"),
        ("path,text,num_frames,height,width,fps\nvideos/long.mp4,hi,many,32,32,8\n", "numbers"),
        ("path,text,truth\nvideos/long.mp4,hi,gone.json\n", "no such truth file"),
    ],
)
def test_bad_manifests_are_clear_errors(tmp_path, videos, text, problem):
    with pytest.raises(ArlonError, match=re.escape(problem)):
        read_manifest(write_csv(tmp_path / "m.csv", text))


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ArlonError, match="no such manifest"):
        read_manifest(tmp_path / "m.csv")


def one_line_error(call) -> str:
    with pytest.raises(ArlonError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


HEADER = b"path,text,num_frames,height,width,fps\n"


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "is empty"),
        (b"\xef\xbb\xbf", "is empty"),  # a byte-order mark and nothing else
        (b"path,text\nvideos/long.mp4,caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
        (b"\xff\xfep\x00a\x00t\x00h\x00", "line 1: not UTF-8"),  # UTF-16
        (b"path,text\nvideos/long.mp4,a\x00b\n", "line 2: a NUL byte"),
        (b"path\x00,text\n", "line 1: a NUL byte"),
        (HEADER + "videos/long.mp4,hi,٣٣,32,32,8\n".encode(), "ASCII digits"),  # Arabic-Indic
        (HEADER + "videos/long.mp4,hi,40,³,32,8\n".encode(), "ASCII digits"),  # superscript
        (HEADER + "videos/long.mp4,hi,40,32,３２,8\n".encode(), "ASCII digits"),  # fullwidth
        (HEADER + "videos/long.mp4,hi,40,32,32,٨\n".encode(), "ASCII digits"),
        (HEADER + b"videos/long.mp4,hi,4_0,32,32,8\n", "ASCII digits"),
        (HEADER + b"videos/long.mp4,hi, 40,32,32,8\n", "ASCII digits"),
        (HEADER + b"videos/long.mp4,hi,-40,32,32,8\n", "ASCII digits"),
        (HEADER + b"videos/long.mp4,hi,40,32,32,nan\n", "ASCII digits"),
        (HEADER + b"videos/long.mp4,hi,40,32,32,inf\n", "ASCII digits"),
        (HEADER + b"videos/long.mp4,hi,40,32,32,1e999\n", "positive"),
        (HEADER + b"videos/long.mp4,hi,40,0,32,8\n", "positive"),
        (HEADER + b"videos/long.mp4,hi,40,32,32,0.0\n", "positive"),
        (b"text,path\nhi\n", "line 2: the path is empty"),
        (b'path,text\nvideos/long.mp4,"' + b"x" * 200_000 + b'"\n', "not CSV"),
        (b"path,text\nvideos/text.mp4,hi\n", "line 2: cannot read"),
    ],
    ids=lambda x: x.decode(errors="replace")[-40:] if isinstance(x, bytes) else None,
)
def test_garbage_in_a_manifest_is_a_one_line_error(tmp_path, videos, data, problem):
    (videos / "text.mp4").write_text("path,text\nnot a video\n")
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes(data)
    message = one_line_error(lambda: read_manifest(csv_path))
    assert str(csv_path) in message and problem in message


def test_manifests_of_random_bytes_are_one_line_errors(tmp_path):
    csv_path = tmp_path / "m.csv"
    for seed in range(20):
        csv_path.write_bytes(np.random.default_rng(seed).bytes(2000))
        assert str(csv_path) in one_line_error(lambda: read_manifest(csv_path))


def test_a_directory_is_not_a_manifest(tmp_path):
    (tmp_path / "m.csv").mkdir()
    assert "is a directory" in one_line_error(lambda: read_manifest(tmp_path / "m.csv"))


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, videos):
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfpath,text\nvideos/long.mp4,hi\n")  # as Excel saves it
    assert read_manifest(csv_path)[0].path == videos / "long.mp4"


@pytest.fixture
def manifest(tmp_path, videos):
    return write_csv(
        tmp_path / "m.csv",
        "path,text,truth\nvideos/long.mp4,a circle,videos/long.json\nvideos/short.mp4,short,\n",
    )


def test_clips_have_the_documented_shape_dtype_and_range(manifest):
    with pytest.warns(UserWarning, match="1 of 2 videos"):
        dataset = ClipDataset(manifest, num_frames=8, frame_stride=2)
    item = dataset[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    expected = read_clip(item["path"], item["start"], 8, stride=2)
    assert torch.equal(item["video"], torch.from_numpy(expected).float() / 127.5 - 1)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["video"].shape == (2, 3, 8, 32, 32) and len(batch["text"]) == 2


def test_each_index_always_gives_the_same_clip(manifest):
    a = ClipDataset(manifest, num_frames=4, seed=3, clips_per_video=10)
    b = ClipDataset(manifest, num_frames=4, seed=3, clips_per_video=10)
    other_seed = ClipDataset(manifest, num_frames=4, seed=4, clips_per_video=10)
    assert len(a) == 20
    starts = [a.clip(i) for i in range(len(a))]
    assert starts == [b.clip(i) for i in range(len(b))]
    assert starts != [other_seed.clip(i) for i in range(len(other_seed))]
    assert torch.equal(a[7]["video"], b[7]["video"]) and a[7]["start"] == b[7]["start"]
    with pytest.raises(IndexError):
        a[20]


def test_long_videos_give_more_clips_by_default(manifest):
    dataset = ClipDataset(manifest, num_frames=5)
    # 40 // 5 clips from the long video, 6 // 5 from the short one.
    assert len(dataset) == 9
    assert [dataset.clip(i)[0].path.name for i in range(9)] == ["long.mp4"] * 8 + ["short.mp4"]
    assert all(0 <= dataset.clip(i)[1] <= 35 for i in range(8))


def test_no_video_long_enough_is_a_clear_error(manifest):
    with pytest.raises(ArlonError, match="41 frames"):
        ClipDataset(manifest, num_frames=41)


def test_text_is_the_timeline_caption_active_at_the_first_frame(manifest):
    with pytest.warns(UserWarning):
        dataset = ClipDataset(manifest, num_frames=8, clips_per_video=40)
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        start = item["start"]
        caption = "a circle" if start < 5 else "a red circle" if start < 20 else "a blue circle"
        assert item["text"] == caption, start
        seen.add(caption)
    assert len(seen) == 3  # every segment, and the row's text before the first one


def test_rows_without_a_timeline_use_their_text(tmp_path, videos):
    (videos / "plain.json").write_text(json.dumps({"frames": []}))
    csv_path = write_csv(
        tmp_path / "m.csv",
        "path,text,truth\nvideos/long.mp4,plain,videos/plain.json\nvideos/short.mp4,short,\n",
    )
    dataset = ClipDataset(csv_path, num_frames=4, clips_per_video=3)
    assert [dataset[i]["text"] for i in range(6)] == ["plain"] * 3 + ["short"] * 3


def test_each_truth_file_is_parsed_once(manifest, monkeypatch):
    loads = []
    real_loads = json.loads

    def counting_loads(text):
        loads.append(text)
        return real_loads(text)

    monkeypatch.setattr(json, "loads", counting_loads)
    with pytest.warns(UserWarning):
        dataset = ClipDataset(manifest, num_frames=8, clips_per_video=5)
    for i in range(len(dataset)):
        dataset[i]
    assert len(loads) == 1


def test_a_malformed_timeline_is_a_clear_error(manifest, videos):
    (videos / "long.json").write_text(json.dumps({"timeline": [[20, "b"], [5, "a"]]}))
    with pytest.warns(UserWarning):
        dataset = ClipDataset(manifest, num_frames=8)
    with pytest.raises(ArlonError, match="sorted by start"):
        dataset[0]


@pytest.mark.parametrize(
    "data, problem",
    [
        (np.random.default_rng(0).bytes(2000), "not UTF-8"),
        (b'{"timeline": [[5, "a\x00"]]}', "NUL"),
        (b"timeline: [[5, a]]", "not JSON"),
        (b"", "not JSON"),
        (b'{"timeline": "5 a"}', "pairs"),
        (b'{"timeline": ["5a"]}', "pairs"),
        (b'{"timeline": [["5", "a"]]}', "pairs"),
        (b'{"timeline": [[true, "a"]]}', "pairs"),
        (b'{"timeline": [[5.5, "a"]]}', "pairs"),
        (b'{"timeline": [[5, 7]]}', "pairs"),
        (b'{"timeline": [[5, "a", "b"]]}', "pairs"),
    ],
    ids=lambda x: x.decode(errors="replace")[:30] if isinstance(x, bytes) else None,
)
def test_garbage_in_a_truth_file_is_a_one_line_error(tmp_path, videos, data, problem):
    (videos / "long.json").write_bytes(data)
    csv_path = write_csv(
        tmp_path / "m.csv", "path,text,truth\nvideos/long.mp4,hi,videos/long.json\n"
    )
    dataset = ClipDataset(csv_path, num_frames=8)
    message = one_line_error(lambda: dataset[0])
    assert str(videos / "long.json") in message and problem in message


def test_the_cache_command_reports_a_damaged_manifest_before_loading_a_model(tmp_path, capsys):
    from arlon import cli

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(bytes(range(256)) * 8)
    argv = ["cache", "--vae", str(tmp_path / "no-vae"), "--manifest", str(manifest)]
    assert cli.main([*argv, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "m.csv" in err and "no-vae" not in err and err.count("\n") == 1

"""The `arlon` command: outputs, one-line errors, nothing half-written, --help."""

import csv
import json

import pytest

from arlon import cli
from arlon.data.video_io import video_info
from arlon.errors import ArlonError


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_render_writes_video_and_truth_then_score_reads_them_back(tmp_path, capsys):
    video = tmp_path / "ep.mp4"
    code, out, _ = run(capsys, "world", "render", "--seed", 1, "--frames", 120, "--out", video)
    assert code == 0 and "ep.json" in out
    info = video_info(video)
    assert (info.num_frames, info.height, info.width, info.fps) == (120, 64, 64, 8.0)
    truth = json.loads((tmp_path / "ep.json").read_text())
    assert len(truth["frames"]) == 120 and truth["timeline"][0][0] == 0

    code, out, _ = run(capsys, "world", "score", video, "--truth", tmp_path / "ep.json")
    report = json.loads(out)
    assert code == 0
    for name in ("colour", "shape", "background", "motion", "count", "identity"):
        assert report[name] >= 0.99, name


def test_render_a_prompt_and_score_it_against_the_prompt(tmp_path, capsys):
    video = tmp_path / "red.gif"
    prompt = "a red circle moves right on a black background"
    assert (
        run(capsys, "world", "render", "--prompt", prompt, "--frames", 48, "--out", video)[0] == 0
    )
    code, out, _ = run(
        capsys, "world", "score", video, "--prompt", prompt, "--out", tmp_path / "m.json"
    )
    assert code == 0 and json.loads((tmp_path / "m.json").read_text())["motion"] == 1.0


def test_timeline_file(tmp_path, capsys):
    timeline = tmp_path / "story.txt"
    timeline.write_text("# a story\n0\ta red circle moves right\n30\ta red circle falls\n")
    code, _, _ = run(
        capsys,
        "world",
        "render",
        "--timeline",
        timeline,
        "--frames",
        60,
        "--out",
        tmp_path / "s.mp4",
    )
    assert code == 0
    truth = json.loads((tmp_path / "s.json").read_text())
    assert [s for s, _ in truth["timeline"]] == [0, 30]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--width", "60"], "multiple of 8"),
        (["--frames", "0"], "--frames: must be a positive integer"),
        (["--frames", "-5"], "--frames: must be a positive integer"),
        (["--seed", str(2**64)], "--seed: a seed is an integer in [0, 2**63)"),
        (["--fps", "0"], "--fps: must be positive"),
        (["--prompt", "a mauve circle moves left"], "no known colour"),
        (["--prompt", ""], "empty"),
        (["--timeline", "missing.txt"], "cannot read timeline"),
    ],
)
def test_render_user_mistakes_are_one_line_errors_and_leave_no_file(
    tmp_path, capsys, monkeypatch, args, message
):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "world", "render", "--out", "out.mp4", *args)
    assert code == 2
    assert err.startswith("arlon: error:") and message in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_score_missing_or_corrupt_video(tmp_path, capsys):
    code, _, err = run(capsys, "world", "score", tmp_path / "none.mp4", "--prompt", "a red circle")
    assert code == 2 and "no such video" in err
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video" * 100)
    code, _, err = run(capsys, "world", "score", corrupt, "--prompt", "a red circle")
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize(
    "flag,content,message",
    [
        ("--truth", bytes(range(256)) * 4, "not UTF-8 text"),
        ("--truth", b'"a string"', "holds a JSON str, not an object"),
        ("--truth", b'{"specs": 3}', "is not a shapes-world ground-truth file"),
        ("--timeline", bytes(range(256)) * 4, "not UTF-8 text"),
        ("--timeline", "\u0661\ta red circle\n".encode(), "expected 'START_FRAME<TAB>prompt'"),
    ],
)
def test_score_damaged_truth_or_timeline_is_one_line(tmp_path, capsys, flag, content, message):
    video = tmp_path / "ep.mp4"
    assert run(capsys, "world", "render", "--frames", 8, "--out", video)[0] == 0
    damaged = tmp_path / "damaged"
    damaged.write_bytes(content)
    code, _, err = run(capsys, "world", "score", video, flag, damaged)
    assert code == 2 and message in err and err.count("\n") == 1


def test_interrupted_render_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    from arlon.world import render

    real = render.render_frame

    def flaky(state, height=64, width=64, calls=[0]):  # noqa: B006 - a call counter
        calls[0] += 1
        if calls[0] > 30:
            raise KeyboardInterrupt
        return real(state, height, width)

    monkeypatch.setattr(render, "render_frame", flaky)
    code, _, err = run(capsys, "world", "render", "--frames", 100, "--out", tmp_path / "ep.mp4")
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["world"],
        ["world", "render"],
        ["world", "score"],
        ["world", "dataset"],
        ["generate"],
        ["assemble"],
        ["eval", "dit"],
        ["eval", "generate"],
    ],
)
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: arlon" in capsys.readouterr().out


def test_a_subcommands_option_is_read_whole_not_as_an_abbreviation():
    """`eval ar --ar` names eval ar's own option, though eval's `--ar-precision` and `--ar-window`
    begin with it; and no option may be abbreviated."""
    parser = cli.parser()
    args = parser.parse_args(["eval", "ar", "--ar", "folder", "--window", "slide"])
    assert str(args.ar) == "folder" and args.window == "slide"
    with pytest.raises(ArlonError, match="unrecognized arguments: --prom 3"):
        parser.parse_args(["eval", "ar", "--prom", "3"])


def test_dataset_manifest_and_resume(tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = [
        "world",
        "dataset",
        "--clips",
        3,
        "--clip-frames",
        17,
        "--episodes",
        1,
        "--frames",
        200,
        "--out",
        out,
    ]
    assert run(capsys, *argv)[0] == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"path", "text", "num_frames", "height", "width", "fps", "truth"} <= set(rows[0])
    for row in rows:
        assert (out / row["path"]).exists() and (out / row["truth"]).exists()
        assert video_info(out / row["path"]).num_frames == int(row["num_frames"])
    first = (out / rows[0]["path"]).stat().st_mtime_ns
    assert run(capsys, *argv)[0] == 0
    assert (out / rows[0]["path"]).stat().st_mtime_ns == first  # finished videos are not redone


def test_the_cli_names_what_the_library_has():
    """The CLI spells out modes, output formats, stages and the AR's precisions and windows so as
    not to import torch before it checks a command line; they must stay the library's."""
    from arlon.cli import common, generate, train
    from arlon.data.video_io import FORMATS
    from arlon.models.ar_sampler import PRECISIONS, WINDOWS
    from arlon.pipeline.job import MODES
    from arlon.training.stages import STAGES

    assert generate.MODES == MODES and common.PRECISIONS == PRECISIONS
    assert common.WINDOWS == WINDOWS
    assert set(common.VIDEO_SUFFIXES) == set(FORMATS)
    assert set(train.STAGES) == set(STAGES)

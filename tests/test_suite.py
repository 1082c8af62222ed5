"""Evaluation suites and `arlon bench`: suite files (ours and VBench's formats), the packaged suites
rebuilt from their seeds, the seam ratio, a whole suite run with its report and plots, resuming, and
bad input as one-line errors."""

import json

import numpy as np
import pytest
import torch

from arlon import cli
from arlon.diffusion.rectified_flow import scheduler
from arlon.errors import ArlonError
from arlon.evaluation.claims import check_claims
from arlon.evaluation.claims import markdown as claims_markdown
from arlon.evaluation.heldout import HELDOUT_SEED
from arlon.evaluation.suite import (
    SUITES,
    build_packaged_suites,
    packaged_suites,
    read_suite,
    run_suite,
    seam_ratio,
)
from arlon.models.ar_transformer import ar_transformer
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.stdit import stdit
from arlon.models.text_encoder import TextEncoder
from arlon.models.video_vae import video_vae
from arlon.pipeline import ARLONPipeline
from arlon.world import vocab
from arlon.world.captions import parse_caption
from arlon.world.simulate import random_episode

SUITE = """# a test suite
# frames: 17
a red circle moves right on a black background
0\ta blue square moves up
9\ta green triangle stays still on a gray background
a cat playing the piano in a jazz club
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    pipe = ARLONPipeline(
        TextEncoder.from_pretrained(),
        ar_transformer("smoke"),
        latent_vqvae("smoke", latent_channels=4),
        stdit("smoke", arlon=True),
        scheduler(),
        video_vae("smoke"),
        segment_frames=3,
        reference_frames=1,
    )
    out = tmp_path_factory.mktemp("pipe") / "smoke"
    pipe.save_pretrained(out)
    return out


def test_suite_files_hold_prompts_and_timelines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(SUITE)
    suite = read_suite(path)
    assert suite.name == "mine" and suite.frames == 17
    assert suite.videos == [
        [(0, "a red circle moves right on a black background")],
        [(0, "a blue square moves up"), (9, "a green triangle stays still on a gray background")],
        [(0, "a cat playing the piano in a jazz club")],
    ]
    vbench = tmp_path / "VBench_full_info.json"
    vbench.write_text(json.dumps([{"prompt_en": "a dog running", "dimension": ["subject"]}]))
    assert read_suite(vbench).videos == [[(0, "a dog running")]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a red circle\n5\ta blue square\n", r"mine.txt:2: start frame 5 does not continue"),
        ("0\ta red circle\nx\ta blue square\n", r"mine.txt:2: expected 'PROMPT'"),
        ("# frames: many\na red circle\n", r"mine.txt:1: '# frames:' takes a positive integer"),
        ("# only a comment\n", "no prompt in the suite"),
    ],
)
def test_a_malformed_suite_names_the_line(tmp_path, text, message):
    path = tmp_path / "mine.txt"
    path.write_text(text)
    with pytest.raises(ArlonError, match=message):
        read_suite(path)


def test_unknown_suite_lists_the_packaged_ones():
    with pytest.raises(ArlonError, match="long-2400, long-600, paraphrase, short, static"):
        read_suite("nonesuch")


def test_packaged_suites_are_rebuilt_from_their_seeds():
    built = build_packaged_suites()
    assert sorted(built) == packaged_suites()
    for name, text in built.items():
        assert (SUITES / f"{name}.txt").read_text() == text
    assert len(read_suite("short").videos) == 50 and read_suite("long-2400").frames == 2400
    assert all(len(timeline) > 1 for timeline in read_suite("long-600").videos)


def test_paraphrases_mean_the_same_scenes_in_held_out_words():
    held_out = {
        w
        for table in (vocab.COLOUR_WORDS, vocab.SHAPE_WORDS)
        for words in table.values()
        for w in words.heldout
    }
    for i, [(_, prompt)] in enumerate(read_suite("paraphrase").videos):
        spec = random_episode((HELDOUT_SEED + 2, i), 2, events=False).specs[0]
        parsed = parse_caption(prompt)
        assert [(o.colour, o.shape, o.motion) for o in parsed.objects] == [
            (o.colour, o.shape, o.motion) for o in spec.objects
        ]
        assert parsed.background == spec.background
        assert any(w in prompt.lower() for w in held_out)


def test_seam_ratio_sees_jumps_at_the_seams():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (40, 8, 8, 3)), axis=0).clip(0, 255).astype(np.uint8)
    jumpy = smooth.copy()
    jumpy[20:] = (jumpy[20:].astype(int) + 60).clip(0, 255)
    assert seam_ratio(jumpy, [19])["ratio"] > 5 * seam_ratio(smooth, [19])["ratio"]
    assert seam_ratio(smooth, [])["ratio"] is None


def test_a_suite_runs_scores_plots_and_resumes(folder, tmp_path, monkeypatch):
    path = tmp_path / "mine.txt"
    path.write_text(SUITE)
    pipe = ARLONPipeline.from_pretrained(folder)
    out = tmp_path / "eval"
    summary = run_suite(pipe, read_suite(path), ["arlon", "baseline"], [1, 2], out, progress=False)
    assert [(r["mode"], r["steps"]) for r in summary["runs"]] == [
        ("arlon", 1),
        ("arlon", 2),
        ("baseline", 1),
        ("baseline", 2),
    ]
    for run in summary["runs"]:
        assert run["videos"] == 3 and run["world_videos"] == 2  # the cat is outside the world
        assert 0 <= run["attribute"] <= 1 and 0 <= run["subject_consistency"] <= 1
        assert len(run["over_time"]["attribute"]) == 8
    cat = json.loads((out / "videos" / "arlon-1" / "0002.json").read_text())
    assert cat["world"] is None and "no object found" in cat["world_skipped"]
    assert 0 <= cat["vbench"]["motion_smoothness"] <= 1
    for name in ("metrics.json", "metrics.md", "quality_vs_steps.png", "over_time.png"):
        assert (out / name).stat().st_size > 0
    assert "| arlon | 1 |" in (out / "metrics.md").read_text()

    def no_generation(*args, **kwargs):
        raise AssertionError("finished videos are not generated again")

    monkeypatch.setattr(ARLONPipeline, "stream", no_generation)
    again = run_suite(pipe, read_suite(path), ["arlon", "baseline"], [1, 2], out, progress=False)
    assert again["runs"] == summary["runs"]
    with pytest.raises(ArlonError, match="holds videos of another run"):
        run_suite(pipe, read_suite(path), ["arlon"], [1], out, frames=9, progress=False)
    with torch.no_grad():  # another model's videos are not mixed in either
        next(pipe.dit.parameters()).add_(1e-3)
    with pytest.raises(ArlonError, match="holds videos of another run"):
        run_suite(pipe, read_suite(path), ["arlon", "baseline"], [1, 2], out, progress=False)


def test_eval_suite_cli(folder, tmp_path, capsys):
    path = tmp_path / "mine.txt"
    path.write_text(SUITE)
    argv = ["eval", "--suite", str(path), "--model", str(folder), "--mode", "baseline"]
    out = tmp_path / "eval"
    assert cli.main([*argv, "--steps", "1", "--videos", "1", "--out", str(out)]) == 0
    assert "| baseline | 1 |" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["videos"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --suite and --out"),
        (["--suite", "short", "--out", "x", "--mode", "fast"], "arlon, baseline, got 'fast'"),
        (["--suite", "short", "--out", "x", "--steps", "0"], "--steps: must be a positive"),
        (["--suite", "short", "--out", "x", "--backbone", "vgg"], "thumbnail, dino, clip"),
        (["--suite", "short", "--out", "x", "--backbone", "dino"], "pass --backbone-path"),
        (
            ["--suite", "short", "--out", "x", "--dimensions", "beauty"],
            "choose from dynamic_degree",
        ),
    ],
)
def test_eval_suite_bad_input_is_one_line(folder, args, message, capsys):
    assert cli.main(["eval", *args, "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_reports_speed_and_memory_per_length(folder, tmp_path, capsys):
    argv = ["bench", "--model", str(folder), "--lengths", "5", "9", "--threads", "1"]
    assert cli.main([*argv, "--no-train", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    runs = report["generation"]["runs"]
    assert [r["frames"] for r in runs] == [5, 9] and runs[0]["peak_rss_mib"] > 0
    assert set(runs[1]["stage_seconds"]) == {"ar", "dit", "vae", "total"}
    assert report["generation"]["peak_ratio_longest_to_shortest"] > 0
    assert report["dit"]["fraction_of_matmul"] > 0 and report["dit"]["forward_gflop"] > 0
    assert "| 9 |" in (tmp_path / "bench.md").read_text()


def _run(mode, steps, q, dynamic=0.5, subject=0.9, drop=0.1, latency=20):
    return {
        "mode": mode,
        "steps": steps,
        **{k: q for k in ("attribute", "motion", "count", "identity")},
        "dynamic_degree": dynamic,
        "subject_consistency": subject,
        "identity_early": 0.9,
        "identity_late": 0.9 - drop,
        "attribute_early": 0.8,
        "attribute_late": 0.8 - drop,
        "switch_latency_median": latency,
    }


def test_claims_hold_or_not_on_their_numbers():
    good = {
        "suite": "long",
        "frames": 600,
        "runs": [
            _run("arlon", 3, 0.8, dynamic=0.6, drop=0.05, latency=10),
            _run("arlon", 5, 0.85, dynamic=0.6, subject=0.89, drop=0.05, latency=10),
            _run("baseline", 5, 0.5),
            _run("baseline", 30, 0.8),
        ],
    }
    assert [c["holds"] for c in check_claims([good])] == [True, True, True, True]
    assert "reached from 3 step(s)" in check_claims([good])[0]["evidence"][0]
    bad = json.loads(json.dumps(good))
    bad["runs"][1] = _run("arlon", 5, 0.7, dynamic=0.4, subject=0.85, drop=0.2, latency=40)
    bad["runs"][0] = _run("arlon", 3, 0.7)
    assert [c["holds"] for c in check_claims([bad])] == [False, False, False, False]
    short = {"suite": "short", "frames": 120, "runs": [_run("arlon", 5, 0.9)]}
    assert [c["holds"] for c in check_claims([short])] == [None, None, None, None]
    assert "not checked" in claims_markdown(check_claims([short]))


def test_eval_claims_cli(tmp_path, capsys):
    summary = {
        "suite": "s",
        "frames": 120,
        "runs": [_run("arlon", 5, 0.9), _run("baseline", 30, 0.8)],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(summary))
    assert cli.main(["eval", "claims", str(tmp_path), "--out", str(tmp_path / "c.json")]) == 0
    assert "**holds**" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())[0]["holds"] is True
    assert cli.main(["eval", "claims", str(tmp_path / "missing")]) == 2
    assert "holds no metrics.json" in capsys.readouterr().err

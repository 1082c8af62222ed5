"""Evaluation suites and `arlon bench`: suite files (ours and VBench's formats), the packaged suites
rebuilt from their seeds, the seam ratio, a whole suite run with its report and plots, resuming, and
bad input as one-line errors."""

import json
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from arlon import cli
from arlon.cli import evaluate as evaluate_cli
from arlon.cli.common import run_spec
from arlon.diffusion.rectified_flow import scheduler
from arlon.errors import ArlonError
from arlon.evaluation.bench import count_flops, dit_inputs
from arlon.evaluation.claims import check_claims
from arlon.evaluation.claims import markdown as claims_markdown
from arlon.evaluation.heldout import HELDOUT_SEED
from arlon.evaluation.suite import (
    SUITES,
    Run,
    SuitePlan,
    build_packaged_suites,
    packaged_suites,
    read_suite,
    run_suite,
    seam_ratio,
)
from arlon.models.ar_sampler import ARSampler, ar_dtype
from arlon.models.ar_transformer import ar_transformer
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.stdit import stdit
from arlon.models.text_encoder import TextEncoder
from arlon.models.video_vae import video_vae
from arlon.pipeline import ARLONPipeline
from arlon.utils import native_bf16
from arlon.world import vocab
from arlon.world.captions import parse_caption, says, unknown_words
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
    with pytest.raises(ArlonError, match="long-2400, long-600, paraphrase, short, static, stories"):
        read_suite("nonesuch")


def test_packaged_suites_are_rebuilt_from_their_seeds():
    built = build_packaged_suites()
    assert sorted(built) == packaged_suites()
    for name, text in built.items():
        assert (SUITES / f"{name}.txt").read_text() == text
    assert len(read_suite("short").videos) == 50 and read_suite("long-2400").frames == 2400
    assert all(len(timeline) > 1 for timeline in read_suite("long-600").videos)
    assert packaged_suites() == evaluate_cli.SUITES  # what `arlon eval --help` lists


def test_stories_state_only_the_change_and_mean_their_episodes():
    """Each story's later prompts state only a change; read against the scene before them, they
    ask for what the episode shows (what they leave unsaid is not judged)."""
    from arlon.world.metrics import Expected

    stories = read_suite("stories")
    assert len(stories.videos) == 20 and stories.frames == 600
    for i, timeline in enumerate(stories.videos):
        episode = random_episode((HELDOUT_SEED + 5, i), 600)
        assert [s for s, _ in timeline] == [s for s, _ in episode.timeline]
        assert all(prompt.startswith(("the ", "a ", "an ")) for _, prompt in timeline[1:])
        asked = Expected.from_timeline(timeline, 600, 64, 64).specs
        for spec, truth in zip(asked, episode.specs, strict=True):
            assert spec.background == truth.background
            assert [(o.colour, o.shape, o.motion) for o in spec.objects] == [
                (o.colour, o.shape, o.motion) for o in truth.objects
            ]


def test_short_everyday_and_paraphrase_word_the_same_scenes_apart():
    """The three suites differ only in wording: `short` says every fact in its canonical word,
    `everyday` in training words that are never the canonical ones, `paraphrase` in words no
    training caption uses; each prompt parses to the same held-out scene, every fact stated."""
    suites = [read_suite(name).videos for name in ("short", "everyday", "paraphrase")]
    assert len({len(videos) for videos in suites}) == 1
    shapes = [w.canonical for w in vocab.SHAPE_WORDS.values()]
    for i, ([(_, short)], [(_, everyday)], [(_, paraphrase)]) in enumerate(
        zip(*suites, strict=True)
    ):
        spec = random_episode((HELDOUT_SEED, i), 2, events=False).specs[0]
        for prompt in (short, everyday, paraphrase):
            assert parse_caption(prompt) == spec, prompt
        assert unknown_words(short) == unknown_words(everyday) == []
        assert all(
            says(short, w) for w in {vocab.SHAPE_WORDS[o.shape].canonical for o in spec.objects}
        )
        assert not [w for w in shapes if says(everyday, w)], everyday
        objects = len(spec.objects)
        # each object's colour, shape and size, and the background, in words never trained on
        assert len(unknown_words(paraphrase)) >= 3 * objects + 1, paraphrase


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
    plan = SuitePlan(steps=(1, 2), guidance=(1.0, 3.0))
    summary = run_suite(pipe, read_suite(path), plan, out, progress=False)
    runs = [(r["mode"], r["steps"], r["guidance"]) for r in summary["runs"]]
    assert runs == [
        *[("arlon", s, g) for s in (1, 2) for g in (1.0, 3.0)],
        *[("baseline", s, g) for s in (1, 2) for g in (1.0, 3.0)],
        ("ar-only", None, None),  # no DiT: one run whatever the steps and guidance
    ]
    for run in summary["runs"]:
        assert run["videos"] == 3 and run["world_videos"] == 2  # the cat is outside the world
        assert len(run["over_time"]["object_accuracy"]) == 8
    cat = json.loads((out / "videos" / "arlon-1-g1" / "0002.json").read_text())
    assert cat["world"] is None and "no object found" in cat["world_skipped"]
    # the plots: images of their figures' size at 90 dpi, with something drawn in them
    for name, size in [("quality_vs_steps.png", (12, 6.5)), ("over_time.png", (12, 3.5))]:
        image = plt.imread(out / name)
        assert image.shape[:2] == (round(90 * size[1]), round(90 * size[0])) and image.std() > 0.05
    table = (out / "metrics.md").read_text()
    assert "| arlon | 1 | 1 |" in table and "| ar-only | - | - |" in table

    def no_generation(*args, **kwargs):
        raise AssertionError("finished videos are not generated again")

    monkeypatch.setattr(ARLONPipeline, "stream", no_generation)
    again = run_suite(pipe, read_suite(path), plan, out, progress=False)
    assert again["runs"] == summary["runs"]
    # nor are the codes of another arithmetic ("auto" draws in bf16 on some CPUs) or window
    bf16 = ar_dtype(pipe.ar, plan.ar_precision) == torch.bfloat16
    other_precision = replace(plan, ar_precision="float32" if bf16 else "bfloat16")
    for other in (SuitePlan(frames=9), other_precision, replace(plan, ar_window="slide")):
        with pytest.raises(ArlonError, match="holds videos of another run"):
            run_suite(pipe, read_suite(path), other, out, progress=False)
    with torch.no_grad():  # another model's videos are not mixed in either
        next(pipe.dit.parameters()).add_(1e-3)
    with pytest.raises(ArlonError, match="holds videos of another run"):
        run_suite(pipe, read_suite(path), plan, out, progress=False)


def test_a_suite_refuses_mode_baseline_without_a_baseline_before_any_video(folder, tmp_path):
    """A model whose DiT trained its backbone, and holds no baseline DiT, has no mode baseline: a
    plan that asks for it is refused at once, not after the runs before it."""
    path = tmp_path / "mine.txt"
    path.write_text(SUITE)
    pipe = ARLONPipeline.from_pretrained(folder)
    pipe.dit.register_to_config(backbone_trained=True)
    out = tmp_path / "eval"
    with pytest.raises(ArlonError, match="arlon assemble --baseline DIR"):
        run_suite(pipe, read_suite(path), SuitePlan(modes=("arlon", "baseline")), out)
    assert not list(out.glob("videos/*/*.json"))  # not one video made


def test_ar_only_and_arlon_share_the_ar_codes(folder, tmp_path, monkeypatch):
    """The AR's codes of a video are drawn once, for ARLON (at every steps and guidance) and
    AR-only alike, and AR-only's video is those codes decoded without the DiT."""
    path = tmp_path / "mine.txt"
    path.write_text(SUITE)
    pipe = ARLONPipeline.from_pretrained(folder)
    drawn = []
    sample_codes = ARLONPipeline.sample_codes

    def spy(self, timelines, *args, **kwargs):
        drawn.extend(map(str, timelines))
        return sample_codes(self, timelines, *args, **kwargs)

    monkeypatch.setattr(ARLONPipeline, "sample_codes", spy)
    plan = SuitePlan(modes=("arlon", "ar-only"), steps=(1, 2), videos=2)
    run_suite(pipe, read_suite(path), plan, tmp_path / "eval", progress=False)
    assert len(drawn) == 2  # two videos, each drawn once


def test_true_tokens_stand_in_for_the_ar_and_draw_the_scene(tmp_path, monkeypatch):
    """With true tokens, each video is its own held-out scene rendered and encoded: the AR draws
    nothing, and the embedded decoders draw the asked objects from them (the chain's ceiling)."""
    from arlon.weights import ROOT

    def no_ar(*args, **kwargs):
        raise AssertionError("the AR draws no tokens when the true ones are given")

    monkeypatch.setattr(ARSampler, "batch_frames", no_ar)  # both the AR's paths go through it
    pipe = ARLONPipeline.from_pretrained(ROOT)
    plan = SuitePlan(modes=("ar-only",), frames=33, videos=3, tokens="truth")
    summary = run_suite(pipe, read_suite("short"), plan, tmp_path / "truth", progress=False)
    (run,) = summary["runs"]
    assert run["videos"] == run["world_videos"] == 3 and run["object_accuracy"] >= 0.8
    assert summary["tokens"] == "truth"  # a ceiling says so in its report
    assert "a ceiling, not a result" in (tmp_path / "truth" / "metrics.md").read_text()
    mine = tmp_path / "short.txt"  # named as a packaged suite, but other scenes
    mine.write_text(SUITE)
    longer = replace(read_suite("long-600"), frames=900)  # its scenes' changes fall elsewhere
    for suite in (read_suite(mine), longer):
        with pytest.raises(ArlonError, match="held-out scenes"):
            run_suite(pipe, suite, plan, tmp_path / "mine", progress=False)
    assert not (tmp_path / "mine").exists()  # refused before anything is written
    with pytest.raises(ArlonError, match="tokens are ar or truth"):
        SuitePlan(tokens="oracle")
    with pytest.raises(ArlonError, match="needs at least 3 frames, got 1"):
        SuitePlan(frames=1)  # before the AR draws anything
    with pytest.raises(ArlonError, match="precision must be one of"):
        SuitePlan(ar_precision="float16")
    with pytest.raises(ArlonError, match="window must be one of"):
        SuitePlan(ar_window="ring")


def test_eval_suite_cli(folder, tmp_path, capsys):
    path = tmp_path / "mine.txt"
    path.write_text(SUITE)
    argv = ["eval", "--suite", str(path), "--model", str(folder), "--mode", "baseline"]
    out = tmp_path / "eval"
    argv += ["--steps", "1", "--guidance", "1,2", "--videos", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "| baseline | 1 | 2 |" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["videos"] == 1


def test_a_run_with_a_strength_is_named_and_sampled_so():
    run = Run(*run_spec("arlon@5:g1:s0.6"))
    assert run == Run("arlon", 5, 1.0, 0.6) and run.label == "arlon-5-g1-s0.6"
    assert run.sampling.strength == 0.6 and run.sampling.num_inference_steps == 5
    assert Run(*run_spec("arlon@5:g1")).label == "arlon-5-g1"  # the folders of earlier runs
    assert run_spec("baseline@30") == ("baseline", 30, None, None)  # the model's, resolved


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --suite and --out"),
        (["--suite", "short", "--out", "x", "--run", "arlon@5:s1.5"], "strength lies in (0, 1]"),
        (["--suite", "short", "--out", "x", "--run", "baseline@30:s0.5"], "arlon runs only"),
        (["--suite", "short", "--out", "x", "--mode", "fast"], "arlon, baseline, ar-only, got"),
        (["--suite", "short", "--out", "x", "--guidance", "-1"], "--guidance: must be 0 or more"),
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
    assert [r["frames"] for r in runs] == [5, 9]
    assert all(r["peak_rss_mib"] >= r["rss_after_load_mib"] > 50 for r in runs)  # torch alone
    assert set(runs[1]["stage_seconds"]) == {"ar", "dit", "vae", "waited", "total"}
    ratio = runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    assert report["generation"]["peak_ratio_longest_to_shortest"] == pytest.approx(ratio, abs=1e-3)
    # the DiT's FLOP/s: the FLOPs of one forward (counted again here) over its time, against the
    # matmul measured in the same run
    dit = report["dit"]
    pipe = ARLONPipeline.from_pretrained(folder)
    args, kwargs = dit_inputs(pipe.dit, 2, 9, 8, 8)
    assert dit["forward_gflop"] == round(count_flops(lambda: pipe.dit(*args, **kwargs)) / 1e9, 3)
    assert dit["achieved_gflops"] == pytest.approx(
        dit["forward_gflop"] / (dit["forward_ms"] / 1000), rel=0.02
    )
    fraction = dit["achieved_gflops"] / dit["matmul_gflops"]
    assert dit["fraction_of_matmul"] == pytest.approx(fraction, abs=2e-3)
    # every stage's FLOPs counted, so its speed is also a fraction of this machine's matmul
    assert {k: v["flops"] > 0 for k, v in runs[1]["stage_efficiency"].items()} == dict.fromkeys(
        ("ar", "dit", "vae"), True
    )
    # the AR's fast path draws the reference path's codes, and both were timed in this run
    ar = report["ar"]
    assert ar["identical_codes"] is True and ar["codes"] == 12 * 4
    assert ar["speedup"] == round(ar["reference_ms_per_code"] / ar["ms_per_code"], 2)
    bench_md = (tmp_path / "bench.md").read_text()
    assert f"AR ({ar['precision']}, window {ar['window']}), ms per code" in bench_md
    assert "| 9 |" in bench_md and ar["window"] == "refill"
    assert ar["precision"] == ("bfloat16" if native_bf16() else "float32")  # "auto" says which


def test_bench_times_each_figure_by_its_fastest_run(monkeypatch):
    """A busy machine only adds time: a stage and the matmul it is a fraction of are both timed
    by their fastest run, after one unmeasured run to warm up."""
    from arlon.evaluation import bench

    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # runs of 3, 1 and 2 seconds
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    runs = []
    assert bench.best_seconds(lambda: runs.append(1), repeats=3) == 1.0 and len(runs) == 4


def _run(mode, steps, q, guidance=1.0, dynamic=0.5, subject=0.9, drop=0.1, latency=20):
    return {
        "mode": mode,
        "steps": steps,
        "guidance": None if steps is None else guidance,
        "object_accuracy": q,
        "shape": q,
        "dynamic_degree": dynamic,
        "subject_consistency": subject,
        "identity_early": 0.9,
        "identity_late": 0.9 - drop,
        "object_accuracy_early": 0.8,
        "object_accuracy_late": 0.8 - drop,
        "switch_latency_median": latency,
    }


def test_claims_hold_or_not_on_their_numbers():
    good = {
        "suite": "long",
        "frames": 600,
        "runs": [
            _run("arlon", 3, 0.8, dynamic=0.6, drop=0.05, latency=10),
            _run("arlon", 5, 0.85, dynamic=0.6, subject=0.89, drop=0.05, latency=10),
            _run("arlon", 5, 0.6, guidance=4.0),  # a worse guidance: each mode at its best
            _run("baseline", 5, 0.5),
            _run("baseline", 30, 0.7),
            _run("baseline", 30, 0.8, guidance=2.0),
            _run("ar-only", None, 0.75),
        ],
    }
    assert [c["holds"] for c in check_claims([good])] == [True, True, True, True, True]
    evidence = check_claims([good])[1]["evidence"][0]
    assert "arlon@5 (g1) 85.0%" in evidence and "baseline@30 (g2) 80.0%" in evidence
    bad = json.loads(json.dumps(good))
    bad["runs"][1] = _run("arlon", 5, 0.7, dynamic=0.4, subject=0.85, drop=0.2, latency=40)
    bad["runs"][0] = _run("arlon", 3, 0.7)
    assert [c["holds"] for c in check_claims([bad])] == [False, False, False, False, False]
    # from the AR's latent, 3 of 5 steps: ARLON's best at 5 or fewer, paired with the baseline at 3
    latent = {**_run("arlon", 5, 0.95, latency=30), "strength": 0.6}
    bad["runs"] += [latent, _run("baseline", 3, 0.5, latency=20)]
    claims = check_claims([bad])
    assert "arlon@5:s0.6 (g1) 95.0%" in claims[0]["evidence"][0] and claims[0]["holds"]
    assert any("arlon@5:s0.6 (g1) vs baseline@3" in e for e in claims[4]["evidence"])
    short = {"suite": "short", "frames": 120, "runs": [_run("arlon", 5, 0.9)]}
    assert [c["holds"] for c in check_claims([short])] == [None] * 5
    assert "not checked" in claims_markdown(check_claims([short]))


def test_eval_claims_cli(tmp_path, capsys):
    summary = {
        "suite": "s",
        "frames": 120,
        "runs": [_run("arlon", 5, 0.9), _run("baseline", 30, 0.8), _run("ar-only", None, 0.7)],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(summary))
    assert cli.main(["eval", "claims", str(tmp_path), "--out", str(tmp_path / "c.json")]) == 0
    assert "**holds**" in capsys.readouterr().out
    assert [c["holds"] for c in json.loads((tmp_path / "c.json").read_text())][:2] == [True, True]
    assert cli.main(["eval", "claims", str(tmp_path / "missing")]) == 2
    assert "holds no metrics.json" in capsys.readouterr().err

"""The latent cache: built once from a manifest, read back as windows for the VQ, AR and DiT stages."""

import json
from collections import Counter

import pytest
import torch
from torch.utils.data import default_collate

from arlon import cli
from arlon.data import latent_cache
from arlon.data.latent_cache import (
    CodeWindows,
    LatentCache,
    LatentWindows,
    build_cache,
    code_dtype,
    encode_video,
    vq_many,
    vq_windows,
)
from arlon.data.video_io import video_info
from arlon.errors import ArlonError
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.video_vae import video_vae
from arlon.training.presets import train_config
from arlon.training.stages import ARStage
from arlon.world.captions import resolve
from arlon.world.scene import world_event


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    argv = [
        "world",
        "dataset",
        "--clips",
        "2",
        "--clip-frames",
        "17",
        "--episodes",
        "1",
        "--frames",
        "161",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vae = video_vae("smoke").eval()
    fine = latent_vqvae("smoke", latent_channels=4).eval()
    coarse = latent_vqvae("smoke", latent_channels=4, ratio=(1, 2, 2)).eval()
    return vae, fine, coarse


def test_cache_holds_causal_latents_codes_and_coarse_latents(dataset, models, tmp_path):
    vae, fine, coarse = models
    folder = build_cache(vae, dataset / "manifest.csv", tmp_path / "cache", fine, coarse, window=3)
    cache = LatentCache(folder)
    assert len(cache.entries) == 3
    episode = next(e for e in cache.entries if e.path.endswith("episode_000000.mp4"))
    # 161 frames = 1 + 4 * 40: every frame is encoded, chunk by chunk, exactly as in one pass.
    assert (episode.num_frames, episode.latent_frames) == (161, 41)
    tensors = cache.tensors(episode)
    assert torch.allclose(
        tensors["latents"].float(),
        encode_video(vae, episode.path, chunk_latents=41).half().float(),
        atol=2e-3,
    )
    assert tensors["codes"].shape[0] == 41 // 3
    assert tensors["coarse"].shape == (4, 39, 8, 8)
    truth = json.loads((dataset / "episodes" / "episode_000000.json").read_text())
    assert [list(t) for t in episode.timeline] == truth["timeline"]


def test_windows_carry_the_caption_in_force(dataset, models, tmp_path):
    vae, _, _ = models
    cache = LatentCache(build_cache(vae, dataset / "manifest.csv", tmp_path / "cache"))
    windows = LatentWindows(cache, window=4)
    item = windows[0]
    assert item["latents"].shape == (4, 4, 8, 8) and item["latents"].dtype == torch.float32
    episode = next(e for e in cache.entries if e.latent_frames == 41)
    for start, caption in episode.timeline:
        latent = (start + 3) // 4  # the latent frame that holds video frame `start`
        assert cache.caption_at(episode, latent) == caption
    # each of the episode's windows carries the caption in force at its last latent frame's last
    # video frame (4 L): a window that shows a change has the new caption
    starts = [s for e, s in windows.items if e is episode]
    assert starts == list(range(0, 41 - 4 + 1, 4)) and len(episode.timeline) > 1  # stride: window
    crossing = 0
    for i, (entry, start) in enumerate(windows.items):
        if entry is not episode:
            continue
        last_frame = 4 * (start + 3)
        in_force = [text for first, text in episode.timeline if first <= last_frame][-1]
        assert windows[i]["caption"] == in_force
        first_frame = max(0, 4 * start - 3)
        crossing += any(first_frame < first <= last_frame for first, _ in episode.timeline)
    assert crossing > 0  # some windows do cross a change


def test_cache_cli_errors(tmp_path, capsys):
    argv = ["cache", "--vae", str(tmp_path), "--manifest", str(tmp_path / "m.csv")]
    assert cli.main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "no such manifest" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("path,text\n")
    assert cli.main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "is not a video VAE folder (no config.json)" in capsys.readouterr().err


def test_vqvae_trains_on_a_cache_through_the_cli(dataset, models, tmp_path, capsys):
    vae, _, _ = models
    cache = build_cache(vae, dataset / "manifest.csv", tmp_path / "cache", window=4)
    out = tmp_path / "vq"
    argv = [
        "train",
        "vqvae",
        "--preset",
        "smoke",
        "--data",
        str(cache),
        "--out",
        str(out),
        "--set",
        "data.window=4",
    ]
    assert cli.main(argv) == 0
    from arlon.models.latent_vqvae import LatentVQVAE

    vq = LatentVQVAE.from_pretrained(out / "model")
    latents = LatentWindows(cache, window=4)[0]["latents"][None]
    assert vq.decode_codes(vq.encode(latents), num_frames=4).shape == latents.shape
    assert "usage_heldout" in (out / "eval.csv").read_text()
    # The decoder alone, from those weights: the codes of every latent stay the same.
    tuned = tmp_path / "vq-decoder"
    argv = argv[:-4] + ["--init-from", str(out / "model"), "--out", str(tuned)]
    assert cli.main([*argv, "--set", "data.window=4", "data.decoder_only=true"]) == 0
    vq_tuned = LatentVQVAE.from_pretrained(tuned / "model")
    assert torch.equal(vq_tuned.encode(latents), vq.encode(latents))
    assert not torch.equal(vq_tuned.decoder.conv_out.weight, vq.decoder.conv_out.weight)
    capsys.readouterr()
    bad = [*argv[:-1], str(tmp_path / "bad"), "--set", "data.window=4", "data.decoder_only=2"]
    assert cli.main(bad) == 2
    assert "data.decoder_only must be true or false" in capsys.readouterr().err
    assert cli.main(["train", "vqvae", "--preset", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert "latent cache" in capsys.readouterr().err


def test_code_windows_pair_frames_with_their_segment_caption(dataset, models, tmp_path):
    vae, fine, _ = models
    cache = LatentCache(build_cache(vae, dataset / "manifest.csv", tmp_path / "c", fine, window=3))
    assert cache.codebook_size == fine.codebook_size
    windows = CodeWindows(cache, frames=4)
    episode = next(e for e in cache.entries if e.latent_frames == 41)
    assert len(episode.timeline) > 1  # the episode changes caption
    stored = cache.tensors(episode)["codes"].flatten(0, 1).long()  # 39 token frames of 4x4 codes
    video = next(i for i, codes in enumerate(windows.codes) if len(codes) == 39)
    crossing = 0
    for i, (v, start) in enumerate(windows.items):
        if v != video:
            continue
        item = windows[i]
        assert torch.equal(item["codes"], stored[start : start + 4])
        captions = [cache.caption_at(episode, f) for f in range(start, start + 4)]
        assert item["caption"] == captions[-1] and item["first_frame"] == start
        assert item["frame_mask"].tolist() == [c == captions[-1] for c in captions]
        change = windows.change(i)
        assert (change is not None) == (not item["frame_mask"].all())
        if change is not None:  # the new caption is the window's; the old one its first frame's
            assert change == (captions[0], item["caption"])
        crossing += change is not None
    assert crossing > 0  # windows across a caption change: the frames before it are context
    assert windows.code_window == 3


def test_ar_stage_draws_windows_across_a_caption_change_more_often(dataset, models, tmp_path):
    vae, fine, _ = models
    cache = build_cache(vae, dataset / "manifest.csv", tmp_path / "c", fine, window=3)
    stage = ARStage()
    cfg = train_config("ar", "smoke", data={"cache": str(cache)}, model={"max_frames": 4})
    plain = stage.dataset(cfg)
    crossing = [i for i in range(len(plain)) if plain.change(i) is not None]
    assert 0 < len(crossing) < len(plain)
    cfg.data["switch_repeats"] = 3
    more = stage.dataset(cfg)
    assert len(more) == len(plain) + 2 * len(crossing)
    assert all(torch.equal(more[i]["codes"], plain[i]["codes"]) for i in range(len(plain)))
    extra = [more[i] for i in range(len(plain), len(more))]
    assert all(not item["frame_mask"].all() for item in extra)  # each crosses a change
    cfg.data["switch_repeats"] = 0
    with pytest.raises(ArlonError, match="switch_repeats"):
        stage.dataset(cfg)


def test_ar_stage_draws_windows_where_an_object_enters_more_often(models, tmp_path):
    # seed 25: in the two training episodes (the first is held out), a turn, a recolour, an entry
    argv = ["--clips", "0", "--episodes", "3", "--frames", "161", "--seed", "25"]
    assert cli.main(["world", "dataset", *argv, "--out", str(tmp_path / "shapes")]) == 0
    vae, fine, _ = models
    cache = build_cache(vae, tmp_path / "shapes" / "manifest.csv", tmp_path / "c", fine, window=3)
    stage = ARStage()
    cfg = train_config("ar", "smoke", data={"cache": str(cache)}, model={"max_frames": 4})
    plain = stage.dataset(cfg)
    events = [
        plain.change(i) and world_event(*resolve(list(plain.story(i)))[-2:])
        for i in range(len(plain))
    ]
    entering = events.count("enter")
    assert 0 < entering < sum(e is not None for e in events)
    cfg.data.update(switch_repeats=2, enter_repeats=5)
    more = stage.dataset(cfg)
    assert len(more.datasets[0]) == len(plain)
    drawn = Counter(i for extra in more.datasets[1:] for i in extra.indices)
    # every window where an object enters is drawn 5 times in all, every other switch twice
    assert drawn == {i: 4 if e == "enter" else 1 for i, e in enumerate(events) if e}
    cfg.data["enter_repeats"] = 0.5
    with pytest.raises(ArlonError, match="enter_repeats"):
        stage.dataset(cfg)


def test_ar_code_noise_changes_what_the_model_reads_not_what_it_predicts(dataset, models, tmp_path):
    vae, fine, _ = models
    cache = build_cache(vae, dataset / "manifest.csv", tmp_path / "c", fine, window=3)
    stage = ARStage()
    data = {"cache": str(cache), "caption_dropout": 0.0}
    cfg = train_config("ar", "smoke", data=data, model={"max_frames": 4})
    windows = stage.dataset(cfg)
    batch = default_collate([windows[i] for i in range(8)])
    truth = batch["codes"].clone()
    model = stage.build_model(cfg).eval()  # no dropout: the loss is a function of what it reads
    read = []
    forward = model.forward
    model.forward = lambda text, mask, codes, first, by_level: (
        read.append(codes) or forward(text, mask, codes, first, by_level)
    )
    torch.manual_seed(0)
    stage.loss(model, batch, cfg)
    assert torch.equal(read[-1], truth)  # no noise by default
    cfg.data["code_noise"] = 0.3
    stage.dataset(cfg)
    loss, _ = stage.loss(model, batch, cfg)
    changed = (read[-1] != truth).float().mean().item()
    assert 0.15 < changed < 0.3  # 30% redrawn, a few of them to the same code
    assert torch.equal(batch["codes"], truth)  # the targets stay the true codes
    model.forward = forward
    logits = stage._logits(model, {**batch, "codes": read[-1]}, cfg, 0.0, 0.0, by_level=False)
    codes, weights = stage._targets(batch)
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), codes, reduction="none")
    assert loss.item() == pytest.approx(((ce * weights).sum() / weights.sum()).item(), rel=1e-5)
    cfg.data["code_noise"] = 1.0
    with pytest.raises(ArlonError, match="code_noise"):
        stage.dataset(cfg)


def test_a_training_stage_runs_each_caption_of_its_cache_through_the_text_encoder_once(
    dataset, models, tmp_path
):
    vae, fine, _ = models
    cache = build_cache(vae, dataset / "manifest.csv", tmp_path / "c", fine, window=3)
    captions = sorted({text for e in LatentCache(cache).entries for _, text in e.timeline})
    assert len(captions) > 3
    cfg = train_config("ar", "smoke", data={"cache": str(cache)})
    encoder = ARStage().text_encoder(cfg)
    calls = []
    hook = encoder.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        for i in range(0, len(captions), 2):
            encoder.encode(captions[i : i + 2])
        assert len(calls) == (len(captions) + 1) // 2
        for batch in (captions[::-1], captions[1::2], captions[:3]):
            encoder.encode(batch)
        assert len(calls) == (len(captions) + 1) // 2  # every caption kept
        cfg.data["text_cache_mb"] = 0
        encoder = ARStage().text_encoder(cfg)  # a bound in megabytes: here none kept
        hook.remove()
        hook = encoder.model.register_forward_hook(lambda *args: calls.append(1))
        encoder.encode(captions[:2])
        encoder.encode(captions[:2])
        assert len(calls) == (len(captions) + 1) // 2 + 2
    finally:
        hook.remove()


def test_ar_trains_on_a_cache_and_draws_a_coarse_video(dataset, models, tmp_path, capsys):
    vae, fine, _ = models
    cache = build_cache(vae, dataset / "manifest.csv", tmp_path / "cache", fine, window=3)
    out = tmp_path / "ar"
    argv = ["train", "ar", "--preset", "smoke", "--data", str(cache), "--out", str(out)]
    assert cli.main([*argv, "--set", "model.max_frames=3"]) == 0
    assert "accuracy_heldout" in (out / "eval.csv").read_text()
    vae.save_pretrained(tmp_path / "vae")
    fine.save_pretrained(tmp_path / "fine")
    video = tmp_path / "coarse.mp4"
    parts = [
        "--ar",
        str(out / "model"),
        "--vq",
        str(tmp_path / "fine"),
        "--vae",
        str(tmp_path / "vae"),
    ]
    argv = ["coarse", *parts, "--prompt", "a red circle", "--prompt", "a blue square"]
    assert cli.main([*argv, "--switch-every", "10", "--frames", "22", "--out", str(video)]) == 0
    assert video_info(video).num_frames == 22
    bad = ["--switch-every", "10", "--frames", "22", "--out", str(video), "--top-p", "2"]
    assert cli.main([*argv, *bad]) == 2
    assert "top-p" in capsys.readouterr().err
    assert cli.main([*argv, "--frames", "22", "--out", str(video)]) == 2  # 2 prompts, no switch
    assert "--switch-every" in capsys.readouterr().err
    assert cli.main(["train", "ar", "--preset", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert "latent cache" in capsys.readouterr().err


def test_codes_added_later_equal_codes_built_in(dataset, models, tmp_path, capsys):
    vae, fine, coarse = models
    built = LatentCache(
        build_cache(vae, dataset / "manifest.csv", tmp_path / "a", fine, coarse, window=3)
    )
    later = build_cache(vae, dataset / "manifest.csv", tmp_path / "b", window=3)
    vae.save_pretrained(tmp_path / "vae")
    fine.save_pretrained(tmp_path / "fine")
    coarse.save_pretrained(tmp_path / "coarse")
    argv = ["cache", "--add-codes", "--out", str(later)]
    assert cli.main([*argv, "--fine-vq", str(tmp_path / "fine")]) == 0
    assert cli.main([*argv, "--coarse-vq", str(tmp_path / "coarse")]) == 0
    later = LatentCache(later)
    assert later.codebook_size == fine.codebook_size
    for a, b in zip(built.entries, later.entries, strict=True):
        assert b.has_codes
        x, y = built.tensors(a), later.tensors(b)
        assert set(x) == set(y) == {"latents", "codes", "coarse"}
        # add_codes batches many videos' windows: the same codes, the decoding within rounding
        assert torch.equal(x["codes"], y["codes"])
        assert torch.allclose(x["coarse"].float(), y["coarse"].float(), atol=2e-3, rtol=1e-3)
    assert cli.main([*argv, "--vae", str(tmp_path / "vae"), "--fine-vq", "x"]) == 2
    assert "leave out --vae" in capsys.readouterr().err


def test_codes_of_many_videos_at_once_equal_each_videos_own(models):
    """vq_many batches the windows of videos of several sizes and lengths (one shorter than a
    window): each video gets the codes vq_windows gives it alone."""
    _, fine, coarse = models
    g = torch.Generator().manual_seed(0)
    sizes = [(7, 4, 4), (2, 4, 4), (3, 8, 4), (6, 4, 4)]  # (latent frames, h, w), windows of 3
    latents = [torch.randn(4, t, h, w, generator=g) for t, h, w in sizes]
    together = vq_many(latents, 3, fine, coarse, batch_size=2)
    for x, got in zip(latents, together, strict=True):
        alone = vq_windows(x, 3, fine, coarse)
        assert set(got) == set(alone) == ({"codes", "coarse"} if x.shape[1] >= 3 else set())
        for key in alone:
            assert got[key].shape == alone[key].shape
        if alone:
            assert torch.equal(got["codes"], alone["codes"])
            assert torch.allclose(
                got["coarse"].float(), alone["coarse"].float(), atol=2e-3, rtol=1e-3
            )


def test_codes_of_a_large_codebook_are_kept_whole():
    """Codes past int16 (an FSQ codebook of 8^6 codes) are stored as they are, not wrapped."""

    class Large:
        codebook_size = 8**6

        def encode(self, x):
            return torch.full((x.shape[0], x.shape[2], 2, 2), self.codebook_size - 1)

    (got,) = vq_many([torch.randn(4, 3, 4, 4)], 3, Large())
    assert got["codes"].min().item() == Large.codebook_size - 1
    assert code_dtype(1000) == torch.int16 and code_dtype(2**15) == torch.int16


def test_append_grows_a_cache_as_one_build_would(dataset, models, tmp_path, capsys):
    vae, fine, coarse = models
    whole = LatentCache(
        build_cache(vae, dataset / "manifest.csv", tmp_path / "whole", fine, coarse, window=3)
    )
    lines = (dataset / "manifest.csv").read_text().splitlines(keepends=True)
    first = dataset / "first_video.csv"  # beside the videos: the manifest's paths are relative
    first.write_text("".join(lines[:2]))  # the header and the first video
    grown = build_cache(vae, first, tmp_path / "grown", fine, coarse, window=3)
    before = LatentCache(grown).entries
    for name, model in [("vae", vae), ("fine", fine), ("coarse", coarse)]:
        model.save_pretrained(tmp_path / name)
    argv = ["cache", "--append", "--vae", str(tmp_path / "vae"), "--out", str(grown)]
    argv += ["--manifest", str(dataset / "manifest.csv"), "--window", "3"]
    # without the VQ-VAEs the cache was built with, the new entries would lack codes: refused
    assert cli.main(argv) == 2
    assert "VQ-VAEs it was built with" in capsys.readouterr().err
    argv += ["--fine-vq", str(tmp_path / "fine"), "--coarse-vq", str(tmp_path / "coarse")]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # again: every video is in already, nothing is added
    grown = LatentCache(grown)
    assert grown.entries[:1] == before  # the first entry, and so the held-out split, stay
    assert len(grown.entries) == 3
    assert [(e.key, e.path) for e in grown.entries] == [(e.key, e.path) for e in whole.entries]
    for a, b in zip(whole.entries, grown.entries, strict=True):
        x, y = whole.tensors(a), grown.tensors(b)
        assert set(x) == set(y) == {"latents", "codes", "coarse"}
        assert all(torch.equal(x[k], y[k]) for k in x) and a.timeline == b.timeline
    assert cli.main(["cache", "--append", "--add-codes", "--out", str(tmp_path / "grown")]) == 2
    assert "do not go together" in capsys.readouterr().err


def test_an_interrupted_build_resumes_into_the_cache_one_build_writes(
    dataset, models, tmp_path, monkeypatch
):
    vae, fine, coarse = models
    manifest = dataset / "manifest.csv"
    whole = LatentCache(build_cache(vae, manifest, tmp_path / "whole", fine, coarse, window=3))
    encoded = []

    def build(out, vqs=(fine, coarse), stop_at=None):
        def encode(vae, path):
            if len(encoded) == stop_at:
                raise KeyboardInterrupt  # Ctrl-C while this video is encoded
            encoded.append(path)
            return encode_video(vae, path)

        encoded.clear()
        monkeypatch.setattr(latent_cache, "encode_video", encode)
        return build_cache(vae, manifest, out, *vqs, window=3, shard_bytes=1)  # a shard a video

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "cache", stop_at=2)
    assert not (tmp_path / "cache").exists()  # nothing half-built where the cache goes
    resumed = LatentCache(build(tmp_path / "cache"))
    assert len(encoded) == len(whole.entries) - 2  # only the videos not yet written
    assert [(e.key, e.path, e.timeline) for e in resumed.entries] == [
        (e.key, e.path, e.timeline) for e in whole.entries
    ]
    for a, b in zip(whole.entries, resumed.entries, strict=True):
        x, y = whole.tensors(a), resumed.tensors(b)
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    assert not (tmp_path / "cache" / "partial.json").exists()
    # written with other encoders (here without the coarse VQ-VAE), the shards are not reused
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "other", stop_at=2)
    build(tmp_path / "other", vqs=(fine, None))
    assert len(encoded) == len(whole.entries)

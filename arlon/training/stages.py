"""The stages `arlon train` knows: each builds its model and data, and defines its loss and export.

| stage | model | data |
|---|---|---|
| vae | causal video VAE | shapes-world clips rendered on the fly, or any CSV manifest of videos |
| vqvae | latent VQ-VAE (fine or coarse) | VAE latents from a latent cache |
| ar | AR transformer | fine codes and captions from a latent cache |
| dit | baseline STDiT (rectified flow, reference frames) | latents and captions from a latent cache |
| arlon | the baseline + ARLON's semantic injection | latents, coarse latents and captions |
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Subset, default_collate

from arlon.data.latent_cache import CodeWindows, LatentCache, LatentWindows
from arlon.data.manifest import ClipDataset
from arlon.data.world_clips import WorldClips
from arlon.diffusion.rectified_flow import flow_loss, resolution_shift
from arlon.errors import ArlonError
from arlon.frames import psnr
from arlon.models.ar_transformer import AR_PRESETS, ar_transformer
from arlon.models.fsq import level_nll
from arlon.models.latent_vqvae import latent_vqvae
from arlon.models.stdit import INJECTION_PRESETS, STDiT, stdit
from arlon.models.text_encoder import TextEncoder
from arlon.models.video_vae import VideoVAE, video_vae
from arlon.training.config import TrainConfig
from arlon.world.captions import resolve
from arlon.world.scene import world_event

# Host memory for the training stages' text states (`data.text_cache_mb`): the recipe's 45,646
# captions, 25.7 MiniLM tokens on average, take 1.8 GB in float32.
TEXT_CACHE_MB = 4096


class VAEStage:
    """Reconstruction (L1 + an edge term on image gradients) plus a light KL.

    `data.foreground_weight` > 1 weighs the L1 of pixels that differ from their frame's median
    colour (the objects of a shapes-world frame) that many times more: they are a tenth of the
    pixels, and without it the VAE spends its first thousand steps on the background alone.
    """

    DEFAULTS = {"num_frames": 9, "kl_weight": 1e-6, "edge_weight": 0.5, "foreground_weight": 1.0}
    HELDOUT = {"psnr_heldout": "max"}

    def build_model(self, cfg: TrainConfig) -> VideoVAE:
        return video_vae(cfg.preset, **cfg.model)

    def dataset(self, cfg: TrainConfig):
        data = {**self.DEFAULTS, **cfg.data}
        if "manifest" in data:
            return ClipDataset(data["manifest"], data["num_frames"], seed=cfg.seed)
        return WorldClips(data["num_frames"])

    def loss(self, model, batch, cfg: TrainConfig):
        data = {**self.DEFAULTS, **cfg.data}
        video = batch["video"]
        rec, mean, logvar = model(video)
        rec = rec.float()
        error = (rec - video).abs()
        if data["foreground_weight"] != 1:
            background = video.flatten(3).median(dim=3).values[..., None, None]  # (B, 3, T, 1, 1)
            foreground = (video - background).abs().amax(dim=1, keepdim=True) > 0.1
            error = error * (1 + (data["foreground_weight"] - 1) * foreground)
        l1 = error.mean()
        edge = sum(
            (torch.diff(rec, dim=d) - torch.diff(video, dim=d)).abs().mean() for d in (-1, -2)
        )
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).mean()
        loss = l1 + data["edge_weight"] * edge + data["kl_weight"] * kl
        return loss, {
            "l1": l1.item(),
            "kl": kl.item(),
            "psnr": psnr(rec.clamp(-1, 1), video, peak=2.0),
        }

    @torch.no_grad()
    def evaluate(self, model: VideoVAE, cfg: TrainConfig) -> dict:
        held_out = WorldClips(33 if cfg.preset != "smoke" else 5, base_seed=7919)
        video = torch.stack([held_out[i]["video"] for i in range(8)])
        return {
            "psnr_heldout": psnr(model.decode(model.encode(video)).clamp(-1, 1), video, peak=2.0)
        }

    @torch.no_grad()
    def export(self, model: VideoVAE, cfg: TrainConfig, folder: Path) -> None:
        # Per-channel statistics of the posterior mean on training clips: later stages see
        # roughly unit-variance latents.
        clips = WorldClips(33 if cfg.preset != "smoke" else 5, base_seed=1)
        model.set_latent_stats([0.0] * model.latent_channels, [1.0] * model.latent_channels)
        z = torch.cat(
            [
                model.encode(clips[i]["video"][None])
                for i in range(64 if cfg.preset != "smoke" else 4)
            ]
        )
        dims = (0, 2, 3, 4)
        model.set_latent_stats(z.mean(dims).tolist(), z.std(dims).clamp_min(1e-6).tolist())
        model.save_pretrained(folder)


def _held_out(entry) -> bool:
    """Every 20th cache entry is held out for evaluation."""
    return int(entry.key) % 20 == 0


class _CacheStage:
    """A stage that trains on a latent cache: the cache is opened once, and its training and
    held-out windows (`_make_windows`) are read once, shared by the model, data and evaluation."""

    NEEDS = "a latent cache: pass --data DIR (built with 'arlon cache --vae ...')"

    def __init__(self):
        self._cache = None
        self._loaded: dict[bool, object] = {}
        self._text_encoder = None

    def text_encoder(self, cfg: TrainConfig):
        """The frozen text encoder (for the stages whose data have captions), loaded once:
        `data.text_encoder` (a text encoder folder, e.g. a converted Open-Sora pipeline's
        `text_encoder/`), else the packaged MiniLM. It keeps the states of every caption of the
        cache, up to `data.text_cache_mb` of them, so that each runs through it once: on one CPU
        thread the baseline DiT's training step took 1.81 s without, 1.39 s with."""
        if self._text_encoder is None:
            captions = {text for entry in self._opened(cfg).entries for _, text in entry.timeline}
            self._text_encoder = TextEncoder.from_pretrained(
                cfg.data.get("text_encoder"),
                cache_size=len(captions),
                cache_bytes=int(cfg.data.get("text_cache_mb", TEXT_CACHE_MB) * 2**20),
            )
        return self._text_encoder

    def _opened(self, cfg: TrainConfig) -> LatentCache:
        if "cache" not in cfg.data:
            raise ArlonError(f"{cfg.stage} trains on {self.NEEDS}")
        if self._cache is None:
            self._cache = LatentCache(cfg.data["cache"])
        return self._cache

    def _make_windows(self, cfg: TrainConfig, cache, entries):
        raise NotImplementedError  # each stage says which windows it trains on

    def _windows(self, cfg: TrainConfig, held_out: bool):
        if held_out not in self._loaded:
            cache = self._opened(cfg)
            entries = [e for e in cache.entries if _held_out(e) == held_out]
            self._loaded[held_out] = self._make_windows(cfg, cache, entries)
        return self._loaded[held_out]

    def dataset(self, cfg: TrainConfig):
        return self._windows(cfg, held_out=False)

    def export(self, model, cfg: TrainConfig, folder: Path) -> None:
        model.save_pretrained(folder)


class VQStage(_CacheStage):
    """Latent VQ-VAE on cached VAE latents: reconstruction MSE plus the commitment loss.

    EMA of weights is off by default: the codebook already moves by its own EMA, and averaging the
    encoder's weights would drift it away from the codes it was assigned. `data.decoder_only`
    trains the decoder alone (with `--init-from` a trained VQ-VAE): the codes of every latent stay
    what they were, so a cache's codes and an AR trained on them stay valid.
    """

    DEFAULTS = {"decoder_only": False}
    HELDOUT = {"mse_heldout": "min", "usage_heldout": "max", "perplexity_heldout": "max"}

    def _make_windows(self, cfg: TrainConfig, cache, entries):

        return LatentWindows(cache, cfg.data.get("window", cache.window), entries=entries)

    def build_model(self, cfg: TrainConfig):

        windows = self._windows(cfg, held_out=False)
        channels = windows[0]["latents"].shape[0]
        model = latent_vqvae(cfg.preset, latent_channels=channels, **cfg.model)
        decoder_only = {**self.DEFAULTS, **cfg.data}["decoder_only"]
        if not isinstance(decoder_only, bool):
            raise ArlonError(f"data.decoder_only must be true or false, got {decoder_only!r}")
        return model.freeze_codes() if decoder_only else model

    def loss(self, model, batch, cfg: TrainConfig):
        out = model(batch["latents"])
        mse = F.mse_loss(out.reconstruction.float(), batch["latents"])
        return out.loss, {"mse": mse.item(), "commit": out.commit_loss.item()}

    @torch.no_grad()
    def evaluate(self, model, cfg: TrainConfig) -> dict:
        windows = self._windows(cfg, held_out=True)
        latents = torch.stack([windows[i]["latents"] for i in range(min(len(windows), 256))])
        codes = model.encode(latents)
        rec = model.decode_codes(codes, num_frames=latents.shape[2])
        stats = model.codebook_stats(codes)
        return {
            "mse_heldout": F.mse_loss(rec, latents).item(),
            "usage_heldout": stats["usage"],
            "perplexity_heldout": stats["perplexity"],
        }


class ARStage(_CacheStage):
    """Next-code cross-entropy on windows of fine codes, the text prefix from the frozen text
    encoder. A window's caption is that of its last frame's segment; frames before a caption
    change are context only. `data.caption_dropout` of the captions become the null prompt (for
    classifier-free guidance). `data.switch_repeats` > 1 draws the training windows that cross a
    caption change that many times as often (7% of the windows of shapes-world episodes): more of
    the prompt switches, which the model is slow to follow. `data.enter_repeats`, when set, does the
    same for the windows where the change brings in a new object (1% of the windows), the slowest
    switch to take hold. `data.code_noise` of the codes the model reads (never of those it
    predicts) are replaced by random ones in training: sampling, it reads its own draws, some of
    them wrong, and learns to carry on from them rather than to drift with them."""

    DEFAULTS = {
        "caption_dropout": 0.1,
        "stride": 1,
        "switch_repeats": 1,
        "enter_repeats": None,
        "code_noise": 0.0,
    }
    HELDOUT = {"accuracy_heldout": "max", "perplexity_heldout": "min"}
    # This stage's own tensors: started from another AR's (`init_partial`), they start fresh all
    # the same, their rows being the codes of the VQ-VAE that AR was trained on, not this one's.
    OWN_TENSORS = ("code_embedder.", "head.")
    NEEDS = (
        "a latent cache with fine codes: pass --data DIR (built with 'arlon cache ... --fine-vq')"
    )

    def _make_windows(self, cfg: TrainConfig, cache, entries):

        stride = {**self.DEFAULTS, **cfg.data}["stride"]
        return CodeWindows(cache, self._frames(cfg), stride, entries)

    def dataset(self, cfg: TrainConfig):

        windows = super().dataset(cfg)
        data = {**self.DEFAULTS, **cfg.data}
        if not 0 <= data["code_noise"] < 1:
            raise ArlonError(f"data.code_noise is a fraction in [0, 1), got {data['code_noise']!r}")
        switch = data["switch_repeats"]
        enter = switch if data["enter_repeats"] is None else data["enter_repeats"]
        for name, value in (("switch_repeats", switch), ("enter_repeats", enter)):
            if not isinstance(value, int) or value < 1:
                raise ArlonError(f"data.{name} must be an integer >= 1, got {value!r}")
        if switch == enter == 1:
            return windows
        events = {}  # a video's captions to a change -> its world event (in several windows)
        repeats = defaultdict(list)  # times drawn -> windows
        for i in range(len(windows)):
            if windows.change(i) is None:
                continue
            story = windows.story(i)
            if enter != switch and story not in events:
                events[story] = world_event(*resolve(list(story))[-2:])
            repeats[enter if events.get(story) == "enter" else switch].append(i)
        extra = [
            Subset(windows, picks) for times, picks in repeats.items() for _ in range(times - 1)
        ]
        return ConcatDataset([windows, *extra])

    @staticmethod
    def _frames(cfg: TrainConfig) -> int:

        return cfg.model.get("max_frames", AR_PRESETS[cfg.preset]["max_frames"])

    def build_model(self, cfg: TrainConfig):

        windows = self._windows(cfg, held_out=False)
        _, h, w = windows[0]["codes"].shape
        sizes = dict(
            codebook_size=windows.cache.codebook_size,
            frame_height=h,
            frame_width=w,
            code_window=windows.code_window,
            text_dim=self.text_encoder(cfg).dim,
        )
        return ar_transformer(cfg.preset, **{**sizes, **cfg.model})

    @staticmethod
    def _levels(cfg: TrainConfig) -> list[int] | None:
        """An FSQ codebook's levels when the head predicts by level alone (no logit per code): the
        loss is then taken dimension by dimension, without the codebook's logits."""
        model = {**AR_PRESETS[cfg.preset], **cfg.model}
        if model.get("code_levels") is None or model.get("code_head", "levels") != "levels":
            return None
        return list(model["code_levels"])

    def _logits(
        self, model, batch, cfg: TrainConfig, dropout: float, noise: float, by_level: bool
    ) -> torch.Tensor:
        text = self.text_encoder(cfg).encode(list(batch["caption"]))
        codes = batch["codes"]
        device = codes.device
        mask = text.mask.to(device)
        if dropout > 0:
            keep = torch.rand(mask.shape[0], device=device) >= dropout
            mask = mask & keep[:, None]
        if noise > 0:  # the cache knows the codebook; a wrapped model has no config to ask
            codebook = self._windows(cfg, held_out=False).cache.codebook_size
            drawn = torch.randint_like(codes, codebook)
            codes = torch.where(torch.rand(codes.shape, device=device) < noise, drawn, codes)
        return model(text.states.to(device), mask, codes, batch["first_frame"], by_level)

    def _scores(self, model, batch, cfg: TrainConfig, dropout: float, noise: float = 0.0):
        """Each code's negative log-likelihood and whether it was the likeliest, and which codes
        are targets, all `(B, N)`."""
        levels = self._levels(cfg)
        logits = self._logits(model, batch, cfg, dropout, noise, levels is not None).float()
        codes, weights = self._targets(batch)
        if levels is not None:
            ce, right = level_nll(logits, codes, levels)
        else:
            # over rows of K contiguous logits (over `(B, K, N)`, the softmax strides 4 times slower)
            ce = F.cross_entropy(logits.flatten(0, 1), codes.flatten(), reduction="none")
            ce = ce.view(codes.shape)
            right = logits.argmax(-1) == codes
        return ce, right, weights

    @staticmethod
    def _targets(batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat codes `(B, N)` and which of them are targets `(B, N)`."""
        codes = batch["codes"]
        per_frame = codes.shape[2] * codes.shape[3]
        weights = batch["frame_mask"].repeat_interleave(per_frame, dim=1)
        return codes.flatten(1), weights

    def loss(self, model, batch, cfg: TrainConfig):
        data = {**self.DEFAULTS, **cfg.data}
        ce, right, weights = self._scores(
            model, batch, cfg, data["caption_dropout"], data["code_noise"]
        )
        loss = (ce * weights).sum() / weights.sum()
        accuracy = (right.float() * weights).sum() / weights.sum()
        return loss, {"accuracy": accuracy.item()}

    @torch.no_grad()
    def evaluate(self, model, cfg: TrainConfig) -> dict:
        """Next-code accuracy and perplexity on held-out windows (every frame a target)."""
        windows = self._windows(cfg, held_out=True)
        picks = torch.linspace(0, len(windows) - 1, min(len(windows), 256)).long().tolist()
        nll, right, total = 0.0, 0, 0
        for first in range(0, len(picks), 32):
            batch = default_collate([windows[i] for i in picks[first : first + 32]])
            ce, hit, weights = self._scores(model, batch, cfg, dropout=0.0)
            nll += (ce * weights).sum().item()
            right += (hit & weights).sum().item()
            total += weights.sum().item()
        return {"accuracy_heldout": right / total, "perplexity_heldout": math.exp(nll / total)}


class DiTStage(_CacheStage):
    """The baseline STDiT: rectified flow on windows of `frames` cached latent frames with their
    captions (Open-Sora's loop). With probability `reference_prob` a window's first 1 to
    `max_reference` frames are clean references (timestep 0, no loss), so the model learns to
    continue a segment; `caption_dropout` of the captions become the null caption (for CFG).
    Timesteps are shifted by `shift` times Open-Sora's resolution/length rule relative to
    `shift_base` (latent frames, height, width; None: no rule)."""

    DEFAULTS = {
        "frames": 9,
        "stride": 2,
        "caption_dropout": 0.1,
        "reference_prob": 0.75,
        "max_reference": 3,
        "shift": 1.0,
        "shift_base": None,
    }
    NEEDS = "a latent cache: pass --data DIR (built with 'arlon cache --vae ...')"
    CONDITION = False  # the windows carry the coarse latent (ARLON)
    HELDOUT = {"flow_loss_heldout": "min"}

    def _make_windows(self, cfg: TrainConfig, cache, entries):

        data = {**self.DEFAULTS, **cfg.data}
        return LatentWindows(cache, data["frames"], data["stride"], entries, self.CONDITION)

    def build_model(self, cfg: TrainConfig):

        channels = self._windows(cfg, held_out=False)[0]["latents"].shape[0]
        sizes = dict(in_channels=channels, text_dim=self.text_encoder(cfg).dim)
        return stdit(cfg.preset, **{**sizes, **cfg.model})

    def _loss(self, model, batch, cfg: TrainConfig, dropout: float):

        data = {**self.DEFAULTS, **cfg.data}
        x0 = batch["latents"]
        b, t = x0.shape[0], x0.shape[2]
        device = x0.device
        text = self.text_encoder(cfg).encode(list(batch["caption"]))
        with_reference = torch.rand(b, device=device) < data["reference_prob"]
        count = torch.randint(1, data["max_reference"] + 1, (b,), device=device) * with_reference
        frame_mask = torch.arange(t, device=device)[None] < count[:, None]  # (B, T)
        shift = data["shift"]
        if data["shift_base"] is not None:
            shift *= resolution_shift(*x0.shape[2:], base=tuple(data["shift_base"]))
        return flow_loss(
            model,
            x0,
            frame_mask,
            shift,
            text_states=text.states.to(device),
            text_mask=text.mask.to(device),
            drop_caption=torch.rand(b, device=device) < dropout,
            condition=batch.get("coarse"),
        )

    def loss(self, model, batch, cfg: TrainConfig):
        loss = self._loss(model, batch, cfg, {**self.DEFAULTS, **cfg.data}["caption_dropout"])
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, cfg: TrainConfig) -> dict:
        """Flow loss on held-out windows, with fixed noise and timesteps (seeded)."""
        windows = self._windows(cfg, held_out=True)
        picks = torch.linspace(0, len(windows) - 1, min(len(windows), 128)).long().tolist()
        total = 0.0
        with torch.random.fork_rng():  # training's RNG (CPU and GPU) as it was, whatever happens
            torch.manual_seed(0)
            for first in range(0, len(picks), 32):
                batch = default_collate([windows[i] for i in picks[first : first + 32]])
                total += self._loss(model, batch, cfg, 0.0).item() * len(batch["caption"])
        return {"flow_loss_heldout": total / len(picks)}


class ARLONStage(DiTStage):
    """ARLON's DiT: a trained baseline (`data.baseline`, a model folder) plus the condition path and
    injections (the preset's, or `model.injection_blocks=...`), conditioned on the window's coarse
    latent. The backbone is frozen (as in the paper) unless `data.train_backbone` is true."""

    DEFAULTS = {**DiTStage.DEFAULTS, "train_backbone": False}
    NEEDS = (
        "a latent cache with coarse latents: pass --data DIR "
        "(built with 'arlon cache ... --coarse-vq')"
    )
    CONDITION = True

    def build_model(self, cfg: TrainConfig):

        data = {**self.DEFAULTS, **cfg.data}
        if "baseline" not in data:
            raise ArlonError(
                "arlon trains on a trained baseline DiT: pass --baseline DIR "
                "(the model folder of 'arlon train dit')"
            )
        folder = Path(data["baseline"])
        if not (folder / "config.json").exists():
            raise ArlonError(f"{folder} is not a trained DiT folder (no config.json)")
        baseline = STDiT.from_pretrained(folder, torch_dtype=torch.float32)
        model = STDiT.from_baseline(baseline, **{**INJECTION_PRESETS[cfg.preset], **cfg.model})
        if data["train_backbone"]:  # without F it is no longer the baseline: its config says so
            model.register_to_config(backbone_trained=True)
        else:
            for p in model.backbone_parameters():
                p.requires_grad_(False)
        return model


STAGES = {"vae": VAEStage, "vqvae": VQStage, "ar": ARStage, "dit": DiTStage, "arlon": ARLONStage}


def stage(name: str):
    if name not in STAGES:
        raise ArlonError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]()

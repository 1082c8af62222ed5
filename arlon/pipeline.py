"""ARLONPipeline: a prompt or a timeline of prompts -> a long video, in memory that does not grow.

    pipe = ARLONPipeline.from_pretrained("arlon/weights/shapes-tiny")   # or load_default()
    video = pipe("a red circle moves right on a black background", num_frames=600).frames[0]
    for frame in pipe.stream(timeline=[(0, "..."), (240, "...")], num_frames=2400): ...

The stages, each holding a bounded window (DESIGN.md §2):

1. the text encoder turns each prompt of the timeline into token states (cached per prompt);
2. the AR transformer streams fine codes token frame by token frame (sliding window, KV cache,
   classifier-free guidance at `AR_GUIDANCE_SCALE` by default), its prefix switching at the
   timeline's boundaries; the fine VQ-VAE decodes each window of codes into the coarse latent F
   (with a little of the windows on either side: `arlon.coarse.coarse_latents`);
3. the DiT denoises the video latent segment by segment: `segment_frames` latent frames, the first
   `reference_frames` of them the clean tail of the previous segment (timestep 0), guided by F of
   the same frames (`mode="arlon"`; `mode="baseline"` runs the same chain without F, Open-Sora's
   loop), in `num_inference_steps` Euler steps with classifier-free guidance on the text;
4. the VAE decodes the new latent frames causally and streams frames out.

A pipeline folder has diffusers' layout: `model_index.json` naming each component's module and
class, and one subfolder per component (`config.json` + safetensors; the text encoder's folder may
instead name the packaged default, `{"packaged": "all-MiniLM-L6-v2"}`, to keep the folder small).
"""

from __future__ import annotations

import importlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from arlon.coarse import coarse_latents, latent_frame, sample_codes, token_timeline
from arlon.data.timeline import Timeline, check_timeline
from arlon.diffusion.rectified_flow import guided, sample
from arlon.errors import ArlonError
from arlon.models.ar_sampler import GUIDANCE_SCALE as AR_GUIDANCE_SCALE
from arlon.models.ar_sampler import ARSampler
from arlon.models.text_encoder import TextEncoder
from arlon.utils import atomic_path

COMPONENTS = ("text_encoder", "ar", "vq", "dit", "scheduler", "vae")
PACKAGED_TEXT_ENCODER = "packaged_text_encoder.json"
MODES = ("arlon", "baseline")


@dataclass
class ARLONPipelineOutput(BaseOutput):
    """`frames`: `(1, T, H, W, 3)` uint8 for output_type "np", or a list of one list of PIL images."""

    frames: np.ndarray | list


@dataclass
class StageTimes:
    """Seconds spent per stage during a generation (AR includes the fine VQ-VAE's decoding)."""

    ar: float = 0.0
    dit: float = 0.0
    vae: float = 0.0
    frames: int = 0
    segments: int = 0

    def as_dict(self) -> dict:
        total = self.ar + self.dit + self.vae
        return {
            "frames": self.frames,
            "segments": self.segments,
            "seconds": {"ar": self.ar, "dit": self.dit, "vae": self.vae, "total": total},
        }


class ARLONPipeline(DiffusionPipeline):
    """Text-to-long-video with an AR transformer guiding a DiT (ARLON). See the module docstring."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        ar,
        vq,
        dit,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae,
        segment_frames: int = 9,
        reference_frames: int = 2,
        fps: float = 8.0,
    ):
        super().__init__()
        if not 0 < reference_frames < segment_frames:
            raise ArlonError(
                f"reference_frames must be in [1, segment_frames), got {reference_frames} of "
                f"{segment_frames}"
            )
        self.register_modules(
            text_encoder=text_encoder, ar=ar, vq=vq, dit=dit, scheduler=scheduler, vae=vae
        )
        self.register_to_config(
            segment_frames=segment_frames, reference_frames=reference_frames, fps=fps
        )
        self.last_times = StageTimes()

    # -- folders ----------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, text_encoder_packaged: bool = True) -> None:
        """Write one subfolder per component and `model_index.json`. `text_encoder_packaged`
        writes only a pointer to the packaged text encoder instead of its 90 MB of weights."""
        folder = Path(folder)
        for name in ("ar", "vq", "dit", "vae"):
            getattr(self, name).save_pretrained(folder / name)
        text_encoder = None
        if not text_encoder_packaged:
            text_encoder = folder / "text_encoder"
            self.text_encoder.save_pretrained(text_encoder)
        assemble(
            folder,
            *(folder / name for name in ("ar", "vq", "dit", "vae")),
            text_encoder=text_encoder,
            shift=self.scheduler.config.shift,
            **{k: self.config[k] for k in ("segment_frames", "reference_frames", "fps")},
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> ARLONPipeline:
        """Load a pipeline folder; `overrides` replace components by name (e.g. `dit=...`).

        A missing folder, a missing or incomplete `model_index.json`, a missing component folder
        or weights that do not load are one-line `ArlonError`s."""
        folder = Path(folder)
        index_path = folder / "model_index.json"
        if not folder.is_dir():
            raise ArlonError(f"model folder {folder} does not exist")
        if not index_path.is_file():
            raise ArlonError(f"{folder} is not a pipeline folder (no model_index.json)")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise ArlonError(f"{index_path} is not valid JSON: {e}") from None
        missing = [name for name in COMPONENTS if name not in index and name not in overrides]
        if missing:
            raise ArlonError(f"{index_path} lacks the component(s) {', '.join(missing)}")
        parts = {}
        for name in COMPONENTS:
            parts[name] = overrides[name] if name in overrides else _load(folder, name, index[name])
        settings = {
            k: index[k] for k in ("segment_frames", "reference_frames", "fps") if k in index
        }
        return cls(**parts, **settings).set_eval()

    def set_eval(self) -> ARLONPipeline:
        for name in ("ar", "vq", "dit", "vae"):
            getattr(self, name).eval()
        return self

    # -- generation -------------------------------------------------------------------------------

    @property
    def temporal_ratio(self) -> int:
        return self.vae.temporal_ratio

    @property
    def spatial_ratio(self) -> int:
        """Pixels per DiT token side: the VAE's ratio times the DiT's patch."""
        return self.vae.spatial_ratio * self.dit.patch_size[1]

    def check_inputs(self, timeline: Timeline, num_frames, height: int, width: int, steps, mode):
        check_timeline(timeline)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ArlonError(f"the number of frames must be a positive integer, got {num_frames!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ArlonError(f"the number of steps must be a positive integer, got {steps!r}")
        if mode not in MODES:
            raise ArlonError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        s = self.spatial_ratio
        if height % s or width % s or height < s or width < s:
            raise ArlonError(
                f"height and width must be positive multiples of {s}, got {height}x{width}"
            )
        if mode == "arlon" and (height, width) != self.default_size():
            raise ArlonError(
                "this AR transformer draws {}x{} videos, not {}x{} (mode baseline takes other "
                "sizes)".format(*self.default_size(), height, width)
            )

    def default_size(self) -> tuple[int, int]:
        """The frame size the AR transformer draws: its token grid, through the VQ and the VAE."""
        c, ratio = self.ar.config, self.vae.spatial_ratio
        return c.frame_height * self.vq.ratio[1] * ratio, c.frame_width * self.vq.ratio[2] * ratio

    @torch.inference_mode()
    def stream(
        self,
        prompt: str | None = None,
        timeline: Timeline | None = None,
        num_frames: int = 600,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 5,
        guidance_scale: float = 1.0,
        ar_temperature: float = 1.0,
        ar_top_k: int = 0,
        ar_top_p: float = 1.0,
        ar_guidance_scale: float = AR_GUIDANCE_SCALE,
        seed: int = 0,
        mode: str = "arlon",
        init_video: np.ndarray | str | Path | None = None,
        progress: bool = True,
        codes: Iterable[torch.Tensor] | None = None,
    ) -> Iterator[np.ndarray]:
        """Frames `(H, W, 3)` uint8, one at a time, as the stages produce them.

        `init_video` (frames `(T, H, W, 3)` uint8 or a video file) is continued: its last latent
        frames are the first segment's reference and its codes the AR's history; the frames
        returned are the `num_frames` that follow it. `codes`: the AR's token frames `(h, w)` for
        this video, sampled beforehand (`sample_codes` draws many videos' at once); the AR
        settings are then unused."""
        timeline = _timeline(prompt, timeline)
        init = None
        if init_video is not None:
            init = self._encode_init(init_video)
            height, width = (
                init.shape[3] * self.vae.spatial_ratio,
                init.shape[4] * self.vae.spatial_ratio,
            )
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        self.check_inputs(timeline, num_frames, height, width, num_inference_steps, mode)
        times = self.last_times = StageTimes()
        r = self.config.reference_frames
        segments, new_latents = self._plan(num_frames, continued=init is not None)
        conditions = None
        if mode == "arlon":
            history = None if init is None else list(self.vq.encode(init)[0])  # (h, w) each
            if codes is None:
                sampler = self._sampler(seed, ar_temperature, ar_top_k, ar_top_p, ar_guidance_scale)
                codes = sampler.frames(
                    token_timeline(timeline, self.temporal_ratio, self.vq.ratio[0]),
                    self._token_frames(new_latents),
                    history,
                )
            conditions = self._conditions(codes, init, history, times)
        bars = _Bars(progress, num_frames, segments)
        latents = self._latents(
            timeline,
            segments,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            seed,
            conditions,
            init,
            times,
            bars,
        )
        skip = 0 if init is None else self.vae.video_frames(r)  # the reference's own frames
        left = num_frames
        decoder = self.vae.decode_stream(latents)
        while left > 0:
            upstream, started = times.ar + times.dit, time.perf_counter()
            video = next(decoder)  # (1, 3, t, H, W); pulls the AR and DiT stages as needed
            frames = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            frames = frames.permute(1, 2, 3, 0)[skip:][:left].numpy()
            skip = max(0, skip - video.shape[2])
            times.vae += time.perf_counter() - started - (times.ar + times.dit - upstream)
            yield from frames
            left -= len(frames)
            times.frames += len(frames)
            bars.frames.update(len(frames))
        decoder.close()
        bars.close()

    def _encode_init(self, video: np.ndarray | str | Path) -> torch.Tensor:
        """The last `reference_frames` latent frames `(1, C, r, h, w)` of a video to continue."""
        from arlon.data.latent_cache import encode_video

        r = self.config.reference_frames
        if isinstance(video, str | Path):
            if not Path(video).is_file():
                raise ArlonError(f"no such video to continue: {video}")
            latents = encode_video(self.vae, video)[None]
        else:
            frames = torch.as_tensor(np.asarray(video))
            usable = 1 + (len(frames) - 1) // self.temporal_ratio * self.temporal_ratio
            clip = frames[len(frames) - usable :].permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            latents = self.vae.encode(clip)
        if latents.shape[2] < r:
            need = self.vae.video_frames(r)
            raise ArlonError(f"the video to continue needs at least {need} frames")
        return latents[:, :, -r:]

    def _plan(self, num_frames: int, continued: bool = False) -> tuple[int, int]:
        """`(segments, new latent frames)` for `num_frames` video frames (continuing a video: they
        follow its reference frames)."""
        s, r = self.config.segment_frames, self.config.reference_frames
        # new latent frames: a causal VAE's first latent is one frame, the others four
        if not continued:
            needed = 1 + latent_frame(num_frames - 1, self.temporal_ratio)
            segments = 1 + max(0, -(-(needed - s) // (s - r)))
        else:
            needed = -(-num_frames // self.temporal_ratio)
            segments = -(-needed // (s - r))
        return segments, segments * (s - r) + (0 if continued else r)

    def seams(self, num_frames: int) -> list[int]:
        """Video frames t whose successor t + 1 is the first new frame of a DiT segment."""
        s, r = self.config.segment_frames, self.config.reference_frames
        segments, _ = self._plan(num_frames)
        ends = [self.vae.video_frames(k * (s - r) + s) - 1 for k in range(segments)]
        return [end for end in ends if end + 1 < num_frames]

    def _token_frames(self, new_latents: int) -> int:
        """AR token frames that cover `new_latents` latent frames: whole VQ windows."""
        frames_per_window = self.ar.config.code_window * self.vq.ratio[0]
        return -(-new_latents // frames_per_window) * self.ar.config.code_window

    @torch.inference_mode()
    def sample_codes(
        self,
        timelines: list[Timeline],
        num_frames: int,
        seeds: list[int],
        ar_temperature: float = 1.0,
        ar_top_k: int = 0,
        ar_top_p: float = 1.0,
        ar_guidance_scale: float = AR_GUIDANCE_SCALE,
        progress: bool = False,
    ) -> list[list[torch.Tensor]]:
        """The AR's token frames for several videos at once (a batch: much faster per video than one
        by one), to pass to `stream(codes=...)` with the same timeline, length and seed. Memory
        grows with the batch and the length: meant for evaluations, not for unbounded videos."""
        _, new_latents = self._plan(num_frames)
        sampler = self._sampler(seeds, ar_temperature, ar_top_k, ar_top_p, ar_guidance_scale)
        return sample_codes(
            sampler,
            timelines,
            self._token_frames(new_latents),
            self.temporal_ratio,
            self.vq.ratio[0],
            desc=f"AR ({len(timelines)} videos)",
            unit="token frame",
            disable=not progress,
            leave=False,
        )

    def _sampler(self, seed, temperature, top_k, top_p, guidance_scale) -> ARSampler:
        """The AR's sampler for one seed, or for a batch of videos (a list of seeds)."""
        return ARSampler(
            self.ar,
            self.text_encoder,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            seed=seed,
        )

    def _conditions(self, codes, init, history, times) -> Iterator[torch.Tensor]:
        """Coarse latent frames `(1, C, 1, h, w)`, one at a time, from the AR's token frames `codes`
        (and, when continuing a video, from its reference frames' codes `history` first)."""
        if init is not None:
            decoded = self.vq.decode_codes(torch.stack(history)[None], num_frames=init.shape[2])
            yield from decoded.split(1, dim=2)
        chunks = coarse_latents(codes, self.vq, self.ar.config.code_window, history=history)
        while True:
            started = time.perf_counter()
            chunk = next(chunks, None)
            times.ar += time.perf_counter() - started
            if chunk is None:
                return
            yield from chunk.split(1, dim=2)

    def _latents(
        self,
        timeline,
        segments,
        height,
        width,
        steps,
        guidance_scale,
        seed,
        conditions,
        init,
        times,
        bars,
    ) -> Iterator[torch.Tensor]:
        """Latent frames `(1, C, n, h, w)` for the VAE: the reference being continued (if any),
        then the new frames of each DiT segment in turn."""
        s, r = self.config.segment_frames, self.config.reference_frames
        c = self.dit.config.in_channels
        h, w = height // self.vae.spatial_ratio, width // self.vae.spatial_ratio
        generator = torch.Generator().manual_seed(seed)
        # The coarse latent frames of the current segment: segments overlap by r frames, so each
        # new segment appends its new frames and the deque drops the oldest.
        window: deque[torch.Tensor] = deque(maxlen=s)
        previous = init
        if init is not None:
            yield init  # decoded for the causal context; its frames are not returned
        for k in range(segments):
            for _ in range(0 if conditions is None else s if k == 0 else s - r):
                window.append(next(conditions))
            condition = None if conditions is None else torch.cat(list(window), dim=2)
            started = time.perf_counter()
            if init is None:  # the segment's last video frame: latent l ends at frame 4l
                last = self.vae.video_frames(k * (s - r) + s) - 1
            else:  # continued: new latent j holds frames 4j .. 4j + 3
                last = (k + 1) * (s - r) * self.temporal_ratio - 1
            prompt = _prompt_at(timeline, last)
            text = self.text_encoder.encode([prompt])
            noise = torch.randn((1, c, s, h, w), generator=generator)
            reference = torch.zeros_like(noise)
            frame_mask = torch.zeros(1, s, dtype=torch.bool)
            if previous is not None:
                reference[:, :, :r] = previous[:, :, -r:]
                frame_mask[:, :r] = True
            velocity = guided(self.dit, guidance_scale, condition=condition)
            x = sample(
                velocity,
                noise,
                steps,
                text.states,
                text.mask,
                reference,
                frame_mask,
                self.scheduler,
            )
            times.dit += time.perf_counter() - started
            times.segments += 1
            bars.segments.update(1)
            yield x if previous is None else x[:, :, r:]
            previous = x

    def __call__(
        self,
        prompt: str | None = None,
        timeline: Timeline | None = None,
        num_frames: int = 600,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 5,
        guidance_scale: float = 1.0,
        ar_temperature: float = 1.0,
        ar_top_k: int = 0,
        ar_top_p: float = 1.0,
        ar_guidance_scale: float = AR_GUIDANCE_SCALE,
        generator: torch.Generator | int | None = None,
        output_type: str = "np",
        mode: str = "arlon",
        init_video: np.ndarray | str | Path | None = None,
        callback: Callable[[int, np.ndarray], None] | None = None,
        progress: bool = True,
    ) -> ARLONPipelineOutput:
        """The whole video in memory, like diffusers' video pipelines: `.frames` is
        `(1, T, H, W, 3)` uint8 ("np") or `[[PIL.Image, ...]]` ("pil"). For long videos prefer
        `stream()`, which holds nothing of the video. `generator`: a seed, or a torch.Generator
        whose `initial_seed()` is used. `callback(i, frame)` is called for every frame."""
        if output_type not in ("np", "pil"):
            raise ArlonError(f"output_type must be 'np' or 'pil', got {output_type!r}")
        seed = generator.initial_seed() if isinstance(generator, torch.Generator) else generator
        frames = []
        for i, frame in enumerate(
            self.stream(
                prompt,
                timeline,
                num_frames,
                height,
                width,
                num_inference_steps,
                guidance_scale,
                ar_temperature,
                ar_top_k,
                ar_top_p,
                ar_guidance_scale,
                seed or 0,
                mode,
                init_video,
                progress,
            )
        ):
            if callback is not None:
                callback(i, frame)
            frames.append(frame)
        if output_type == "pil":
            from PIL import Image

            return ARLONPipelineOutput(frames=[[Image.fromarray(f) for f in frames]])
        return ARLONPipelineOutput(frames=np.stack(frames)[None])


# model folders by the `_class_name` of their config.json -> the module and class that load them
_CLASSES = {
    "ARTransformer": ("arlon.models.ar_transformer", "ARTransformer"),
    "LatentVQVAE": ("arlon.models.latent_vqvae", "LatentVQVAE"),
    "STDiT": ("arlon.models.stdit", "STDiT"),
    "VideoVAE": ("arlon.models.video_vae", "VideoVAE"),
}


def assemble(
    out: str | Path,
    ar: str | Path,
    vq: str | Path,
    dit: str | Path,
    vae: str | Path,
    text_encoder: str | Path | None = None,
    shift: float = 1.0,
    segment_frames: int = 9,
    reference_frames: int = 2,
    fps: float = 8.0,
) -> Path:
    """A pipeline folder from trained component folders (copied as they are stored; a folder
    already at its place in `out` is kept). `text_encoder` None: the packaged MiniLM. A `vae`
    folder of a diffusers video autoencoder is loaded through `PretrainedVideoVAE`."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "ARLONPipeline"}
    for name, source in (("ar", ar), ("vq", vq), ("dit", dit), ("vae", vae)):
        source = Path(source)
        config = source / "config.json"
        if not config.is_file():
            raise ArlonError(f"{source} is not a model folder (no config.json) for {name}")
        class_name = json.loads(config.read_text()).get("_class_name")
        index[name] = _CLASSES.get(
            class_name, ("arlon.models.pretrained_vae", "PretrainedVideoVAE")
        )
        if name != "vae" and class_name not in _CLASSES:
            raise ArlonError(f"{source} holds a {class_name}, not a model for {name}")
        if source.resolve() != (out / name).resolve():
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(source, out / name)
    index["text_encoder"] = list(_module_class(TextEncoder))
    (out / "text_encoder").mkdir(exist_ok=True)
    if text_encoder is None:
        pointer = {"packaged": "all-MiniLM-L6-v2"}
        (out / "text_encoder" / PACKAGED_TEXT_ENCODER).write_text(json.dumps(pointer, indent=2))
    elif Path(text_encoder).resolve() != (out / "text_encoder").resolve():
        TextEncoder.from_pretrained(text_encoder).save_pretrained(out / "text_encoder")
    index["scheduler"] = list(_module_class(FlowMatchEulerDiscreteScheduler))
    from arlon.diffusion.rectified_flow import scheduler

    scheduler(shift).save_pretrained(out / "scheduler")
    index |= dict(segment_frames=segment_frames, reference_frames=reference_frames, fps=fps)
    with atomic_path(out / "model_index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")
    return out


def _module_class(cls: type) -> tuple[str, str]:
    return cls.__module__, cls.__name__


def _timeline(prompt: str | None, timeline: Timeline | None) -> Timeline:
    if (prompt is None) == (timeline is None):
        raise ArlonError("give either a prompt or a timeline")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ArlonError("the prompt is empty")
        return [(0, prompt)]
    timeline = [(int(s), p) for s, p in timeline]
    check_timeline(timeline)
    return timeline


def _prompt_at(timeline: Timeline, frame: int) -> str:
    prompt = timeline[0][1]
    for start, text in timeline:
        if start <= frame:
            prompt = text
    return prompt


class _Bars:
    """One progress bar per stage: AR+DiT segments, and frames out of the VAE."""

    def __init__(self, enabled: bool, frames: int, segments: int):
        self.segments = tqdm(total=segments, desc="DiT segments", unit="seg", disable=not enabled)
        self.frames = tqdm(
            total=frames, desc="frames", unit="frame", disable=not enabled, position=1
        )

    def close(self) -> None:
        self.segments.close()
        self.frames.close()


def _load(folder: Path, name: str, entry) -> object:
    """One component from its subfolder, by the module and class `model_index.json` names."""
    sub = folder / name
    if not sub.is_dir():
        raise ArlonError(f"{folder} is incomplete: no {name}/ folder")
    if name == "text_encoder" and (sub / PACKAGED_TEXT_ENCODER).is_file():
        return TextEncoder.from_pretrained()
    try:
        module, class_name = entry
        cls = getattr(importlib.import_module(module), class_name)
    except (ValueError, TypeError, ImportError, AttributeError):
        raise ArlonError(f"model_index.json names an unknown class for {name}: {entry!r}") from None
    if not (sub / ("scheduler_config.json" if name == "scheduler" else "config.json")).is_file():
        raise ArlonError(f"{folder} is incomplete: {name}/ has no config")
    try:
        if name in ("scheduler", "text_encoder") or class_name == "PretrainedVideoVAE":
            return cls.from_pretrained(sub)
        return cls.from_pretrained(sub, torch_dtype=torch.float32).eval()
    except ArlonError:
        raise
    except Exception as e:  # corrupt or missing weights
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArlonError(f"cannot load {name} from {sub}: {first}") from None

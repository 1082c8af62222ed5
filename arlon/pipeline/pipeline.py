"""ARLONPipeline: a prompt or a timeline of prompts -> a long video, in memory that does not grow.

    pipe = ARLONPipeline.from_pretrained(ROOT)                  # arlon.weights.ROOT: the embedded model
    video = pipe("a red circle moves right on a black background", num_frames=600).frames[0]
    for frame in pipe.stream(timeline=[(0, "..."), (240, "...")], num_frames=2400): ...

The stages, each holding a bounded window:

1. the text encoder turns each prompt of the timeline into token states (cached per prompt), a
   prompt that states only a change read as the whole scene it asks for
   (`arlon.world.prompts.whole_scenes`: "the circle turns blue" after "a red circle moves right");
2. the AR transformer streams codes token frame by token frame (sliding window, KV cache,
   classifier-free guidance: `ARSampling`), its prefix switching at the timeline's boundaries; the
   fine VQ-VAE decodes each window of codes into the coarse latent F (with a little of the windows
   on either side: `arlon.pipeline.coarse.coarse_latents`);
3. the DiT denoises the video latent segment by segment: `segment_frames` latent frames, the first
   `reference_frames` of them the clean tail of the previous segment (timestep 0), guided by F of
   the same frames (mode "arlon"; mode "baseline" runs the same chain without F, Open-Sora's
   loop, on the folder's text-only `baseline` DiT where it has one), in `num_inference_steps`
   Euler steps with classifier-free guidance on the text (the model's `guidance_scale` unless a
   call gives one);
4. the VAE decodes the new latent frames causally and streams frames out.

With `overlap=True` (`arlon generate`'s default) stages 2 and 3-4 work side by side: the AR draws in
a thread of its own, at most two VQ windows ahead of the DiT, and torch's threads are best split
between them (`arlon.pipeline.threads.generation_threads`). The frames are those of the stages
taking turns at the same thread count: the AR's codes depend on nothing the DiT does.

Mode "ar-only" leaves out step 3: F itself goes to the VAE, which shows what the DiT adds.

Live direction: given a `LiveTimeline`, a prompt directed while the video streams takes effect at
the next token frame the AR draws (its cache refilled under the new prompt from the frames it keeps,
as at any switch; in mode "baseline", at the next DiT segment) and is recorded there, so
`live.timeline` regenerates the same video.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from arlon.diffusion.rectified_flow import check_strength, guided, sample
from arlon.errors import ArlonError
from arlon.frames import to_frames
from arlon.models.ar_sampler import ARSampler, ARSampling
from arlon.models.text_encoder import TextEncoder
from arlon.pipeline.coarse import LiveTokens, coarse_latents, sample_codes
from arlon.pipeline.folders import MODELS, SETTINGS, assemble, load_components
from arlon.pipeline.job import DiTSampling, Job, check_guidance, continued_latents
from arlon.pipeline.threads import StageTimes, counted, read_ahead, timed
from arlon.timeline import LiveTimeline, Timeline
from arlon.utils import check_seed
from arlon.world.prompts import whole_scenes


def _check_baseline(baseline, dit) -> None:
    """A baseline DiT renders the same latents from the same text as `dit`, and is a baseline."""
    if baseline.config.backbone_trained:
        raise ArlonError(
            "the baseline DiT trained its backbone with a condition: it is no baseline"
        )
    for name in ("in_channels", "patch_size", "text_dim"):
        if tuple(np.atleast_1d(baseline.config[name])) != tuple(np.atleast_1d(dit.config[name])):
            raise ArlonError(
                f"the baseline DiT's {name} is {baseline.config[name]}, the DiT's "
                f"{dit.config[name]}: they must render the same latents from the same text"
            )


@dataclass
class ARLONPipelineOutput(BaseOutput):
    """`frames`: `(1, T, H, W, 3)` uint8 for output_type "np", or a list of one list of PIL images."""

    frames: np.ndarray | list


def check_length(num_frames) -> None:
    """A clear error for a length that is not a positive number of frames."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ArlonError(f"the number of frames must be a positive integer, got {num_frames!r}")


class ARLONPipeline(DiffusionPipeline):
    """Text-to-long-video with an AR transformer guiding a DiT (ARLON). See the module docstring.
    `baseline`, optional: the text-only DiT that mode baseline runs (`baseline_dit()`)."""

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
        guidance_scale: float = 1.0,
        strength: float = 1.0,
        baseline=None,
        ar_temperature: float = 1.0,
    ):
        super().__init__()
        if not 0 < reference_frames < segment_frames:
            raise ArlonError(
                f"reference_frames must be in [1, segment_frames), got {reference_frames} of "
                f"{segment_frames}"
            )
        if not fps > 0:
            raise ArlonError(f"fps must be positive, got {fps}")
        check_guidance(guidance_scale)
        if not 0 < strength <= 1:
            raise ArlonError(f"the model's strength must lie in (0, 1], got {strength}")
        if not ar_temperature >= 0:
            raise ArlonError(f"the model's AR temperature must be >= 0, got {ar_temperature}")
        self.register_modules(
            text_encoder=text_encoder, ar=ar, vq=vq, dit=dit, scheduler=scheduler, vae=vae
        )
        # registered only where there is one: the config of a folder without one stays as it was
        self.baseline = None
        if baseline is not None:
            _check_baseline(baseline, dit)
            self.register_modules(baseline=baseline)
        self.register_to_config(
            segment_frames=segment_frames,
            reference_frames=reference_frames,
            fps=fps,
            guidance_scale=guidance_scale,
            strength=strength,
            ar_temperature=ar_temperature,
        )
        self.last_times = StageTimes()

    # -- folders ----------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, text_encoder_packaged: bool = True) -> None:
        """Write one subfolder per component and `model_index.json`. `text_encoder_packaged`
        writes only a pointer to the packaged text encoder instead of its 90 MB of weights."""
        folder = Path(folder)
        for name in self.models:
            getattr(self, name).save_pretrained(folder / name)
        text_encoder = None
        if not text_encoder_packaged:
            text_encoder = folder / "text_encoder"
            self.text_encoder.save_pretrained(text_encoder)
        settings = {k: self.config[k] for k in SETTINGS}
        folders = {name: folder / name for name in self.models}
        assemble(folder, folders, text_encoder, self.scheduler.config.shift, settings)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> ARLONPipeline:
        """Load a pipeline folder (`arlon.pipeline.folders`); `overrides` replace components by
        name (e.g. `dit=...`). Every way a folder can be wrong is a one-line `ArlonError`."""
        parts, settings = load_components(folder, skip=tuple(overrides))
        return cls(**parts, **overrides, **settings).set_eval()

    def resolved(self, sampling: DiTSampling) -> DiTSampling:
        """`sampling` with this model's text guidance and strength where it leaves the choice to
        the model (its strength in mode arlon only: the others start from noise)."""
        if sampling.guidance_scale is None:
            sampling = replace(sampling, guidance_scale=self.config.guidance_scale)
        if sampling.strength is None:
            strength = self.config.strength if sampling.mode == "arlon" else 1.0
            check_strength(strength, sampling.num_inference_steps, whose="the model's")
            sampling = replace(sampling, strength=strength)
        return sampling

    def resolved_ar(self, sampling: ARSampling) -> ARSampling:
        """`sampling` with this model's AR temperature where it leaves the choice to the model."""
        if sampling.temperature is None:
            sampling = replace(sampling, temperature=self.config.ar_temperature)
        return sampling

    def set_eval(self) -> ARLONPipeline:
        for name in self.models:
            getattr(self, name).eval()
        return self

    @property
    def models(self) -> list[str]:
        """The trained components this pipeline holds: `MODELS`, and `baseline` if it has one."""
        return [*MODELS, *(["baseline"] if self.baseline is not None else [])]

    def dit_for(self, mode: str):
        """The DiT that renders `mode`: `baseline_dit()` in mode baseline, else `dit`."""
        return self.baseline_dit() if mode == "baseline" else self.dit

    def baseline_dit(self):
        """The DiT of mode baseline: the folder's `baseline` where it has one, else the DiT without
        its condition, which computes its baseline while its backbone is the baseline's (frozen)."""
        if self.baseline is not None:
            return self.baseline
        if self.dit.config.backbone_trained:
            raise ArlonError(
                "this model's DiT trained its backbone with the coarse condition, so without it "
                "it is not a baseline: give the folder its baseline DiT ('arlon assemble "
                "--baseline DIR') for mode baseline"
            )
        return self.dit

    # -- geometry ---------------------------------------------------------------------------------

    @property
    def temporal_ratio(self) -> int:
        return self.vae.temporal_ratio

    @property
    def spatial_ratio(self) -> int:
        """Pixels per DiT token side: the VAE's ratio times the DiT's patch."""
        return self.vae.spatial_ratio * self.dit.patch_size[1]

    def default_size(self) -> tuple[int, int]:
        """The frame size the AR transformer draws: its token grid, through the VQ and the VAE."""
        c, ratio = self.ar.config, self.vae.spatial_ratio
        return c.frame_height * self.vq.ratio[1] * ratio, c.frame_width * self.vq.ratio[2] * ratio

    def check_inputs(self, num_frames, height: int, width: int, sampling: DiTSampling) -> None:
        """Errors a generation's size would meet, before any work: against the models (its length:
        `check_length`)."""
        s = self.spatial_ratio
        if height % s or width % s or height < s or width < s:
            raise ArlonError(
                f"height and width must be positive multiples of {s}, got {height}x{width}"
            )
        if sampling.mode != "baseline" and (height, width) != self.default_size():
            raise ArlonError(
                "this AR transformer draws {}x{} videos, not {}x{} (mode baseline takes other "
                "sizes)".format(*self.default_size(), height, width)
            )

    def plan(self, num_frames: int, continued: bool = False) -> tuple[int, int]:
        """`(segments, new latent frames)` for `num_frames` video frames (continuing a video: they
        follow its reference frames)."""
        s, r = self.config.segment_frames, self.config.reference_frames
        if not continued:
            needed = self.vae.latents_for(num_frames)
            segments = 1 + max(0, -(-(needed - s) // (s - r)))
        else:  # new latent frames after the r of the reference
            needed = self.vae.latents_for(self.vae.video_frames(r) + num_frames) - r
            segments = -(-needed // (s - r))
        return segments, segments * (s - r) + (0 if continued else r)

    def seams(self, num_frames: int) -> list[int]:
        """Video frames t whose successor t + 1 is the first new frame of a DiT segment."""
        s, r = self.config.segment_frames, self.config.reference_frames
        segments, _ = self.plan(num_frames)
        ends = [self.vae.video_frames(k * (s - r) + s) - 1 for k in range(segments)]
        return [end for end in ends if end + 1 < num_frames]

    def token_frames(self, new_latents: int) -> int:
        """AR token frames that cover `new_latents` latent frames: whole VQ windows."""
        frames_per_window = self.ar.config.code_window * self.vq.ratio[0]
        return -(-new_latents // frames_per_window) * self.ar.config.code_window

    # -- generation -------------------------------------------------------------------------------

    @torch.inference_mode()
    def stream(
        self,
        prompt: str | None = None,
        *,
        timeline: Timeline | LiveTimeline | list[tuple[int, str]] | None = None,
        num_frames: int = 600,
        height: int | None = None,
        width: int | None = None,
        sampling: DiTSampling = DiTSampling(),
        ar_sampling: ARSampling = ARSampling(),
        seed: int = 0,
        init_video: np.ndarray | str | Path | None = None,
        progress: bool = True,
        codes: Iterable[torch.Tensor] | None = None,
        times: StageTimes | None = None,
        overlap: bool = False,
    ) -> Iterator[np.ndarray]:
        """Frames `(H, W, 3)` uint8, one at a time, as the stages produce them.

        `timeline`: a `LiveTimeline` takes prompts directed while the frames stream (see the module
        docstring). `init_video` (frames `(T, H, W, 3)` uint8 or a video file) is continued: its
        last latent frames are the first segment's reference and its codes the AR's history; the
        frames returned are the `num_frames` that follow it. `codes`: the AR's token frames
        `(h, w)` for this video (`sample_codes` draws many videos' at once, `draw_codes` one
        video's as they are pulled); `ar_sampling` is then unused. `times`: the `StageTimes` to
        fill as the stages work (another thread may watch it), else a new one; either way it is
        `last_times`. `overlap`: the AR draws in a thread of its own while the DiT and the VAE work
        (the same frames, sooner when `threads.generation_threads(True)` leaves it a core)."""
        sampling = self.resolved(sampling)
        job = self._job(prompt, timeline, num_frames, height, width, sampling, seed, init_video)
        times = self.last_times = times if times is not None else StageTimes()
        stop = threading.Event()  # the frames are no longer read: the AR stops at its next frame
        coarse = None
        if sampling.mode != "baseline":
            coarse = self._coarse_latents(job, ar_sampling, codes, times, stop)
            if overlap:
                coarse = read_ahead(coarse, closed=stop)
            coarse = timed(coarse, times, "waited")
        if sampling.mode == "ar-only":  # F itself, window by window as the VQ-VAE decodes it
            bars = _Bars(progress, num_frames, 0)
            latents = coarse
        else:
            bars = _Bars(progress, num_frames, job.segments)
            conditions = None if coarse is None else (f for c in coarse for f in c.split(1, dim=2))
            latents = self._latents(job, conditions, times, bars)
        try:
            yield from self._decode(job, latents, times, bars)
        finally:  # also when the frames stop being read (Ctrl-C, a Stop): the AR's thread ends here
            stop.set()
            bars.close()
            if coarse is not None:
                coarse.close()

    def _job(self, prompt, timeline, num_frames, height, width, sampling, seed, init_video) -> Job:
        if (prompt is None) == (timeline is None):
            raise ArlonError("give either a prompt or a timeline")
        if not isinstance(timeline, LiveTimeline):
            timeline = LiveTimeline(prompt if timeline is None else timeline)
        if init_video is not None and sampling.mode == "ar-only":
            raise ArlonError("mode ar-only does not continue a video: use arlon or baseline")
        check_length(num_frames)  # the length and the DiT before a video to continue is encoded
        dit = self.dit_for(sampling.mode)
        init = (
            None
            if init_video is None
            else continued_latents(self.vae, init_video, self.config.reference_frames)
        )
        if init is not None:  # a continuation has the size of the video it continues
            size = tuple(n * self.vae.spatial_ratio for n in init.shape[3:])
            if (height or size[0], width or size[1]) != size:
                raise ArlonError(
                    f"the video to continue is {size[1]}x{size[0]}: its continuation cannot be "
                    f"{width or size[1]}x{height or size[0]}"
                )
            height, width = size
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        self.check_inputs(num_frames, height, width, sampling)
        segments, new_latents = self.plan(num_frames, continued=init is not None)
        return Job(
            timeline,
            num_frames,
            height,
            width,
            sampling,
            check_seed(seed),
            segments,
            new_latents,
            init,
            dit,
        )

    def _decode(self, job: Job, latents, times: StageTimes, bars) -> Iterator[np.ndarray]:
        """The VAE's frames of `latents`, less the continued video's own frames, cut to length."""
        skip = 0 if job.init is None else self.vae.video_frames(self.config.reference_frames)
        left = job.num_frames
        decoder = self.vae.decode_stream(latents)
        try:
            while left > 0:
                upstream, started = times.waited + times.dit, time.perf_counter()
                video = next(decoder, None)  # (1, 3, t, H, W); pulls the AR and DiT as needed
                if video is None:  # the plan's latent frames decode to fewer frames
                    made = job.num_frames - left
                    raise ArlonError(f"the VAE made {made} of {job.num_frames} frames")
                frames = to_frames(video[0])[skip:][:left]
                skip = max(0, skip - video.shape[2])
                elapsed = time.perf_counter() - started
                times.vae += elapsed - (times.waited + times.dit - upstream)
                times.total += elapsed
                yield from frames
                left -= len(frames)
                times.frames += len(frames)
                bars.frames.update(len(frames))
        finally:
            decoder.close()

    @torch.inference_mode()
    def sample_codes(
        self,
        timelines: list[Timeline],
        num_frames: int,
        seeds: list[int],
        ar_sampling: ARSampling = ARSampling(),
        progress: bool = False,
    ) -> list[list[torch.Tensor]]:
        """The AR's token frames for several videos at once (a batch: much faster per video than one
        by one), to pass to `stream(codes=...)` with the same timeline, length and seed. Memory
        grows with the batch and the length: meant for evaluations, not for unbounded videos."""
        _, new_latents = self.plan(num_frames)
        sampler = ARSampler(
            self.ar,
            self.text_encoder,
            self.resolved_ar(ar_sampling),
            [check_seed(s) for s in seeds],
        )
        return sample_codes(
            sampler,
            [Timeline.of(t) for t in timelines],
            self.token_frames(new_latents),
            self.vae,
            self.vq.ratio[0],
            desc=f"AR ({len(timelines)} videos)",
            unit="token frame",
            disable=not progress,
            leave=False,
        )

    def draw_codes(
        self,
        timeline: Timeline | LiveTimeline | list[tuple[int, str]],
        num_frames: int,
        ar_sampling: ARSampling = ARSampling(),
        seed: int = 0,
        history: list[torch.Tensor] | None = None,
    ) -> Iterator[torch.Tensor]:
        """The AR's token frames `(h, w)` for a video of `num_frames` frames, each drawn when it is
        pulled: what `stream` draws for the same arguments (give them as its `codes` to keep them).
        A `LiveTimeline`'s directed prompt takes effect at the next token frame. `history`: the
        token frames of a video being continued."""
        live = timeline if isinstance(timeline, LiveTimeline) else LiveTimeline(timeline)
        _, new_latents = self.plan(num_frames, continued=history is not None)
        sampler = ARSampler(
            self.ar, self.text_encoder, self.resolved_ar(ar_sampling), check_seed(seed)
        )
        tokens = LiveTokens(live, self.vae, self.vq.ratio[0])
        return sampler.frames(tokens, self.token_frames(new_latents), history)

    def _coarse_latents(
        self, job: Job, ar_sampling, codes, times, stop: threading.Event
    ) -> Iterator[torch.Tensor]:
        """The coarse latent F `(1, C, n, h, w)`, one VQ window at a time: the AR's token frames
        (drawn here unless `codes` are given) through the fine VQ-VAE; when continuing a video,
        its reference frames' own codes first, which are also the AR's history."""
        history = None
        if job.init is not None:
            history = list(self.vq.encode(job.init)[0])  # (h, w) each
            yield self.vq.decode_codes(torch.stack(history)[None], num_frames=job.init.shape[2])
        if codes is None:
            codes = self.draw_codes(job.live, job.num_frames, ar_sampling, job.seed, history)
        codes = counted(codes, times, stop)
        chunks = coarse_latents(codes, self.vq, self.ar.config.code_window, history=history)
        yield from timed(chunks, times, "ar")

    def _latents(self, job: Job, conditions, times, bars) -> Iterator[torch.Tensor]:
        """Latent frames `(1, C, n, h, w)` for the VAE: the reference being continued (if any),
        then the new frames of each DiT segment in turn."""
        s, r = self.config.segment_frames, self.config.reference_frames
        shape = (1, self.dit.config.in_channels, s)
        shape += (job.height // self.vae.spatial_ratio, job.width // self.vae.spatial_ratio)
        generator = torch.Generator().manual_seed(job.seed)
        # The coarse latent frames of the current segment: segments overlap by r frames, so each
        # new segment appends its new frames and the deque drops the oldest.
        window: deque[torch.Tensor] = deque(maxlen=s)
        previous = job.init
        if previous is not None:
            yield previous  # decoded for the causal context; its frames are not returned
        last = -1
        for k in range(job.segments):
            for _ in range(0 if conditions is None else s if k == 0 else s - r):
                window.append(next(conditions))
            condition = None if conditions is None else torch.cat(list(window), dim=2)
            if conditions is None:  # no AR: a directed prompt holds from this segment's frames on
                job.live.take(last + 1)
            started = time.perf_counter()
            last = self.vae.video_frames(k * (s - r) + s) - 1  # the segment's last video frame
            if job.init is not None:  # counted from the first new frame
                last -= self.vae.video_frames(r)
            text = self.text_encoder.encode([whole_scenes(job.live.timeline).prompt_at(last)])
            noise = torch.randn(shape, generator=generator)
            reference = torch.zeros_like(noise)
            frame_mask = torch.zeros(1, s, dtype=torch.bool)
            if previous is not None:
                reference[:, :, :r] = previous[:, :, -r:]
                frame_mask[:, :r] = True
            velocity = guided(job.dit, job.sampling.guidance_scale, condition=condition)
            steps = job.sampling.num_inference_steps
            x = sample(
                velocity,
                noise,
                steps,
                text.states,
                text.mask,
                reference,
                frame_mask,
                self.scheduler,
                start=condition,
                strength=job.sampling.strength,
            )
            times.dit += time.perf_counter() - started
            times.segments += 1
            bars.segments.update(1)
            yield x if previous is None else x[:, :, r:]
            previous = x

    def __call__(
        self,
        prompt: str | None = None,
        *,
        timeline: Timeline | LiveTimeline | list[tuple[int, str]] | None = None,
        num_frames: int = 600,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 5,
        guidance_scale: float | None = None,
        mode: str = "arlon",
        strength: float | None = None,
        ar_sampling: ARSampling = ARSampling(),
        generator: torch.Generator | int | None = None,
        output_type: str = "np",
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
        stream = self.stream(
            prompt,
            timeline=timeline,
            num_frames=num_frames,
            height=height,
            width=width,
            sampling=DiTSampling(
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                mode=mode,
                strength=strength,
            ),
            ar_sampling=ar_sampling,
            seed=seed or 0,
            init_video=init_video,
            progress=progress,
        )
        frames = []
        for i, frame in enumerate(stream):
            if callback is not None:
                callback(i, frame)
            frames.append(frame)
        if output_type == "pil":
            from PIL import Image  # optional: only this output type needs it

            return ARLONPipelineOutput(frames=[[Image.fromarray(f) for f in frames]])
        return ARLONPipelineOutput(frames=np.stack(frames)[None])


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

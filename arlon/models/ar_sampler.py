"""Generation with the AR transformer: token frames streamed out for a timeline of prompts.

    sampler = ARSampler(ar, text_encoder, ARSampling(top_k=100), seed=0)
    for t, frame in enumerate(sampler.frames(Timeline.of("a red circle moves right"), 150)):
        ...                                   # frame: (h, w) long codes of token frame t

The context holds the prompt's prefix and at most `max_frames - 1` earlier token frames: when the
next frame would not fit, the oldest frames drop out and the KV cache is refilled from the kept
ones (the prefix's keys and values stay: they depend on nothing after them), so memory is the same
for 10 frames or 10,000. With `ARSampling(window="slide")` the kept frames' keys and values move
up instead (`ARTransformer.slide_cache`): no forward, but they keep what they saw of the dropped
frames, which a model trained on windows never saw. When the timeline switches prompt, the new
prompt's states become the prefix and the recent frames are kept as history (refilled under the
new prefix), which is what training on windows that cross a caption change taught the model.

Many videos can be drawn at once (`seed=[...]` and `batch_frames`, a timeline per seed): each video
has its own generator, so it gets the codes it would get alone; on this CPU a batch of 25 costs
about 10 times one video, not 25. Classifier-free guidance runs the prompts and the null prompt as
one batch and mixes their logits, `null + scale * (prompt - null)`; the pipeline and the CLI
default to `GUIDANCE_SCALE`, the best scale measured on shapes-tiny (docs/RESULTS.md). Timelines
here count token frames, not video frames (`arlon.pipeline.coarse.read_tokens` converts); the
sampler asks each for the prompt that starts at every token frame as it comes to it (`switch_at`),
so a timeline that changes while the codes stream (`arlon.pipeline.coarse.LiveTokens`) directs
them live.
Within a token frame, codes are drawn by Jacobi decoding (`ARSampler._draw_frame`): one forward
checks `lookahead` guessed codes at once (the frame before's, then its own draws) and keeps those
one-by-one decoding would have drawn, so the AR reads its weights for several codes at a time.
With the cache, each step runs through `ARDecoder`, the model's arithmetic in fewer operations;
`fast=False` runs the model's own forward (the reference the fast path is checked against: bitwise
the same logits), `use_cache=False` recomputes the whole context for every token (slow, there to
check the cache). In float32 all three give the same codes for the same seed at any lookahead (up
to rounding too small to change a draw). In bfloat16 (`ARSampling.precision`; "auto" where the CPU
has bf16 matmuls of its own) the two cached paths do, at any lookahead, bitwise: they attend in
plain matmuls (`cached_attention`), so a position's logits do not depend on how many come with it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from arlon.errors import ArlonError
from arlon.models.ar_decoder import ARDecoder
from arlon.models.ar_transformer import ARTransformer, KVCache
from arlon.models.fsq import FSQHead, fsq_codes
from arlon.timeline import Timeline
from arlon.utils import native_bf16

# Classifier-free guidance on the AR by default: on shapes-tiny, scale 3 beats 1, 2 and 5 on every
# prompt metric and triples the prompt switches that take hold, for 1.1x (one thread) to 1.6x (a
# batch of videos) the AR's time.
GUIDANCE_SCALE = 3.0
# The AR's sampling temperature where neither a call nor its pipeline (`ar_temperature`) gives one.
TEMPERATURE = 1.0
# Codes guessed and checked per forward (see `ARSampler._draw_frame`): at batch 2 a forward of 8
# positions costs about 1.4 times one and confirms about 3 codes; 8 is as fast as 16 on the
# embedded AR (2.32 against 2.37 ms per code) and 1.2 times faster on the recipe's coarse AR.
LOOKAHEAD = 8
# The precisions the AR can draw in (`ARSampling.precision`).
PRECISIONS = ("auto", "float32", "bfloat16")
# What a full context does with the frames it keeps (`ARSampling.window`).
WINDOWS = ("refill", "slide")


@dataclass(frozen=True)
class ARSampling:
    """How the AR draws codes: temperature (0: greedy; None: the model's, a pipeline's
    `ar_temperature`, `TEMPERATURE` for an AR alone), top-k (0: off), top-p in (0, 1] and
    classifier-free guidance on the text (1: none, and faster); the window stride (token frames a
    full context drops at once: its cache is refilled less often, with less history at times); what
    a full context does with the frames it keeps ("refill": recomputes them, as the model saw
    windows in training, "slide": keeps their keys and values, which saw the dropped frames, and
    moves them up, with no forward); the precision of its arithmetic ("float32", "bfloat16", or
    "auto": `ar_dtype`), whose codes are its own; and how fast, not which codes: the lookahead
    (codes guessed and checked per forward, shared among a batch's videos; 1: one per forward)."""

    temperature: float | None = None
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = GUIDANCE_SCALE
    window_stride: int = 1
    window: str = "refill"
    precision: str = "auto"
    lookahead: int = LOOKAHEAD

    def __post_init__(self):
        if self.temperature is not None and not self.temperature >= 0:
            raise ArlonError(f"the AR temperature must be >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ArlonError(f"the AR top-k must be an integer >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ArlonError(f"the AR top-p must lie in (0, 1], got {self.top_p}")
        if not self.guidance_scale >= 0:
            raise ArlonError(f"the AR guidance scale must be >= 0, got {self.guidance_scale}")
        stride = self.window_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ArlonError(f"the AR's window stride must be a positive integer, got {stride!r}")
        for name, choices in [("window", WINDOWS), ("precision", PRECISIONS)]:
            if getattr(self, name) not in choices:
                raise ArlonError(
                    f"the AR's {name} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        ahead = self.lookahead
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 1:
            raise ArlonError(f"the AR's lookahead must be a positive integer, got {ahead!r}")


def precision_name(model: ARTransformer, precision: str) -> str:
    """The dtype `ar_dtype` gives, by name ("bfloat16", "float32")."""
    return str(ar_dtype(model, precision)).removeprefix("torch.")


def ar_dtype(model: ARTransformer, precision: str) -> torch.dtype:
    """The dtype an AR draws in for `ARSampling.precision`: "auto" is bfloat16 for a float32 AR on a
    CPU with its own bf16 matmuls (`native_bf16`; the AR's step reads half the bytes: 1.2-1.4x
    faster on an AMD EPYC, the same objects drawn), else the AR's own dtype."""
    own = model.bos.dtype
    if precision != "auto":
        return getattr(torch, precision)
    on_cpu = model.bos.device.type == "cpu"
    return torch.bfloat16 if own == torch.float32 and on_cpu and native_bf16() else own


@runtime_checkable
class Prompts(Protocol):
    """What the sampler reads of a timeline, in token frames: the prompt that starts at frame t
    (at 0, the first prompt), None where the prompt does not change. `Timeline` is one."""

    def switch_at(self, frame: int) -> str | None: ...


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """One index per row of `logits` `(B, K)` -> `(B,)` long. Temperature 0 is greedy; top-k (0:
    off) keeps the k likeliest; top-p keeps the smallest set of likeliest codes whose probability
    reaches p (Holtzman et al. 2019, arxiv.org/abs/1904.09751). Drawn by inverting the cumulative
    distribution with one uniform number in [0, 1) per row: `uniform` `(B,)`, or from `generator`."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = logits.softmax(-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a code when the likelier ones already reach top_p (the likeliest is always kept)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0))
        probs = probs / probs.sum(-1, keepdim=True)
    if uniform is None:
        uniform = torch.rand(probs.shape[0], generator=generator, device=probs.device)
    return _invert_cdf(probs, 1 - uniform)[0]  # 1 - u lies in (0, 1]


def _invert_cdf(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where `target` `(B,)` in (0, 1] falls in each row's cumulative distribution of `probs`
    `(B, K)` (rows need not sum to 1): the index `(B,)` whose span holds it, never one of
    probability 0, and how far into that span it falls `(B,)`, in (0, 1]."""
    cdf = probs.cumsum(-1)
    point = target[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, point).clamp_max_(probs.shape[-1] - 1)
    # the span's start from the shifted sum, not cdf - p: that can round past the point
    below = F.pad(cdf, (1, 0)).gather(-1, index)
    within = (point - below) / (cdf.gather(-1, index) - below)
    return index.squeeze(-1), within.clamp_(0, 1).squeeze(-1)


def sample_levels(
    logits: torch.Tensor,
    levels: list[int],
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """One code per row of a by-level head's logits `(B, sum(levels))` -> `(B,)` long: the code that
    `sample_logits` draws with the same uniform number from the codebook's logits (each code's the
    sum of its levels', `FSQHead`), drawn from sum(levels) numbers instead of prod(levels).

    The codebook's distribution is the product of the dimensions', and in the codes' order the last
    dimension is the most significant (`fsq_levels`); so inverting its cumulative distribution picks
    the last dimension's level by inverting that dimension's, then the next one's with the uniform
    number rescaled to the span of the level picked, and so on (up to float rounding)."""
    per_level = logits.float().split(list(levels), dim=-1)
    if temperature == 0:  # the likeliest code: every dimension's likeliest level
        picked = [logit.argmax(-1) for logit in per_level]
    else:
        per_level = [logit / temperature for logit in per_level]
        if uniform is None:
            uniform = torch.rand(logits.shape[0], generator=generator, device=logits.device)
        target = 1 - uniform  # in (0, 1]: where the draw falls in what is left
        picked = [None] * len(levels)
        for d in reversed(range(len(levels))):
            picked[d], target = _invert_cdf(per_level[d].softmax(-1), target)
    return fsq_codes(torch.stack(picked, dim=-1), levels)


class ARSampler:
    """Streams codes from an `ARTransformer` for a prompt timeline (in token frames), or for a batch
    of timelines at once (one seed each: `seed=[...]`, and `batch_frames`).

    Three paths draw the same codes for the same seed: the fast one (the default: `ARDecoder`), the
    model's own forward with the KV cache (`fast=False`, the reference: bitwise the same logits),
    and no cache at all (`use_cache=False`)."""

    def __init__(
        self,
        model: ARTransformer,
        text_encoder,
        sampling: ARSampling = ARSampling(),
        seed: int | Sequence[int] = 0,
        use_cache: bool = True,
        fast: bool = True,
    ):
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if not seeds:
            raise ArlonError("at least one seed is needed")
        if sampling.temperature is None:
            sampling = replace(sampling, temperature=TEMPERATURE)
        if sampling.window_stride >= model.config.max_frames:
            raise ArlonError(
                f"the AR's window stride must be below its {model.config.max_frames} token frames, "
                f"got {sampling.window_stride}"
            )
        if sampling.window == "slide" and not use_cache:
            raise ArlonError("a sliding window keeps keys and values: it needs the KV cache")
        dtype = ar_dtype(model, sampling.precision)
        if model.bos.dtype != dtype:  # (`nn.Module.to`: diffusers' own warns of every cast)
            model = torch.nn.Module.to(copy.deepcopy(model), dtype)
        self.model = model.eval()
        self.text_encoder = text_encoder
        self.sampling = sampling
        self.use_cache = use_cache
        device = model.bos.device
        # one generator per video, so a video's codes depend on its seed, not on its batch
        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.videos = len(seeds)
        # under guidance the rows are the videos' prompts, then as many null prompts
        self.batch = self.videos * (1 if sampling.guidance_scale == 1 else 2)
        self.cache: KVCache | None = model.new_cache(self.batch) if use_cache else None
        self.decoder = ARDecoder(model) if use_cache and fast else None
        self.prefix_logits: torch.Tensor | None = None  # the first code's, after the prefix alone
        # A by-level head's codes are drawn by level (`sample_levels`: its sum(levels) logits, not
        # prod(levels)), unless top-k or top-p must rank the whole codebook.
        head = model.head
        by_level = isinstance(head, FSQHead) and head.joint is None
        self.levels = (
            head.levels if by_level and sampling.top_k == 0 and sampling.top_p == 1 else None
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _prefix(self, prompts: list[str]) -> torch.Tensor:
        """`(len(prompts), P + 1, C)`: the prompts' prefixes."""
        out = self.text_encoder.encode(prompts)
        device = self.model.bos.device
        return self.model.embed_prefix(out.states.to(device), out.mask.to(device))

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-video `(videos, ...)` -> per-row `(batch, ...)` (the null rows see the same codes)."""
        return x.repeat(self.batch // self.videos, *[1] * (x.ndim - 1))

    def _next(self, logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Logits `(batch, [N,] K)` -> each video's codes `(videos, [N])`, drawn with `uniform`
        `(videos, [N])`: a code is a function of its logits and its uniform number alone."""
        if self.batch > self.videos:
            cond, null = logits[: self.videos], logits[self.videos :]
            logits = null + self.sampling.guidance_scale * (cond - null)
        s = self.sampling
        rows, uniform_rows = logits.flatten(0, -2), uniform.flatten()
        if self.levels is not None:
            codes = sample_levels(rows, self.levels, s.temperature, uniform=uniform_rows)
        else:
            codes = sample_logits(rows, s.temperature, s.top_k, s.top_p, uniform=uniform_rows)
        return codes.view(uniform.shape)

    def _embed(self, codes: list[torch.Tensor], first_frame: int) -> torch.Tensor:
        """Whole or partial token frames (each `(videos, n)` long) -> `(batch, N, C)`."""
        if not codes:
            return self.model.bos.new_zeros(self.batch, 0, self.model.bos.shape[0])
        return self.model.embed_codes(self._rows(torch.cat(codes, dim=1)), 0, first_frame)

    def _forward(
        self, x: torch.Tensor, every: bool = False, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Embeddings `(B, N, C)` appended to the cache (B: `batch`), or to `cache` (B of its rows)
        -> the last position's logits `(B, K)`, or every position's `(B, N, K)` (K: sum(levels)
        when drawn by level)."""
        by_level, cache = self.levels is not None, self.cache if cache is None else cache
        if self.decoder is not None:
            return self.decoder(x, cache, cache.length, every, by_level)
        return self.model.forward_embeddings(x, cache, cache.length, by_level, last=not every)

    def _draw_frame(
        self, logits: torch.Tensor, uniform: torch.Tensor, t: int, guess: torch.Tensor
    ) -> torch.Tensor:
        """Token frame `t`'s codes `(videos, n)`, from the logits of its first code `(batch, K)`,
        the frame's uniform numbers `(videos, n)` and a guess of its codes `(videos, n)` (the
        frame before's: on the embedded AR a quarter of the cells keep their code). Leaves every
        code but the last in the cache.

        Jacobi decoding under fixed noise: a code is a function of its logits and its uniform
        number, so one forward of `lookahead` codes (the last drawn one, then guesses) gives the
        logits of the next `lookahead`, and each code drawn from them is the code one-by-one
        decoding draws as long as the guesses before it were right. The first wrong guess is
        replaced by its drawn code, which is then exact too; the codes after it become the next
        guesses. So a forward confirms one code at least, and the codes are those drawn one at a
        time (up to float rounding: a forward of many positions may round its logits differently)."""
        n = self.model.tokens_per_frame
        # a batch's rows already fill a forward: its videos share the lookahead
        ahead = max(1, self.sampling.lookahead // self.videos)
        base = self.cache.length
        frame = guess.clone()
        frame[:, 0] = self._next(logits, uniform[:, 0])
        done = 1  # codes known for sure
        while done < n:
            m = min(ahead, n - done)
            self.cache.truncate(base + done - 1)  # drop the keys and values of wrong guesses
            x = self.model.embed_codes(self._rows(frame[:, done - 1 : done + m - 1]), done - 1, t)
            drawn = self._next(self._forward(x, every=True), uniform[:, done : done + m])
            # the guesses confirmed in a row, for every video of the batch
            right = (drawn == frame[:, done : done + m]).all(0).cumprod(0).sum()
            frame[:, done : done + m] = drawn
            done += min(int(right) + 1, m)
        self.cache.truncate(base + n - 1)
        return frame

    def _refill(
        self, prefix: torch.Tensor | None, history: list[torch.Tensor], first: int
    ) -> torch.Tensor:
        """Refill the cache with the prefix and the history frames (the first of them token frame
        `first`) -> the logits of the code that follows them. The prefix's keys and values depend
        on nothing after it, so they stay in the cache from one refill to the next: `prefix` is
        given only when it changed (a third of a full window's positions on shapes-tiny)."""
        if prefix is not None:
            self.cache.truncate(0)
            self.prefix_logits = self._forward(prefix)
        else:
            self.cache.truncate(self.model.prefix_length)
        if not history:
            return self.prefix_logits
        return self._forward(self._embed(history, first))

    def _refill_videos(
        self,
        videos: list[int],
        logits: torch.Tensor,
        prefix: torch.Tensor,
        history: list[torch.Tensor],
        first: int,
    ) -> None:
        """Under a sliding window, refill the rows of `videos` (those whose prompt changed: their
        prompt's and their null prompt's, so that guidance compares states computed alike) with
        their prefix and the history frames, and set those rows of `logits` to the code that
        follows; every other row stays as it slid (a video's codes do not depend on its batch).
        A video's rows are a strided view of the cache: the refill writes into it in place."""
        codes = torch.cat(history, dim=1)  # (videos, N)
        for v in videos:
            rows = slice(v, None, self.videos)  # the video's row and, under guidance, its null's
            part = KVCache(self.cache.keys[:, rows], self.cache.values[:, rows])
            self._forward(prefix[rows], cache=part)
            x = self.model.embed_codes(self._rows(codes[v : v + 1]), 0, first)
            logits[rows] = self._forward(x, cache=part)

    def _first_prefix(self, prompts: list[str]) -> torch.Tensor:
        """Every row's prefix `(batch, P + 1, C)`: the videos' prompts, then (under guidance) the
        null prompt."""
        prefix = self._prefix(prompts)  # (videos, P + 1, C)
        if self.batch > self.videos:
            null = self.model.embed_prefix(None, None, self.videos)
            prefix = torch.cat([prefix, null])  # (batch, P + 1, C)
        return prefix

    # -- generation -------------------------------------------------------------------------------

    def frames(
        self,
        timeline: Timeline | Prompts,
        num_frames: int,
        history: list[torch.Tensor] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Token frames `(h, w)` long, one at a time, for `timeline` `[(start_token_frame, prompt)]`.

        `history`: token frames `(h, w)` that come before frame 0 (a video being continued); the
        last `max_frames - 1` of them are the first context."""
        if self.videos != 1:
            raise ArlonError(f"this sampler has {self.videos} seeds: use batch_frames")
        histories = None if history is None else [history]
        for codes in self.batch_frames([timeline], num_frames, histories):
            yield codes[0]

    @torch.inference_mode()
    def batch_frames(
        self,
        timelines: list[Timeline | Prompts],
        num_frames: int,
        histories: list[list[torch.Tensor]] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Token frames `(videos, h, w)`, one at a time, one timeline (and history, all of the same
        length) per seed. Video i's codes are those `frames` gives for its timeline and seed alone
        (up to float rounding, which batching changes)."""
        if len(timelines) != self.videos:
            raise ArlonError(f"{len(timelines)} timelines for {self.videos} seeds")
        timelines = [t if isinstance(t, Prompts) else Timeline.of(t) for t in timelines]
        if num_frames < 1:
            raise ArlonError(f"num_frames must be >= 1, got {num_frames}")
        model, cfg = self.model, self.model.config
        per_frame = model.tokens_per_frame
        stride, slides = self.sampling.window_stride, self.sampling.window == "slide"
        # the earlier token frames in the context, (videos, h * w) each: at most max_frames - 1
        context: list[torch.Tensor] = []
        if histories is not None:
            if len(histories) != self.videos or len({len(h) for h in histories}) != 1:
                raise ArlonError("one history per video, all of the same length")
            for frames in zip(*histories, strict=True):
                context.append(torch.stack([f.flatten().long() for f in frames]))
            context = context[max(0, len(context) - (cfg.max_frames - 1)) :]
        prefix = self._first_prefix([timeline.switch_at(0) for timeline in timelines])
        for t in range(num_frames):
            # asked frame by frame, not beforehand: a live timeline changes while the codes stream
            switches = [timeline.switch_at(t) if t > 0 else None for timeline in timelines]
            switching = [i for i, prompt in enumerate(switches) if prompt is not None]
            if switching:
                prefix[switching] = self._prefix([switches[i] for i in switching])
            # The context: prefix, earlier frames (the first of them is token frame `first`), and
            # the codes of frame t so far. A full context drops its `stride` oldest frames, and
            # the cache is refilled (every frame at stride 1, `stride` times less often above) or
            # slides; a new prompt refills it (sliding: the rows of the videos that switched).
            full = len(context) == cfg.max_frames
            if full:
                context = context[stride:]
            first = t - len(context)
            if self.use_cache and (t == 0 or (not slides and (switching or full))):
                new_prefix = prefix if t == 0 or switching else None
                logits = self._refill(new_prefix, context, first)
            elif self.use_cache:  # sliding: the last forward gave the frame's first logits
                if full:
                    model.slide_cache(self.cache, stride)
                if switching:
                    self._refill_videos(switching, logits, prefix, context, first)
            # one uniform number per code and video, drawn a frame at a time (on the CPU, the same
            # numbers as one at a time)
            uniform = torch.stack(
                [torch.rand(per_frame, generator=g, device=g.device) for g in self.generators]
            )
            # the last code's keys and values are wasted when the next frame refills the cache
            # (a prompt switch refills it too, but is not known before the next frame)
            refills = t + 1 == num_frames or (len(context) + 1 == cfg.max_frames and not slides)
            if self.use_cache:
                guess = (
                    context[-1] if context else uniform.new_zeros(uniform.shape, dtype=torch.long)
                )
                codes = self._draw_frame(logits, uniform, t, guess)
                if not refills:
                    x = self.model.embed_codes(self._rows(codes[:, -1:]), per_frame - 1, t)
                    logits = self._forward(x)
            else:  # the whole context through the model for every code
                frame: list[torch.Tensor] = []  # (videos, 1) each
                for j in range(per_frame):
                    x = torch.cat([prefix, self._embed([*context, *frame], first)], dim=1)
                    logits = model.forward_embeddings(
                        x, by_level=self.levels is not None, last=True
                    )
                    frame.append(self._next(logits, uniform[:, j])[:, None])
                codes = torch.cat(frame, dim=1)  # (videos, h * w)
            context.append(codes)
            yield codes.view(self.videos, cfg.frame_height, cfg.frame_width)

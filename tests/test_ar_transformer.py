"""The AR transformer and its sampler: cached = uncached, bounded memory, prompt switches, seeds
(codes level by level: test_ar_levels.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TIMELINE, token_frames

from arlon import utils
from arlon.errors import ArlonError
from arlon.models.ar_decoder import ARDecoder
from arlon.models.ar_sampler import WINDOWS, ARSampler, ARSampling
from arlon.models.ar_transformer import ARTransformer, KVCache, ar_transformer, cached_attention
from arlon.models.layers import apply_rope, rope_tables


@pytest.fixture(scope="module", params=["codes", "levels", "levels+joint"])
def model(request):
    """The smoke AR (2x2 token frames, context of 4, code windows of 3), its 64 codes as symbols or
    as the levels of an FSQ codebook (4, 4, 4), predicted by level (with a logit per code or not)."""
    torch.manual_seed(0)
    if request.param == "codes":
        return ar_transformer("smoke").eval()
    return ar_transformer("smoke", code_levels=[4, 4, 4], code_head=request.param).eval()


def generate(
    model,
    text_encoder,
    timeline,
    frames,
    seed=0,
    use_cache=True,
    fast=True,
    history=None,
    **sampling,
):
    # the model's own dtype ("auto" draws a float32 AR in bf16 on a CPU with bf16 matmuls)
    sampling.setdefault("precision", str(model.bos.dtype).removeprefix("torch."))
    sampler = ARSampler(model, text_encoder, ARSampling(**sampling), seed, use_cache, fast)
    return torch.stack(list(sampler.frames(timeline, frames, history)))  # (frames, h, w)


@torch.no_grad()
def test_teacher_forcing_equals_incremental_decoding(model, text_encoder):
    """The training forward and token-by-token decoding with the KV cache give the same logits."""
    text = text_encoder.encode(["a red circle moves right", "a green triangle stays still"])
    x = token_frames()
    full = model(text.states, text.mask, x, first_frame=torch.tensor([0, 7]))  # (B, N, K)
    cache = model.new_cache(2)
    prefix = model.embed_prefix(text.states, text.mask)
    steps = [model.forward_embeddings(prefix, cache)[:, -1]]
    flat = x.flatten(1)
    for i in range(flat.shape[1] - 1):
        emb = model.embed_codes(flat[:, i : i + 1], i, torch.tensor([0, 7]))
        steps.append(model.forward_embeddings(emb, cache, cache.length)[:, -1])
    assert torch.allclose(full, torch.stack(steps, dim=1), atol=1e-5)
    # the first frame is predicted from the prompt alone: the codes after it do not matter
    y = x.clone()
    y[:, 1:] = (y[:, 1:] + 1) % 64
    assert torch.allclose(
        model(text.states, text.mask, y, 0)[:, :4],
        model(text.states, text.mask, x, 0)[:, :4],
        atol=1e-6,
    )


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("continued", [0, 2])
@pytest.mark.parametrize("stride", [1, 3])
def test_cached_generation_equals_uncached(model, text_encoder, guidance, continued, stride):
    history = (
        list(token_frames(1, continued, seed=5)[0]) if continued else None
    )  # a video's last frames
    settings = dict(seed=3, top_k=20, top_p=0.9, guidance_scale=guidance, history=history)
    settings["window_stride"] = stride
    # 11 frames with a context of 4: the window slides, and the prompt switches at frame 5
    cached = generate(model, text_encoder, TIMELINE, 11, **settings)
    uncached = generate(model, text_encoder, TIMELINE, 11, use_cache=False, **settings)
    assert cached.shape == (11, 2, 2) and cached.dtype == torch.long
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    "guidance,stride,window",
    [(1.0, 1, "refill"), (3.0, 1, "refill"), (3.0, 2, "refill"), (3.0, 1, "slide")],
)
def test_the_fast_path_draws_the_reference_codes(model, text_encoder, guidance, stride, window):
    """ARDecoder draws the codes of the model's own forward, through window slides (refilled or
    not), prompt switches, a continued video's history and a batch."""
    settings = ARSampling(
        top_k=20, top_p=0.9, guidance_scale=guidance, window_stride=stride, window=window
    )
    timelines = [TIMELINE, [(0, "a green triangle stays still"), (2, "a red circle moves left")]]
    history = [
        list(token_frames(1, 3, seed=5)[0]),
        list(token_frames(1, 3, seed=6)[0]),
    ]  # 3 frames (2, 2) each
    drawn = []
    for fast in (True, False):
        sampler = ARSampler(model, text_encoder, settings, seed=[3, 4], fast=fast)
        drawn.append(torch.stack(list(sampler.batch_frames(timelines, 12, history))))
    assert drawn[0].shape == (12, 2, 2, 2) and torch.equal(drawn[0], drawn[1])
    alone = ARSampler(model, text_encoder, settings, seed=3, fast=False)
    assert torch.equal(drawn[0][:, 0], torch.stack(list(alone.frames(TIMELINE, 12, history[0]))))


@pytest.mark.parametrize(
    "lookahead,window", [(4, "refill"), (6, "refill"), (16, "refill"), (6, "slide")]
)
def test_jacobi_decoding_draws_the_codes_of_one_by_one_decoding(
    model, text_encoder, lookahead, window
):
    """Codes guessed and checked `lookahead` at a time (shared by the batch's 2 videos: 2, 3 and 8
    each) are the codes drawn one per forward, on both paths, through window slides, prompt
    switches and histories."""
    timelines = [TIMELINE, [(0, "a green triangle stays still"), (2, "a red circle moves left")]]
    history = [list(token_frames(1, 3, seed=5)[0]), list(token_frames(1, 3, seed=6)[0])]
    drawn = {}
    for ahead, fast in [(1, False), (lookahead, False), (lookahead, True), (2 * lookahead, True)]:
        settings = ARSampling(top_k=20, window_stride=2, window=window, lookahead=ahead)
        sampler = ARSampler(model, text_encoder, settings, seed=[3, 4], fast=fast)
        drawn[ahead, fast] = torch.stack(list(sampler.batch_frames(timelines, 9, history)))
    for key, frames in drawn.items():
        assert torch.equal(frames, drawn[1, False]), key


def test_jacobi_decoding_confirms_a_frame_in_two_forwards_when_codes_do_not_depend_on_codes(
    text_encoder, monkeypatch
):
    """With the codes' embeddings at zero, a code's logits do not depend on the codes before it:
    the first forward's draws are all right, the second confirms them, whatever the frame's size
    (one by one: a forward per code)."""
    torch.manual_seed(0)
    model = ar_transformer("smoke").eval()
    with torch.no_grad():
        model.code_embedder.weight.zero_()
    forwards = []
    original = ARSampler._forward

    def counted(self, x, every=False):
        forwards.append(x.shape[1])
        return original(self, x, every)

    monkeypatch.setattr(ARSampler, "_forward", counted)
    drawn, count = {}, {}
    for lookahead in (1, 3):
        forwards.clear()
        drawn[lookahead] = generate(model, text_encoder, TIMELINE[:1], 3, lookahead=lookahead)
        count[lookahead] = len(forwards)
    # the prefix, then per frame of 4 codes: the 3 after the first, one by one or in at most two
    # forwards, and (except after the last frame) the last code, for the next frame's first
    assert count[1] == 1 + 3 * 3 + 2
    assert count[3] <= 1 + 3 * 2 + 2
    assert torch.equal(drawn[1], drawn[3])


# Without the CPU's own bf16 matmuls (AVX512-BF16 or AMX), oneDNN emulates them in kernels whose
# rounding changes with the number of rows (measured with ONEDNN_MAX_CPU_ISA=AVX512_CORE: 64% of a
# coarse AR's codes differed), so there a forward of many positions is no longer bitwise one of one.
native_bf16 = pytest.mark.skipif(
    not utils.native_bf16(), reason="bf16 row-exactness needs the CPU's own bf16 matmuls"
)


@native_bf16
def test_the_fast_path_runs_an_ar_in_bfloat16_as_the_reference_does(text_encoder):
    """An AR in bf16: the fast path's rotary tables take its dtype (before, sin stayed float32 and
    attention refused the mixed dtypes), and its Jacobi decoding draws the codes of the reference
    path one code per forward."""
    torch.manual_seed(0)
    model = ar_transformer("smoke").eval().to(torch.bfloat16)
    drawn = [
        generate(model, text_encoder, TIMELINE, 7, fast=fast, lookahead=lookahead)
        for fast, lookahead in [(True, 1), (False, 1), (True, 16)]
    ]
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(drawn[0], drawn[2])


def test_a_sampler_in_bfloat16_draws_with_a_bfloat16_copy_of_the_model(text_encoder):
    """`ARSampling(precision="bfloat16")` on a float32 AR: the codes of the AR cast to bf16, the
    caller's AR left in float32."""
    torch.manual_seed(0)
    model = ar_transformer("smoke").eval()
    drawn = generate(model, text_encoder, TIMELINE, 7, precision="bfloat16")
    assert model.bos.dtype == torch.float32
    cast = ar_transformer("smoke").eval()
    cast.load_state_dict(model.state_dict())
    assert torch.equal(drawn, generate(cast.to(torch.bfloat16), text_encoder, TIMELINE, 7))
    assert not torch.equal(drawn, generate(model, text_encoder, TIMELINE, 7))


@native_bf16
@pytest.mark.parametrize("fast", [True, False])
def test_in_bfloat16_a_forward_of_many_positions_gives_each_the_logits_of_one(fast):
    """What makes Jacobi decoding exact in bf16: a position's logits do not depend on how many
    positions come with it. On the coarse AR's context (64 text tokens, 9 token frames of 4x4),
    in 3 layers, `scaled_dot_product_attention` broke that in all 6 trials (an ulp of bf16 here
    and there, enough to flip a draw); attention over the whole cache in plain matmuls does not."""
    torch.manual_seed(0)
    shape = dict(max_text_tokens=64, max_frames=9, frame_height=4, frame_width=4, code_window=9)
    model = ar_transformer("smoke", hidden_size=256, num_heads=4, num_layers=3, **shape)
    model = model.eval().to(torch.bfloat16)
    decoder = ARDecoder(model)
    forward = (lambda *a: decoder(*a, every=True)) if fast else model.forward_embeddings
    end = model.context_length  # the last 8 positions together, then one by one
    same = []
    for trial in range(6):
        x = torch.randn(2, end, 256, generator=torch.Generator().manual_seed(trial)).bfloat16()
        cache = model.new_cache(2)
        with torch.inference_mode():
            forward(x[:, : end - 8], cache, 0)
            together = forward(x[:, end - 8 :], cache, end - 8)
            cache.truncate(end - 8)
            alone = [forward(x[:, i : i + 1], cache, i) for i in range(end - 8, end)]
        same.append(torch.equal(together, torch.cat(alone, 1)))
    assert all(same)


def test_a_wider_window_stride_refills_the_cache_less_often(model, text_encoder, monkeypatch):
    """A full context (4 token frames on smoke) drops its `stride` oldest frames at once: at
    stride 3 the cache is refilled every third frame from one kept frame, not every frame from
    three. Until the first refill, the codes are the same."""
    refills = []
    original = ARSampler._refill

    def counted(self, prefix, history, first):
        refills.append(len(history))
        return original(self, prefix, history, first)

    monkeypatch.setattr(ARSampler, "_refill", counted)
    drawn = {}
    for stride in (1, 3):
        refills.clear()
        drawn[stride] = generate(model, text_encoder, TIMELINE[:1], 12, window_stride=stride)
        assert refills == [0, *[4 - stride] * (8 if stride == 1 else 3)]  # t = 0, then when full
    assert torch.equal(drawn[1][:4], drawn[3][:4])
    for stride, message in [(4, "below its 4 token frames"), (0, "positive integer")]:
        with pytest.raises(ArlonError, match=message):
            generate(model, text_encoder, TIMELINE, 2, window_stride=stride)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_sliding_window_moves_the_keys_and_values_without_recomputing_them(model, stride):
    """Sliding drops the oldest frames and moves the later ones up: at the first layer (whose keys
    and values depend on a position's embedding alone) to the keys and values a refill computes
    there, the keys turned to their new positions; deeper, they keep what they saw of the dropped
    frames, and the prefix stays as it was."""
    torch.manual_seed(0)
    p, n, frames = model.prefix_length, model.tokens_per_frame, model.config.max_frames
    x = torch.randn(2, p + frames * n, model.config.hidden_size)
    slid, refilled = model.new_cache(2), model.new_cache(2)
    with torch.no_grad():
        model.forward_embeddings(x, slid)
        model.forward_embeddings(x[:, :p], refilled)
        model.forward_embeddings(x[:, p + stride * n :], refilled, p)
        prefix = slid.keys[:, :, :, :p].clone()
        model.slide_cache(slid, stride)
    assert slid.length == refilled.length == p + (frames - stride) * n
    kept = slice(0, slid.length)
    for a, b in [(slid.keys, refilled.keys), (slid.values, refilled.values)]:
        apart = (a[:, :, :, kept] - b[:, :, :, kept]).abs().amax((1, 2, 3, 4))  # per layer
        assert apart[0] < 1e-6 and apart[-1] > 1e-4, apart  # rounding, then what the window saw
    assert torch.equal(slid.keys[:, :, :, :p], prefix)
    with pytest.raises(ArlonError, match="cannot drop"):
        model.slide_cache(slid, frames)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_slide_turns_the_kept_keys_back_by_the_dropped_positions(dtype):
    """`KVCache.slide` moves the kept positions up, their keys turned back by as many rotary
    positions in float32 (each pair (i, i + 4) of 8 rotated: `x * cos + cat(-x2, x1) * sin`) and
    stored in the cache's dtype, bitwise, their values as they were; the positions before the
    dropped ones stay."""
    generator = torch.Generator().manual_seed(0)
    keys, values = (torch.randn(2, 2, 3, 20, 8, generator=generator).to(dtype) for _ in range(2))
    cache = KVCache(keys.clone(), values.clone(), 17)
    cos, sin = rope_tables(torch.tensor([-4]), 8, 10000.0)
    cache.slide(5, 4, cos[0], sin[0])  # drop positions 5 to 8: 9 to 16 move to 5 to 12
    assert cache.length == 13
    kept = keys[:, :, :, 9:17].float()
    rotated = torch.cat([-kept[..., 4:], kept[..., :4]], dim=-1)
    turned = (kept * cos[0] + rotated * sin[0]).to(dtype)
    assert torch.equal(apply_rope(kept, cos[0], sin[0]).to(dtype), turned)
    assert torch.equal(cache.keys[:, :, :, 5:13], turned)
    assert torch.equal(cache.values[:, :, :, 5:13], values[:, :, :, 9:17])
    assert torch.equal(cache.keys[:, :, :, :5], keys[:, :, :, :5])
    assert torch.equal(cache.values[:, :, :, :5], values[:, :, :, :5])


def test_a_sliding_window_refills_the_cache_only_for_a_new_prompt(model, text_encoder, monkeypatch):
    """With `window="slide"` the cache is filled at the first frame and at a prompt switch only;
    the codes are the refilling window's until its first slide, and a sampler without a cache is
    refused."""
    refills = []
    whole, some = ARSampler._refill, ARSampler._refill_videos

    def counted(self, prefix, history, first):
        refills.append(len(history))
        return whole(self, prefix, history, first)

    def counted_videos(self, videos, logits, prefix, history, first):
        refills.append((videos, len(history)))
        return some(self, videos, logits, prefix, history, first)

    monkeypatch.setattr(ARSampler, "_refill", counted)
    monkeypatch.setattr(ARSampler, "_refill_videos", counted_videos)
    drawn = {}
    for window in ("refill", "slide"):
        refills.clear()
        drawn[window] = generate(model, text_encoder, TIMELINE, 12, window=window)
        # t = 0, then every full frame (4 on), or at the switch at frame 5 only (3 frames kept)
        assert refills == ([0, *[3] * 8] if window == "refill" else [0, ([0], 3)])
    assert torch.equal(drawn["refill"][:4], drawn["slide"][:4])
    # a switch before the first slide: the switching video's rows (prompt and null) refilled in
    # place of the whole cache give the refill's codes until the window first slides
    early = [(0, "a red circle moves right"), (2, "a blue square moves up")]
    refilled, slid = (generate(model, text_encoder, early, 6, window=w) for w in WINDOWS)
    assert torch.equal(refilled[:4], slid[:4])
    with pytest.raises(ArlonError, match="needs the KV cache"):
        generate(model, text_encoder, TIMELINE, 2, window="slide", use_cache=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_attention_sees_each_querys_keys_up_to_its_own_position(dtype):
    """Query i, at position start + i, attends over keys 0..start + i: not the next one, nor the
    cache's stale positions beyond (the bf16 path reads them all, masked)."""
    torch.manual_seed(0)
    b, h, d, capacity, start, n = 2, 2, 16, 12, 5, 4
    cache = KVCache(*(torch.randn(1, b, h, capacity, d, dtype=dtype) for _ in range(2)))
    cache.length = start + n
    q = torch.randn(b, h, n, d, dtype=dtype)
    seen = torch.ones(n, start + n, dtype=torch.bool).tril(start)
    keys, values = (t[0, :, :, : start + n].float() for t in (cache.keys, cache.values))
    expected = F.scaled_dot_product_attention(q.float(), keys, values, seen)
    got = cached_attention(q, cache, 0, start).float()
    assert torch.allclose(got, expected, atol=3e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_sliding_windows_switch_refills_the_videos_rows_as_a_refill_would(
    model, text_encoder, guidance, monkeypatch
):
    """At a switch after the window has slid, the switching video's rows (its prompt's and, under
    guidance, its null prompt's) hold what a whole refill computes: keys, values and logits."""
    checked = []
    original = ARSampler._refill_videos

    def check(self, videos, logits, prefix, history, first):
        original(self, videos, logits, prefix, history, first)
        twin = copy.copy(self)
        twin.cache = self.model.new_cache(self.batch)
        expected = twin._refill(prefix, history, first)
        n = self.cache.length
        checked.append(
            twin.cache.length == n
            and torch.equal(self.cache.keys[:, :, :, :n], twin.cache.keys[:, :, :, :n])
            and torch.equal(self.cache.values[:, :, :, :n], twin.cache.values[:, :, :, :n])
            and torch.equal(logits, expected)
        )

    monkeypatch.setattr(ARSampler, "_refill_videos", check)
    # the window first slides at frame 4; the prompt switches at 5
    generate(model, text_encoder, TIMELINE, 7, window="slide", guidance_scale=guidance)
    assert checked == [True]


@pytest.mark.parametrize("head_dim", [16, 24])
def test_the_fast_path_computes_the_models_logits_bitwise(text_encoder, head_dim):
    """Not close: equal, so that the fast path draws the reference's codes over any length (a
    rounding difference would flip a draw sooner or later, and every code after it)."""
    torch.manual_seed(0)
    model = ar_transformer("smoke", hidden_size=2 * head_dim, num_heads=2).eval()
    text = text_encoder.encode(["a red circle moves right", "a green triangle stays still"])
    x = torch.cat(
        [
            model.embed_prefix(text.states, text.mask),
            model.embed_codes(token_frames()[:, :3].flatten(1), 0, 0),
        ],
        1,
    )
    decoder, reference, fast = ARDecoder(model), model.new_cache(2), model.new_cache(2)
    with torch.inference_mode():
        logits = [(model.forward_embeddings(x, reference, last=True), decoder(x, fast, 0))]
        for code in token_frames(2, 1, seed=9).flatten(1).T:  # then one code at a time
            y = model.embed_codes(code[:, None], 0, 3)
            logits.append(
                (
                    model.forward_embeddings(y, reference, reference.length, last=True),
                    decoder(y, fast, fast.length),
                )
            )
    assert all(torch.equal(a, b) for a, b in logits) and len(logits) == 5
    assert torch.equal(reference.keys, fast.keys) and torch.equal(reference.values, fast.values)


def test_both_forwards_refuse_positions_past_the_context_or_off_the_cache(model):
    decoder, end, width = ARDecoder(model), model.context_length, model.config.hidden_size
    for forward in (model.forward_embeddings, decoder):
        cache = model.new_cache(1)
        with torch.inference_mode():
            forward(torch.zeros(1, end - 1, width), cache, 0)
            with pytest.raises(ArlonError, match=f"holds {end - 1} positions, not 3"):
                forward(torch.zeros(1, 1, width), cache, 3)
            with pytest.raises(
                ArlonError, match=f"{end + 1} positions exceed the context of {end}"
            ):
                forward(torch.zeros(1, 2, width), cache, end - 1)


def test_sampling_is_deterministic_per_seed(model, text_encoder):
    a = generate(model, text_encoder, TIMELINE, 8, seed=1)
    assert torch.equal(a, generate(model, text_encoder, TIMELINE, 8, seed=1))
    assert not torch.equal(a, generate(model, text_encoder, TIMELINE, 8, seed=2))
    assert a.min() >= 0 and a.max() < model.codebook_size


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_batch_gives_each_video_its_own_seeds_codes(model, text_encoder, guidance):
    """Videos sampled together (different timelines, switches at different frames) get the codes
    each would get alone with its seed."""
    timelines = [TIMELINE, [(0, "a green triangle stays still"), (2, "a red circle moves left")]]
    settings = dict(top_k=20, guidance_scale=guidance, precision="float32")
    sampler = ARSampler(model, text_encoder, ARSampling(**settings), seed=[3, 4])
    batch = torch.stack(list(sampler.batch_frames(timelines, 9)), dim=1)  # (videos, frames, h, w)
    for video, timeline, seed in zip(batch, timelines, [3, 4], strict=True):
        assert torch.equal(video, generate(model, text_encoder, timeline, 9, seed=seed, **settings))
    with pytest.raises(ArlonError, match="3 timelines for 2 seeds"):
        next(sampler.batch_frames([TIMELINE] * 3, 9))
    with pytest.raises(ArlonError, match="use batch_frames"):
        next(sampler.frames(TIMELINE, 9))


def test_the_window_slides_in_constant_memory(model, text_encoder):
    sampler = ARSampler(model, text_encoder, seed=0)
    cache = sampler.cache
    storage = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.shape)
    lengths = []
    for _ in sampler.frames([(0, "a red circle")], 40):
        lengths.append(cache.length)
    # never more than the prefix and max_frames token frames, in the buffers allocated at the start
    assert max(lengths) <= cache.keys.shape[3] == model.context_length
    assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.keys.shape) == storage
    # from frame 3 on, the context is full: the prefix, 3 earlier frames and the new one but its
    # last code (whose keys and values no code would read: the next frame refills the cache)
    assert lengths[3:] == [model.context_length - 1] * 37


def test_prompt_switch_changes_the_prefix_and_keeps_the_history(model, text_encoder, monkeypatch):
    refills = []
    forward = ARTransformer.forward_embeddings

    def spy(self, x, cache=None, start=0, by_level=False, last=False):
        if x.shape[1] > 1:
            refills.append((start, x.clone()))
        return forward(self, x, cache, start, by_level, last)

    monkeypatch.setattr(ARTransformer, "forward_embeddings", spy)
    timeline = [(0, "a red circle"), (3, "a blue square")]
    # the reference path: the spy watches the model's forward, which the fast path does not call;
    # one code per forward, so that every forward of many positions is a refill
    frames = generate(model, text_encoder, timeline, 10, fast=False, guidance_scale=1, lookahead=1)
    with torch.no_grad():
        old, new = (
            model.embed_prefix(text.states, text.mask)
            for text in map(text_encoder.encode, (["a red circle"], ["a blue square"]))
        )
        history = model.embed_codes(frames[:3].flatten()[None], 0, 0)
    p = model.prefix_length
    # the prefix is computed once per prompt, at frame 0 and at the switch at frame 3; the refills
    # of a full window (every frame after the switch) keep its keys and values
    prefixes = [x for start, x in refills if start == 0]
    assert len(prefixes) == 2 and all(x.shape[1] == p for x in prefixes)
    assert torch.allclose(prefixes[0], old)
    assert torch.allclose(prefixes[1], new) and not torch.allclose(prefixes[1], old)
    windows = [x for start, x in refills if start == p]
    assert len(windows) == 1 + 6 and all(x.shape[1] == 3 * 4 for x in windows)
    assert torch.allclose(windows[0], history)  # the three frames generated under the old prompt


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "ar")
    loaded = ARTransformer.from_pretrained(tmp_path / "ar").eval()
    x = token_frames()
    with torch.no_grad():
        assert torch.equal(loaded(None, None, x), model(None, None, x))


def test_dropout_acts_in_training_only(model, text_encoder):
    """A model trained with dropout generates as the same weights without it, on both paths."""
    levels = {k: model.config[k] for k in ("code_levels", "code_head")}
    dropped = ar_transformer("smoke", dropout=0.5, **levels)
    dropped.load_state_dict(model.state_dict())
    x = token_frames()
    with torch.no_grad():
        assert torch.equal(dropped.eval()(None, None, x), model(None, None, x))
        dropped.train()
        assert not torch.equal(dropped(None, None, x), dropped(None, None, x))
    dropped.eval()
    for fast in (True, False):
        assert torch.equal(
            generate(dropped, text_encoder, TIMELINE, 6, fast=fast),
            generate(model, text_encoder, TIMELINE, 6, fast=fast),
        )
    with pytest.raises(ArlonError, match="dropout must lie in"):
        ar_transformer("smoke", dropout=1.0)


def test_presets_build():
    with torch.device("meta"):
        paper = ar_transformer("opensora-1.2")
    params = sum(p.numel() for p in paper.parameters())
    assert 0.35e9 < params < 0.45e9
    tiny = ar_transformer("shapes-tiny")
    assert tiny.tokens_per_frame == 64 and tiny.context_length == 49 + 4 * 64
    with pytest.raises(ArlonError, match="known: smoke"):
        ar_transformer("huge")


@pytest.mark.parametrize(
    "settings, timeline, match",
    [
        (dict(temperature=-1.0), TIMELINE, "temperature"),
        (dict(top_p=0.0), TIMELINE, "top-p"),
        (dict(top_p=1.5), TIMELINE, "top-p"),
        (dict(top_k=-1), TIMELINE, "top-k"),
        (dict(guidance_scale=float("nan")), TIMELINE, "guidance"),
        (dict(precision="float16"), TIMELINE, "precision must be one of auto, float32, bfloat16"),
        (dict(window="ring"), TIMELINE, "window must be one of refill, slide"),
        (dict(), [(2, "a red circle")], "start at frame 0"),
        (dict(), [(0, "a red circle"), (4, "x"), (3, "y")], "increasing"),
        (dict(), [(0, "  ")], "empty"),
    ],
)
def test_bad_input_is_a_clear_error(model, text_encoder, settings, timeline, match):
    with pytest.raises(ArlonError, match=match):
        generate(model, text_encoder, timeline, 2, **settings)


def test_codes_that_do_not_fit_are_a_clear_error(model):
    for frames in (5, 0):  # 5 > max_frames
        with pytest.raises(ArlonError, match="do not fit"):
            model(None, None, torch.zeros(1, frames, 2, 2, dtype=torch.long))


def test_video_timelines_map_onto_token_frames():
    from arlon.models.video_vae import video_vae
    from arlon.pipeline.coarse import token_start, token_timeline, windows_for

    vae = video_vae("smoke")  # causal, 4 frames a latent frame
    # video frame 0 is latent frame 0; frames 4k-3..4k are latent frame k
    assert [vae.latent_of(f) for f in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert [vae.first_frame(k) for k in range(4)] == [0, 1, 5, 9]
    assert [vae.latents_for(n) for n in (1, 2, 5, 6, 17)] == [1, 2, 2, 3, 5]
    timeline = [(0, "a"), (5, "b"), (6, "c"), (40, "d")]
    assert list(token_timeline(timeline, vae, 1)) == [(0, "a"), (2, "c"), (10, "d")]  # c wins
    assert list(token_timeline(timeline, vae, 2)) == [(0, "a"), (1, "c"), (5, "d")]
    assert [token_start(t, vae, 2) for t in range(4)] == [0, 5, 13, 21]
    # 64 frames -> 17 latent frames -> two windows of 9; 33 frames -> 9 latent frames -> one
    assert windows_for(64, vae, 1, 9) == 2 and windows_for(33, vae, 1, 9) == 1

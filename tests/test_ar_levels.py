"""An FSQ codebook's codes, level by level: embedded and predicted as the sum of their levels',
trained without the codebook's logits, drawn dimension by dimension as the whole codebook's draw."""

import math

import pytest
import torch
from conftest import TIMELINE, token_frames

from arlon.errors import ArlonError
from arlon.models.ar_decoder import ARDecoder
from arlon.models.ar_sampler import ARSampler, ARSampling, sample_levels, sample_logits
from arlon.models.ar_transformer import ar_transformer
from arlon.models.fsq import FSQHead, fsq_codes, fsq_levels, fsq_rows, level_nll


def test_fsq_codes_are_embedded_and_predicted_level_by_level():
    """The FSQ head's distribution is the product of one softmax per dimension, its levels those
    of vector-quantize-pytorch's FSQ, and codes that share a level share that level's embedding."""
    from vector_quantize_pytorch import FSQ

    levels = [8, 5, 5, 5]
    model = ar_transformer("smoke", codebook_size=1000, code_levels=levels)
    codes = torch.tensor([0, 1, 8, 737, 999])
    expected = FSQ(levels=levels, dim=4).indices_to_level_indices(codes)  # (5, 4)
    offsets = torch.tensor([0, 8, 13, 18])
    assert torch.equal(model.code_embedder.rows[codes], expected + offsets)
    assert torch.equal(fsq_codes(expected, levels), codes)  # the inverse of fsq_levels
    x = torch.randn(3, model.config.hidden_size)
    per_dim = model.head.proj(x).split(levels, dim=-1)
    factored = sum(p.log_softmax(-1)[:, expected[:, d]] for d, p in enumerate(per_dim))
    assert torch.allclose(model.head(x).log_softmax(-1)[:, codes], factored, atol=1e-5)
    table = model.code_embedder.weight
    assert torch.allclose(model.code_embedder(codes)[3], table[expected[3] + offsets].sum(0))
    with pytest.raises(ArlonError, match="multiply to 100"):
        ar_transformer("smoke", codebook_size=64, code_levels=[4, 5, 5])
    with pytest.raises(ArlonError, match="needs code_levels"):
        ar_transformer("smoke", code_head="levels+joint")
    # with a logit per code, the levels' logits are still there, shifted code by code
    both = ar_transformer("smoke", codebook_size=1000, code_levels=levels, code_head="levels+joint")
    both.head.proj.load_state_dict(model.head.proj.state_dict())
    assert torch.allclose(both.head(x), model.head(x) + both.head.joint(x), atol=1e-6)


def test_by_level_loss_is_the_cross_entropy_over_every_code():
    """Trained by level, the loss and accuracy are those over all prod(levels) codes, without
    their logits: the head's distribution is the product of the dimensions'."""
    levels = [4, 4, 4]
    model = ar_transformer("smoke", code_levels=levels).eval()
    x = token_frames()
    with torch.no_grad():
        logits = model(None, None, x)  # (B, N, 64)
        nll, right = level_nll(model(None, None, x, by_level=True), x.flatten(1), levels)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x.flatten(1), reduction="none")
    assert torch.allclose(nll, ce, atol=1e-5)
    assert torch.equal(right, logits.argmax(-1) == x.flatten(1))
    joint = ar_transformer("smoke", code_levels=levels, code_head="levels+joint")
    with pytest.raises(ArlonError, match="by level alone"):
        joint(None, None, x, by_level=True)
    with pytest.raises(ArlonError, match="need a by-level head"):
        ar_transformer("smoke")(None, None, x, by_level=True)


def test_sample_logits():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_logits(logits, temperature=0).tolist() == [1, 0]
    assert sample_logits(logits, top_k=1, generator=g).tolist() == [1, 0]
    assert sample_logits(logits, top_p=0.01, generator=g).tolist() == [1, 0]
    draws = torch.stack([sample_logits(logits, top_k=2, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3}  # only the two likeliest


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_drawing_by_level_draws_the_codebooks_code(temperature):
    """A by-level head's code drawn dimension by dimension is the one drawn from its prod(levels)
    logits with the same uniform number (up to float rounding at the bins' edges)."""
    levels = [8, 5, 5, 5]
    head = FSQHead(16, levels)
    x = 3 * torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    uniform = torch.rand(4000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        joint = sample_logits(head(x), temperature, uniform=uniform)
        by_level = sample_levels(head(x, by_level=True), levels, temperature, uniform=uniform)
    assert (by_level == joint).float().mean() > 0.999
    assert joint.unique().numel() > (200 if temperature else 1)  # many codes, not a few


@pytest.mark.parametrize("levels", [[8, 8, 8, 8], [8, 5, 5, 5], [3, 7], [4, 3, 2, 3, 2]])
def test_a_codes_logit_is_the_sum_of_its_levels_in_every_code_order(levels):
    """`FSQHead.level_sums` gives code k the sum of its own levels' logits (the rows of
    `fsq_levels`), for any leading shape: exactly on whole numbers (no order of adding rounds
    them), and on any float32 numbers bitwise as the gathered sum with up to 4 dimensions."""
    head, generator = FSQHead(16, levels), torch.Generator().manual_seed(0)
    rows = fsq_rows(levels)  # (K, D): each code's level in each dimension, as rows of the logits
    whole = torch.randint(-1000, 1000, (3, 7, sum(levels)), generator=generator).float()
    sums = head.level_sums(whole)
    assert sums.shape == (3, 7, math.prod(levels))
    assert torch.equal(sums, whole[..., rows].sum(-1))
    starts = [sum(levels[:d]) for d in range(len(levels))]  # each dimension's first row
    ends = [start + n - 1 for start, n in zip(starts, levels, strict=True)]  # and its last
    assert torch.equal(sums[..., 0], whole[..., starts].sum(-1))  # code 0: every level 0
    assert torch.equal(sums[..., -1], whole[..., ends].sum(-1))  # the last: every last level
    if len(levels) <= 4:
        logits = 5 * torch.randn(3, 7, sum(levels), generator=generator)
        assert torch.equal(head.level_sums(logits), logits[..., rows].sum(-1))


@pytest.mark.parametrize("fast", [True, False])
def test_a_sampler_draws_by_level_the_codes_of_the_whole_codebook(text_encoder, fast):
    """A by-level head's codes, drawn level by level (the default) and from its prod(levels)
    logits, on the fast and the reference path, under guidance, across a prompt switch."""
    torch.manual_seed(0)
    model = ar_transformer("smoke", code_levels=[4, 4, 4], code_head="levels").eval()
    drawn = []
    for by_level in (True, False):
        sampler = ARSampler(model, text_encoder, ARSampling(guidance_scale=3.0), 0, fast=fast)
        assert sampler.levels == [4, 4, 4]  # drawn by level unless told otherwise
        if not by_level:
            sampler.levels = None
        drawn.append(torch.stack(list(sampler.frames(TIMELINE, 8))))
    assert torch.equal(*drawn)
    assert drawn[0].unique().numel() > 8  # many codes, not a few


def test_by_level_logits_need_a_by_level_head():
    model = ar_transformer("smoke").eval()  # one logit per code, no levels
    with pytest.raises(ArlonError, match="need a by-level head"):
        model(None, None, token_frames(), by_level=True)
    with pytest.raises(ArlonError, match="need a by-level head"):
        ARDecoder(model)(model.embed_prefix(None, None, 2), model.new_cache(2), 0, by_level=True)


def test_a_draw_at_a_bins_edge_never_lands_on_an_impossible_code():
    """Uniform numbers on (and one float either side of) every edge of the most significant
    dimension's bins: the code drawn never has the level of probability 0."""
    levels = [3, 3]
    generator = torch.Generator().manual_seed(0)
    impossible = torch.tensor([-200.0, 0.0, 0.0])  # level 0 of the first dimension: probability 0
    logits, uniform = [], []
    for _ in range(100):
        last = 3 * torch.randn(3, generator=generator)
        for edge in last.softmax(-1).cumsum(-1)[:-1]:
            for target in (
                edge,
                edge.nextafter(torch.tensor(2.0)),
                edge.nextafter(torch.tensor(-1.0)),
            ):
                logits.append(torch.cat([impossible, last]))
                uniform.append(1 - target)
    logits, uniform = torch.stack(logits), torch.stack(uniform)
    by_level = sample_levels(logits, levels, uniform=uniform)
    assert (fsq_levels(by_level, levels)[:, 0] != 0).all()
    joint = logits[:, fsq_rows(levels)].sum(-1)  # each code's logit: its levels' sum
    assert (fsq_levels(sample_logits(joint, uniform=uniform), levels)[:, 0] != 0).all()

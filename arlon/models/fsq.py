"""FSQ codes, dimension by dimension: an FSQ codebook's code as its level in each dimension, the
AR's embedding of a code as its levels' summed, and its head's logits as one softmax per dimension.

    levels = [8, 8, 8, 8]                      # the recipe's coarse VQ-VAE: 4,096 codes
    fsq_levels(codes, levels)                  # (...) -> (..., 4), vector-quantize-pytorch's order
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from arlon.errors import ArlonError


def _fsq_basis(levels: list[int], device) -> torch.Tensor:
    """prod(L_<d) for each dimension d: code k = sum_d l_d * prod(L_<d) (vector-quantize-pytorch's
    order)."""
    return torch.tensor([math.prod(levels[:d]) for d in range(len(levels))], device=device)


def fsq_levels(codes: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """Codes `(...)` of an FSQ codebook with `levels` (L_1, ..., L_D) -> each code's level in every
    dimension `(..., D)`."""
    basis = _fsq_basis(levels, codes.device)
    return codes[..., None] // basis % torch.tensor(levels, device=codes.device)


def fsq_codes(level_indices: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """The inverse of `fsq_levels`: each dimension's level `(..., D)` -> codes `(...)`."""
    return (level_indices * _fsq_basis(levels, level_indices.device)).sum(-1)


def fsq_rows(levels: list[int]) -> torch.Tensor:
    """Each code of an FSQ codebook as its level in every dimension (`fsq_levels`), level l_d of
    dimension d at row `offset_d + l_d` of a table of sum(levels) rows -> `(prod(levels), D)`."""
    offsets = torch.tensor([sum(levels[:d]) for d in range(len(levels))])
    return fsq_levels(torch.arange(math.prod(levels)), levels) + offsets


class FSQEmbedding(nn.Module):
    """A code's embedding as the sum of its levels' embeddings: codes one level apart in one
    dimension, neighbouring latents, share all other rows (sum(levels) rows, not prod(levels))."""

    def __init__(self, levels: list[int], hidden_size: int):
        super().__init__()
        self.register_buffer("rows", fsq_rows(levels), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(levels), hidden_size))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.weight[self.rows[codes]].sum(-2)  # (..., C)


class FSQHead(nn.Module):
    """Logits over the whole codebook from one softmax per dimension: the logit of code k is the sum
    of its levels' logits, so the codebook's distribution is the product of the dimensions' and a
    draw that misses one dimension's level lands on a neighbouring latent, not on any code. A product
    cannot say "this code or that one" (an object's edge: object or background); with `joint`, a
    logit per code is added, which can."""

    def __init__(self, hidden_size: int, levels: list[int], joint: bool = False):
        super().__init__()
        self.levels = list(levels)
        self.proj = nn.Linear(hidden_size, sum(levels), bias=False)
        self.joint = nn.Linear(hidden_size, math.prod(levels), bias=False) if joint else None

    def forward(
        self, x: torch.Tensor, by_level: bool = False, decoding: bool = False
    ) -> torch.Tensor:
        """Logits `(..., K)`; `by_level`: each dimension's `(..., sum(levels))` instead, which
        `level_nll` scores without the K logits (training: K times the dimensions' work saved).
        `decoding` (generation, with a KV cache): each row's codes' logits are its levels' summed,
        the same arithmetic however many rows come together; else the head is one linear map (K, C)."""
        if by_level:
            if self.joint is not None:
                raise ArlonError("a head with a logit per code has no logits by level alone")
            return self.proj(x)
        if decoding:  # in float32, as a bfloat16 sum adds (rounded once, not at every level)
            joint = 0 if self.joint is None else self.joint(x)
            return self.level_sums(self.proj(x).float()) + joint  # (..., K)
        # training's many rows: one (C, K) weight, the levels' summed and the per-code logits'
        # added, then one matmul (with the loss, forward and backward on the recipe's batch of 16
        # windows: 0.64 s against 1.0 for two matmuls and a (K, D, C) gather)
        weight = self.level_sums(self.proj.weight.t())
        if self.joint is not None:
            weight = weight + self.joint.weight.t()
        return x @ weight

    def level_sums(self, logits: torch.Tensor) -> torch.Tensor:
        """Levels' logits `(..., sum(levels))` -> each code's, the sum of its levels' `(..., K)`:
        built dimension by dimension, each new (more significant) dimension's levels broadcast over
        the codes so far, without the `(..., K, D)` gather of `logits[..., fsq_rows(levels)]`: 3
        times faster for a Jacobi forward's 16 rows, and in float32 with up to 4 dimensions bitwise
        the same (torch's sum adds 4 at a time in that order; more, in another)."""
        parts = logits.split(self.levels, dim=-1)
        codes = parts[0]
        for part in parts[1:]:
            codes = (codes[..., None, :] + part[..., :, None]).flatten(-2)
        return codes


def level_nll(
    logits: torch.Tensor, codes: torch.Tensor, levels: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A by-level head's logits `(B, N, sum(levels))` and codes `(B, N)` -> each code's negative
    log-likelihood `(B, N)`, the cross-entropy over all prod(levels) codes (their distribution is the
    product of the dimensions'), and whether it is the likeliest code (every dimension's likeliest
    level is its own) `(B, N)`."""
    nll = torch.zeros(codes.shape, dtype=logits.dtype, device=logits.device)
    right = torch.ones(codes.shape, dtype=torch.bool, device=codes.device)
    targets = fsq_levels(codes, levels).unbind(-1)
    for logit, level in zip(logits.split(list(levels), dim=-1), targets, strict=True):
        nll = nll + F.cross_entropy(logit.transpose(1, 2), level, reduction="none")
        right &= logit.argmax(-1) == level
    return nll, right

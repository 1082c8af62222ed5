"""The held-out split: shapes-world seeds that no training data set uses.

Training data sets draw their videos from seeds `(base, kind, i)` with small bases (`arlon world
dataset --seed`); every evaluation draws from `HELDOUT_SEED` and the few seeds after it.
"""

from __future__ import annotations

from arlon.world.simulate import Episode, random_episode

# Training draws its clips from seeds (0, i); the held-out clips come from (HELDOUT_SEED, i).
HELDOUT_SEED = 7919


def heldout_prompts(count: int, seed: int = HELDOUT_SEED) -> list[list[tuple[int, str]]]:
    """Single-caption timelines: the first captions of `count` held-out episodes without events."""
    return [random_episode((seed, i), 2, events=False).timeline[:1] for i in range(count)]


def heldout_episodes(count: int, num_frames: int, seed: int = HELDOUT_SEED) -> list[Episode]:
    """`count` held-out episodes of `num_frames` frames with events (their captions change)."""
    return [random_episode((seed + 1, i), num_frames) for i in range(count)]

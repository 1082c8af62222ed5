"""Shapes-world clips rendered on the fly: an endless, deterministic training set for the VAE."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from arlon.frames import from_frames
from arlon.world.render import render_states
from arlon.world.simulate import random_episode


class WorldClips(Dataset):
    """Clip `i` is the random episode of seed `(base_seed, i)`: `{"video": (3, T, H, W)}` in [-1, 1].

    Training uses base seed 0; held-out evaluation uses another base, so no clip is shared.
    """

    def __init__(
        self,
        num_frames: int,
        size: int = 1_000_000,
        base_seed: int = 0,
        height: int = 64,
        width: int = 64,
    ):
        self.num_frames, self.size, self.base_seed = num_frames, size, base_seed
        self.height, self.width = height, width

    def __len__(self) -> int:
        return self.size

    def episode(self, i: int):
        return random_episode(
            (self.base_seed, i), self.num_frames, self.height, self.width, events=False
        )

    def __getitem__(self, i: int) -> dict:
        frames = np.stack(list(render_states(self.episode(i).frames(), self.height, self.width)))
        return {"video": from_frames(frames)}  # (3, T, H, W)

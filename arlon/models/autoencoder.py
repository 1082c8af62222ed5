"""The interface every video autoencoder of ARLON offers (our causal VAE, or a pretrained one).

Videos are `(B, 3, T, H, W)` in [-1, 1]; latents are `(B, C, T', H / s, W / s)` with
`T' = 1 + (T - 1) / t` (the first frame alone makes the first latent frame, each further `t` frames
one more), *normalised* per channel by the autoencoder's shift and scale, so that later stages see
roughly unit-variance latents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from arlon.errors import ArlonError


class VideoAutoencoder:
    """Mixin: the shared interface. Subclasses set `latent_channels`, `temporal_ratio`,
    `spatial_ratio` and implement `encode`, `decode` and `decode_stream`."""

    latent_channels: int
    temporal_ratio: int
    spatial_ratio: int

    def encode(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """`(B, 3, T, H, W)` in [-1, 1] -> normalised latents `(B, C, T', h, w)`; the posterior mean
        unless `sample`."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `(B, C, T', h, w)` -> video `(B, 3, T, H, W)` in [-1, 1]."""
        raise NotImplementedError

    def decode_stream(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode chunks of latent frames `(B, C, t_i, h, w)` as they come, yielding the frames
        `(B, 3, n_i, H, W)` they complete; memory does not grow with the number of chunks."""
        raise NotImplementedError

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for a video of `num_frames` frames (which must be 1 + k * temporal_ratio)."""
        if num_frames < 1 or (num_frames - 1) % self.temporal_ratio:
            raise ArlonError(
                f"this autoencoder takes 1 + k*{self.temporal_ratio} frames "
                f"(1, {1 + self.temporal_ratio}, {1 + 2 * self.temporal_ratio}, ...), got {num_frames}"
            )
        return 1 + (num_frames - 1) // self.temporal_ratio

    def video_frames(self, latent_frames: int) -> int:
        """The video frames that `latent_frames` latent frames decode to."""
        return 1 + (latent_frames - 1) * self.temporal_ratio

    # The video frame <-> latent frame arithmetic that generation and its timelines use; an
    # autoencoder whose frames do not follow `1 + k * temporal_ratio` overrides `latents_for`
    # (and `video_frames`), the other two follow from them.

    def latents_for(self, num_frames: int) -> int:
        """The fewest latent frames whose video holds `num_frames` frames (at least 1)."""
        return 1 + -(-(num_frames - 1) // self.temporal_ratio)

    def latent_of(self, frame: int) -> int:
        """The latent frame that holds video frame `frame` (from 0)."""
        return self.latents_for(frame + 1) - 1

    def first_frame(self, latent: int) -> int:
        """The first video frame of latent frame `latent` (the inverse of `latent_of`)."""
        return 0 if latent == 0 else self.video_frames(latent)

    def check_video(self, video: torch.Tensor) -> None:
        """A clear error for a video this autoencoder cannot take."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ArlonError(f"expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}")
        height, width = video.shape[-2:]
        if height % self.spatial_ratio or width % self.spatial_ratio:
            raise ArlonError(
                f"frame size {height}x{width} is not a multiple of {self.spatial_ratio}"
            )
        self.latent_frames(video.shape[2])

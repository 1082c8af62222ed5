"""Shapes-world videos on disk: one episode as mp4 + ground truth, or a whole data set.

    write_dataset(DatasetSettings(Path("data/shapes"), clips=1000, episodes=100))

A data set is short clips (one caption each) and episodes (caption changes), each an mp4 and
its ground-truth JSON, listed in an Open-Sora-style `manifest.csv`. Video i of a kind is drawn from
the seed `(base, kind, i)`: it does not depend on how many videos of either kind were asked for, so a
data set can grow, and a re-run skips the videos already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from arlon.data.manifest import ManifestRow, write_manifest
from arlon.data.video_io import VideoWriter
from arlon.errors import ArlonError
from arlon.world.render import render_states
from arlon.world.simulate import Episode, check_size, random_episode


def write_episode(
    episode: Episode, video: Path, truth: Path, progress: bool = False, pix_fmt: str = "yuv420p"
) -> None:
    """Render `episode` into `video` (.mp4 or .gif) and its ground truth into `truth` (.json)."""
    frames = render_states(episode.frames(), episode.height, episode.width)
    with VideoWriter(video, fps=episode.fps, pix_fmt=pix_fmt) as writer:
        for frame in tqdm(
            frames, total=episode.num_frames, desc="render", unit="frame", disable=not progress
        ):
            writer.write_frame(frame)
    episode.save_truth(truth)


@dataclass(frozen=True)
class DatasetSettings:
    out: Path
    clips: int = 12000
    clip_frames: int = 33
    episodes: int = 1200
    frames: int = 300  # per episode: 2-4 captions
    seed: int = 0  # the base seed
    height: int = 64
    width: int = 64
    fps: float = 8.0
    delta_captions: float = 0.5  # an episode's later captions that state only the change

    def __post_init__(self):
        check_size(self.height, self.width)
        if not 0 <= self.delta_captions <= 1:
            raise ArlonError(f"delta_captions is a share in [0, 1], got {self.delta_captions}")
        if min(self.clips, self.episodes) < 0 or min(self.clip_frames, self.frames) < 1:
            raise ArlonError("clips and episodes must be >= 0, frames per video positive")
        if not self.fps > 0:
            raise ArlonError(f"fps must be positive, got {self.fps}")


def write_dataset(settings: DatasetSettings, progress: bool = True) -> Path:
    """Write the data set's videos (skipping finished ones) and its manifest; the manifest path."""
    s = settings
    jobs = [("clips", i, s.clip_frames, False) for i in range(s.clips)]
    jobs += [("episodes", i, s.frames, True) for i in range(s.episodes)]
    rows = []
    for kind, i, frames, events in tqdm(jobs, desc="dataset", unit="video", disable=not progress):
        seed = (s.seed, 0 if kind == "clips" else 1, i)
        episode = random_episode(
            seed, frames, s.height, s.width, s.fps, events=events, deltas=s.delta_captions
        )
        video = s.out / kind / f"{kind[:-1]}_{i:06d}.mp4"
        truth = video.with_suffix(".json")
        if not (video.exists() and truth.exists()):
            # 4:4:4 keeps colour at full resolution: 4:2:0 would blur every colour edge of the
            # training data (about 27 dB instead of 50 dB on a rendered frame).
            write_episode(episode, video, truth, pix_fmt="yuv444p")
        text = episode.timeline[0][1]
        rows.append(ManifestRow(video, text, frames, s.height, s.width, s.fps, truth))
    manifest = s.out / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest

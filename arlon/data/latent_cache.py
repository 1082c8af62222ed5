"""The latent cache: a data set encoded once, so the VQ, AR and DiT stages train on tensors.

    arlon cache --vae runs/vae/model --manifest data/shapes/manifest.csv --out cache/shapes
    arlon cache ... --fine-vq runs/vq-fine/model --coarse-vq runs/vq-coarse/model   # adds codes

Each video of the manifest is encoded by the VAE causally, chunk by chunk (memory independent of its
length), into normalised latents `(C, T', h, w)`; with VQ-VAEs, every window of `window` latent
frames also gets its fine codes and its coarse latent (the coarse VQ-VAE's reconstruction, the DiT's
training condition). Tensors go to safetensors shards; `index.json` lists the entries with their
captions and timelines.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from arlon.data.manifest import read_manifest
from arlon.data.video_io import iter_frames
from arlon.errors import ArlonError


@dataclass
class CacheEntry:
    key: str
    shard: str
    path: str
    num_frames: int  # frames encoded: 1 + 4k of the video's first frames
    latent_frames: int
    timeline: list[tuple[int, str]]
    has_codes: bool = False


def _frames_to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (1, 3, T, H, W) in [-1, 1]."""
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1
    return video[None]


@torch.inference_mode()
def encode_video(vae, path: str | Path, chunk_latents: int = 16) -> torch.Tensor:
    """All latents `(C, T', h, w)` of a video, encoded causally in chunks of `chunk_latents`."""
    r = vae.temporal_ratio

    def chunks():
        buffer, first = [], True
        for frame in iter_frames(path):
            buffer.append(frame)
            size = 1 + r * (chunk_latents - 1) if first else r * chunk_latents
            if len(buffer) == size:
                yield _frames_to_tensor(buffer)
                buffer, first = [], False
        usable = len(buffer) - (len(buffer) - 1) % r if first else len(buffer) - len(buffer) % r
        if usable > 0:
            yield _frames_to_tensor(buffer[:usable])

    return torch.cat(list(vae.encode_stream(chunks())), dim=2)[0]


@torch.inference_mode()
def vq_windows(
    latents: torch.Tensor, window: int, fine=None, coarse=None
) -> dict[str, torch.Tensor]:
    """Fine codes and coarse latents of every whole window of `window` latent frames.

    `latents` is `(C, T', h, w)`; returns `codes` `(n, t, h', w')` and `coarse` `(C, n*window, h, w)`.
    """
    n = latents.shape[1] // window
    if n == 0:
        return {}
    windows = latents[:, : n * window].unflatten(1, (n, window)).transpose(0, 1)  # (n, C, W, h, w)
    out = {}
    if fine is not None:
        out["codes"] = fine.encode(windows).to(torch.int16)
    if coarse is not None:
        rec = coarse.decode_codes(coarse.encode(windows), num_frames=window)  # (n, C, W, h, w)
        out["coarse"] = rec.transpose(0, 1).flatten(1, 2).half()
    return out


def build_cache(
    vae,
    manifest: str | Path,
    out: str | Path,
    fine=None,
    coarse=None,
    window: int = 9,
    shard_bytes: int = 64 << 20,
) -> Path:
    """Encode every video of `manifest` into `out` (replaced only once complete)."""
    out = Path(out)
    rows = read_manifest(manifest)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    entries, shard, size, shard_id = [], {}, 0, 0

    def flush():
        nonlocal shard, size, shard_id
        if shard:
            save_file(shard, str(tmp / f"shard_{shard_id:05d}.safetensors"))
            shard, size, shard_id = {}, 0, shard_id + 1

    for i, row in enumerate(tqdm(rows, desc="cache", unit="video")):
        latents = encode_video(vae, row.path)
        key = f"{i:06d}"
        tensors = {f"{key}.latents": latents.half()}
        extra = vq_windows(latents, window, fine, coarse)
        tensors |= {f"{key}.{k}": v for k, v in extra.items()}
        timeline = _timeline(row)
        entries.append(
            CacheEntry(
                key,
                f"shard_{shard_id:05d}.safetensors",
                str(row.path),
                vae.video_frames(latents.shape[1]),
                latents.shape[1],
                timeline,
                "codes" in extra,
            )
        )
        shard |= {k: v.contiguous() for k, v in tensors.items()}
        size += sum(v.numel() * v.element_size() for v in tensors.values())
        if size >= shard_bytes:
            flush()
    flush()
    meta = {
        "window": window,
        "temporal_ratio": vae.temporal_ratio,
        "entries": [asdict(e) for e in entries],
    }
    (tmp / "index.json").write_text(json.dumps(meta))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _timeline(row) -> list[tuple[int, str]]:
    if row.truth is not None and Path(row.truth).exists():
        truth = json.loads(Path(row.truth).read_text())
        if "timeline" in truth:
            return [(int(s), c) for s, c in truth["timeline"]]
    return [(0, row.text)]


class LatentCache:
    """Read access to a cache folder: entries, and each entry's tensors (loaded shard by shard)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "index.json"
        if not index.exists():
            raise ArlonError(
                f"{self.folder} is not a latent cache (no index.json); build one with 'arlon cache'"
            )
        meta = json.loads(index.read_text())
        self.window, self.temporal_ratio = meta["window"], meta["temporal_ratio"]
        self.entries = [CacheEntry(**e) for e in meta["entries"]]
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    def tensors(self, entry: CacheEntry) -> dict[str, torch.Tensor]:
        if entry.shard not in self._shards:
            self._shards[entry.shard] = load_file(str(self.folder / entry.shard))
        shard = self._shards[entry.shard]
        prefix = f"{entry.key}."
        return {k[len(prefix) :]: v for k, v in shard.items() if k.startswith(prefix)}

    def caption_at(self, entry: CacheEntry, latent_frame: int) -> str:
        """The caption in force at the first video frame of a latent frame."""
        frame = 0 if latent_frame == 0 else 1 + (latent_frame - 1) * self.temporal_ratio
        caption = entry.timeline[0][1]
        for start, text in entry.timeline:
            if start <= frame:
                caption = text
        return caption


class LatentWindows(Dataset):
    """Every window of `window` latent frames of a cache (stride `stride`): `{"latents": (C, W, h, w)}`
    in float32, plus `caption` (the caption at the window's first frame)."""

    def __init__(
        self,
        cache: LatentCache | str | Path,
        window: int = 9,
        stride: int | None = None,
        entries: list[CacheEntry] | None = None,
    ):
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
        stride = stride or window
        entries = self.cache.entries if entries is None else entries
        self.items = [
            (e, s) for e in entries for s in range(0, e.latent_frames - window + 1, stride)
        ]
        if not self.items:
            raise ArlonError(f"no entry of {self.cache.folder} has {window} latent frames")
        self.window = window

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        entry, start = self.items[i]
        latents = self.cache.tensors(entry)["latents"][:, start : start + self.window].float()
        return {"latents": latents, "caption": self.cache.caption_at(entry, start)}

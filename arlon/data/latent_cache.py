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

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
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
from arlon.frames import from_frames


@dataclass
class CacheEntry:
    key: str
    shard: str
    path: str
    num_frames: int  # frames encoded: 1 + 4k of the video's first frames
    latent_frames: int
    timeline: list[tuple[int, str]]
    has_codes: bool = False


def encode_video(vae, path: str | Path, chunk_latents: int = 16) -> torch.Tensor:
    """All latents `(C, T', h, w)` of a video file, encoded causally in chunks of `chunk_latents`."""
    return encode_frames(vae, iter_frames(path), chunk_latents)


@torch.inference_mode()
def encode_frames(vae, frames: Iterable[np.ndarray], chunk_latents: int = 16) -> torch.Tensor:
    """All latents `(C, T', h, w)` of uint8 frames `(H, W, 3)` (a `(T, H, W, 3)` array, or frames
    as they come), encoded causally in chunks of `chunk_latents` latent frames: the memory of one
    chunk, not of the whole video. Frames past the last whole latent frame are dropped."""
    r = vae.temporal_ratio

    def chunks():
        buffer, first = [], True
        for frame in frames:
            buffer.append(frame)
            size = 1 + r * (chunk_latents - 1) if first else r * chunk_latents
            if len(buffer) == size:
                yield from_frames(np.stack(buffer))[None]
                buffer, first = [], False
        usable = len(buffer) - (len(buffer) - 1) % r if first else len(buffer) - len(buffer) % r
        if usable > 0:
            yield from_frames(np.stack(buffer[:usable]))[None]

    return torch.cat(list(vae.encode_stream(chunks())), dim=2)[0]


@torch.inference_mode()
def vq_windows(
    latents: torch.Tensor, window: int, fine=None, coarse=None
) -> dict[str, torch.Tensor]:
    """Fine codes and coarse latents of every whole window of `window` latent frames.

    `latents` is `(C, T', h, w)`; returns `codes` `(n, t, h', w')` and `coarse` `(C, n*window, h, w)`.
    """
    return vq_many([latents], window, fine, coarse)[0]


def code_dtype(codebook_size: int) -> torch.dtype:
    """The cache's integer type for codes of a codebook: int16 (half of int32's memory for the
    AR's windows) where every code fits in it."""
    return torch.int16 if codebook_size <= torch.iinfo(torch.int16).max + 1 else torch.int32


@torch.inference_mode()
def vq_many(
    latents: list[torch.Tensor], window: int, fine=None, coarse=None, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """`vq_windows` of many videos at once, a dict per video (empty for a video shorter than a
    window). Windows of the same size go through the VQ-VAEs together in batches of `batch_size`:
    a cache of short clips holds one window per video, and on a CPU batches of 8 encode and decode
    1.4x and 2x faster than one at a time (larger ones are no faster)."""
    windows = [
        x[:, : x.shape[1] // window * window].unflatten(1, (-1, window)).transpose(0, 1)
        for x in latents
    ]  # (n, C, W, h, w) each
    results: list[dict[str, torch.Tensor]] = [{} for _ in latents]
    by_size: dict[tuple[int, ...], list[int]] = {}  # a cache may hold videos of several sizes
    for i, w in enumerate(windows):
        if len(w):
            by_size.setdefault(tuple(w.shape[1:]), []).append(i)
    for members in by_size.values():
        counts = [len(windows[i]) for i in members]
        batches = torch.cat([windows[i] for i in members]).split(batch_size)
        if fine is not None:
            codes = torch.cat([fine.encode(b) for b in batches]).to(code_dtype(fine.codebook_size))
            for i, part in zip(members, codes.split(counts), strict=True):
                results[i]["codes"] = part  # (n, t, h', w')
        if coarse is not None:
            rec = torch.cat(
                [coarse.decode_codes(coarse.encode(b), num_frames=window) for b in batches]
            ).half()  # (N, C, W, h, w)
            for i, part in zip(members, rec.split(counts), strict=True):
                results[i]["coarse"] = part.transpose(0, 1).flatten(1, 2)  # (C, n*window, h, w)
    return results


def build_cache(
    vae,
    manifest: str | Path,
    out: str | Path,
    fine=None,
    coarse=None,
    window: int = 9,
    shard_bytes: int = 64 << 20,
    append: bool = False,
) -> Path:
    """Encode every video of `manifest` into `out` (replaced only once complete).

    A build goes into `out.tmp` first, whose `partial.json` lists the videos of every shard written
    so far: an interrupted build, run again with the same settings, encodes only the rest.

    With `append`, the videos go into the existing cache `out` instead, after its entries (their
    keys, and so the held-out split of the training stages, do not move); videos already in it are
    skipped. New shards are written first and the index last, so an interrupted append leaves the
    cache as it was."""
    out = Path(out)
    rows = read_manifest(manifest)
    if append:
        cache = LatentCache(out)
        meta = json.loads((cache.folder / "index.json").read_text())
        if meta["window"] != window or meta["temporal_ratio"] != vae.temporal_ratio:
            raise ArlonError(
                f"{out} was built with window {meta['window']} and temporal ratio "
                f"{meta['temporal_ratio']}, not {window} and {vae.temporal_ratio}"
            )
        has_codes = any(e.has_codes for e in cache.entries)
        whole = next((e for e in cache.entries if e.latent_frames >= window), None)  # has a window
        has_coarse = whole is not None and "coarse" in cache.tensors(whole)
        if (has_codes, has_coarse) != (fine is not None, coarse is not None) or (
            has_codes and meta["codebook_size"] != fine.codebook_size
        ):
            raise ArlonError(
                f"append to {out} with the VQ-VAEs it was built with: it has "
                f"{'fine codes' if has_codes else 'no fine codes'} and "
                f"{'coarse latents' if has_coarse else 'no coarse latents'}"
            )
        known = {e.path for e in cache.entries}
        rows = [row for row in rows if str(row.path) not in known]
        folder, first_key = out, 1 + max((int(e.key) for e in cache.entries), default=-1)
        first_shard = 1 + max((_shard_number(e.shard) for e in cache.entries), default=-1)
        written = None
    else:
        meta = {
            "window": window,
            "temporal_ratio": vae.temporal_ratio,
            "codebook_size": None if fine is None else fine.codebook_size,
            "entries": [],
        }
        folder = out.with_name(out.name + ".tmp")
        encoders = _fingerprint(vae, fine, coarse)
        meta["entries"] = _interrupted_build(folder, meta, encoders, [str(r.path) for r in rows])
        if not meta["entries"]:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        first_key = len(meta["entries"])
        first_shard = 1 + max((_shard_number(e["shard"]) for e in meta["entries"]), default=-1)
        if first_key:
            print(f"cache: resuming after {first_key} of {len(rows)} videos", flush=True)
        rows = rows[first_key:]

        def written(entries: list[dict]) -> None:
            partial = {**meta, "encoders": encoders, "entries": meta["entries"] + entries}
            _write_json(folder / PARTIAL, partial)

    entries = _encode_rows(
        vae, rows, folder, fine, coarse, window, shard_bytes, first_key, first_shard, written
    )
    meta["entries"] += [asdict(e) for e in entries]
    _write_json(folder / "index.json", meta)
    if not append:
        (folder / PARTIAL).unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(folder, out)
    return out


# at most this many tensors a shard (at most 500 videos), so an interrupted build loses minutes
SHARD_TENSORS = 500
PARTIAL = "partial.json"  # an unfinished build's settings and the entries of its written shards


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _interrupted_build(folder: Path, meta: dict, encoders: str, paths: list[str]) -> list[dict]:
    """The entries an interrupted build into `folder` wrote, or [] unless it had the settings of
    `meta`, the same encoders, and the first videos of `paths` in order (so that it resumes into
    the cache one build would write)."""
    try:
        partial = json.loads((folder / PARTIAL).read_text())
    except (OSError, ValueError):
        return []
    entries = partial.get("entries", [])
    same = all(partial.get(k) == v for k, v in meta.items() if k != "entries")
    same = same and partial.get("encoders") == encoders
    return entries if same and [e["path"] for e in entries] == paths[: len(entries)] else []


def _fingerprint(*models) -> str:
    """A digest of the weights of `models` (None skipped)."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in [] if model is None else sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _shard_number(name: str) -> int:
    return int(name.removeprefix("shard_").removesuffix(".safetensors"))


def _encode_rows(
    vae,
    rows,
    folder: Path,
    fine,
    coarse,
    window: int,
    shard_bytes: int,
    first_key: int,
    first_shard: int,
    written: Callable[[list[dict]], None] | None = None,
) -> list[CacheEntry]:
    """Encode `rows` into shards of `folder`, keys and shard numbers counting from the given ones;
    `written` is told the entries of the shards written so far after each shard."""
    entries, shard, size, shard_id = [], {}, 0, first_shard

    def flush():
        nonlocal shard, size, shard_id
        if shard:
            save_file(shard, str(folder / f"shard_{shard_id:05d}.safetensors"))
            shard, size, shard_id = {}, 0, shard_id + 1
            if written is not None:
                written([asdict(e) for e in entries])

    for i, row in enumerate(tqdm(rows, desc="cache", unit="video"), start=first_key):
        latents = encode_video(vae, row.path).half()  # stored in float16
        key = f"{i:06d}"
        tensors = {f"{key}.latents": latents}
        # codes of the stored latents, as add_codes computes them (it batches several videos'
        # windows: the same codes, the coarse latents within rounding)
        extra = vq_windows(latents.float(), window, fine, coarse)
        tensors |= {f"{key}.{k}": v for k, v in extra.items()}
        entries.append(
            CacheEntry(
                key,
                f"shard_{shard_id:05d}.safetensors",
                str(row.path),
                vae.video_frames(latents.shape[1]),
                latents.shape[1],
                _timeline(row),
                "codes" in extra,
            )
        )
        shard |= {k: v.contiguous() for k, v in tensors.items()}
        size += sum(v.numel() * v.element_size() for v in tensors.values())
        if size >= shard_bytes or len(shard) >= SHARD_TENSORS:
            flush()
    flush()
    return entries


def add_codes(folder: str | Path, fine=None, coarse=None) -> Path:
    """Add (or replace) the fine codes and coarse latents of an existing cache, keeping its latents:
    the VQ-VAEs are trained on a cache and their codes then go into the same one, without encoding
    the videos again. Each shard is rewritten atomically; the index last."""
    if fine is None and coarse is None:
        raise ArlonError("add_codes needs a fine or a coarse VQ-VAE")
    cache = LatentCache(folder)
    meta = json.loads((cache.folder / "index.json").read_text())
    by_shard: dict[str, list[int]] = {}
    for i, entry in enumerate(cache.entries):
        by_shard.setdefault(entry.shard, []).append(i)
    for shard, members in tqdm(by_shard.items(), desc="add codes", unit="shard"):
        tensors = load_file(str(cache.folder / shard))
        keys = [cache.entries[i].key for i in members]
        latents = [tensors[f"{key}.latents"].float() for key in keys]
        extras = vq_many(latents, cache.window, fine, coarse)
        for i, key, extra in zip(members, keys, extras, strict=True):
            tensors |= {f"{key}.{k}": v.contiguous() for k, v in extra.items()}
            meta["entries"][i]["has_codes"] = "codes" in extra or meta["entries"][i]["has_codes"]
        tmp = cache.folder / f"{shard}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, cache.folder / shard)
    if fine is not None:
        meta["codebook_size"] = fine.codebook_size
    tmp = cache.folder / "index.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, cache.folder / "index.json")
    return cache.folder


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
        self.codebook_size: int | None = meta.get("codebook_size")  # of the fine codes
        self.entries = [CacheEntry(**e) for e in meta["entries"]]
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    def tensors(self, entry: CacheEntry) -> dict[str, torch.Tensor]:
        if entry.shard not in self._shards:
            self._shards[entry.shard] = load_file(str(self.folder / entry.shard))
        shard = self._shards[entry.shard]
        prefix = f"{entry.key}."
        return {k[len(prefix) :]: v for k, v in shard.items() if k.startswith(prefix)}

    def caption_at(self, entry: CacheEntry, latent_frame: int) -> str:
        """The caption in force at the last video frame of a latent frame: the latent frame that holds
        a caption change belongs to the new caption (as generation switches there)."""
        frame = latent_frame * self.temporal_ratio
        caption = entry.timeline[0][1]
        for start, text in entry.timeline:
            if start <= frame:
                caption = text
        return caption


class LatentWindows(Dataset):
    """Every window of `window` latent frames of a cache (stride `stride`): `{"latents": (C, W, h, w)}`
    in float32, plus `caption`, the caption in force at the window's last frame (a window that
    crosses a caption change shows the change, so it is the new caption's). With `coarse=True`,
    also the window's coarse latent `coarse` `(C, W, h, w)` (only windows that the coarse VQ-VAE's
    windows cover)."""

    def __init__(
        self,
        cache: LatentCache | str | Path,
        window: int = 9,
        stride: int | None = None,
        entries: list[CacheEntry] | None = None,
        coarse: bool = False,
    ):
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
        stride = stride or window
        entries = self.cache.entries if entries is None else entries
        if coarse:
            if not any(e.has_codes for e in entries):
                raise ArlonError(
                    f"{self.cache.folder} has no coarse latents: build it with "
                    "'arlon cache ... --coarse-vq'"
                )
            # the coarse latent covers the whole VQ windows of an entry
            covered = {
                e.key: e.latent_frames // self.cache.window * self.cache.window for e in entries
            }
        else:
            covered = {e.key: e.latent_frames for e in entries}
        self.items = [
            (e, s) for e in entries for s in range(0, covered[e.key] - window + 1, stride)
        ]
        if not self.items:
            raise ArlonError(f"no entry of {self.cache.folder} has {window} latent frames")
        self.window, self.coarse = window, coarse

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        entry, start = self.items[i]
        tensors = self.cache.tensors(entry)
        span = slice(start, start + self.window)
        item = {
            "latents": tensors["latents"][:, span].float(),
            "caption": self.cache.caption_at(entry, start + self.window - 1),
        }
        if self.coarse:
            item["coarse"] = tensors["coarse"][:, span].float()
        return item


class CodeWindows(Dataset):
    """Windows of `frames` consecutive token frames of the fine codes of a cache (stride `stride`),
    each with the caption of the segment its last frame belongs to.

    Items: `codes` `(frames, h, w)` long; `caption`; `frame_mask` `(frames,)` bool, True for the
    frames of that segment (the frames before a caption change are context, not targets); and
    `first_frame`, the index of the window's first token frame in its video. All codes are read
    into memory once (int16: 38,000 token frames of 8x8 codes take 5 MB).
    """

    def __init__(
        self,
        cache: LatentCache | str | Path,
        frames: int,
        stride: int = 1,
        entries: list[CacheEntry] | None = None,
    ):
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
        entries = self.cache.entries if entries is None else entries
        if not any(e.has_codes for e in entries):
            raise ArlonError(
                f"{self.cache.folder} has no fine codes: build it with 'arlon cache --fine-vq ...'"
            )
        self.frames = frames
        self.codes, self.segments, self.captions, self.items = [], [], [], []
        for entry in (e for e in entries if e.has_codes):
            windows = self.cache.tensors(entry)["codes"]  # (n, t, h, w)
            n, t = windows.shape[:2]
            # token frame f of window w ends at latent frame w * window + (f + 1) * window / t - 1
            ends = [
                w * self.cache.window + (f + 1) * self.cache.window // t - 1
                for w in range(n)
                for f in range(t)
            ]
            captions = [self.cache.caption_at(entry, e) for e in ends]
            # segment k: the k-th run of one caption
            changes = [1] + [int(a != b) for a, b in zip(captions, captions[1:], strict=False)]
            segments = torch.tensor(changes).cumsum(0) - 1
            self.code_window = t  # token frames per VQ-VAE window (coded together)
            i = len(self.codes)
            self.codes.append(windows.flatten(0, 1))  # (n * t, h, w)
            self.segments.append(segments)
            self.captions.append([c for c, new in zip(captions, changes, strict=True) if new])
            self.items += [(i, s) for s in range(0, n * t - frames + 1, stride)]
        if not self.items:
            raise ArlonError(f"no entry of {self.cache.folder} has {frames} token frames")

    def __len__(self) -> int:
        return len(self.items)

    def change(self, i: int) -> tuple[str, str] | None:
        """The captions before and after the caption change window `i` crosses (the last, if it
        crosses several; its frames before the change are context only), or None."""
        video, start = self.items[i]
        first, last = self.segments[video][[start, start + self.frames - 1]].tolist()
        if first == last:
            return None
        return self.captions[video][last - 1], self.captions[video][last]

    def story(self, i: int) -> tuple[str, ...]:
        """The captions of window `i`'s video up to the one in force at its last frame: what a
        caption that states only a change ("the circle turns blue") is read against."""
        video, start = self.items[i]
        last = int(self.segments[video][start + self.frames - 1])
        return tuple(self.captions[video][: last + 1])

    def __getitem__(self, i: int) -> dict:
        video, start = self.items[i]
        segments = self.segments[video][start : start + self.frames]
        return {
            "codes": self.codes[video][start : start + self.frames].long(),
            "caption": self.captions[video][int(segments[-1])],
            "frame_mask": segments == segments[-1],
            "first_frame": start,
        }

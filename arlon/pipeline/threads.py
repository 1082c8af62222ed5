"""Running the AR beside the DiT: torch's threads split between them, the AR's windows drawn in a
thread of their own, and each stage's seconds counted as its items are pulled."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class StageTimes:
    """Seconds spent per stage during a generation (AR includes the fine VQ-VAE's decoding), and
    the work done so far: token frames drawn, DiT segments rendered, video frames decoded.
    `waited`: the seconds the DiT and the VAE waited on the AR (its whole time when the stages do
    not overlap); `total`: the generation's own seconds, the time between frames spent by whoever
    consumes them not counted."""

    ar: float = 0.0
    dit: float = 0.0
    vae: float = 0.0
    waited: float = 0.0
    total: float = 0.0
    frames: int = 0
    segments: int = 0
    token_frames: int = 0

    def as_dict(self) -> dict:
        seconds = {"ar": self.ar, "dit": self.dit, "vae": self.vae, "waited": self.waited}
        return {
            "frames": self.frames,
            "segments": self.segments,
            "token_frames": self.token_frames,
            "seconds": {**seconds, "total": self.total},
        }


def generation_threads(overlap: bool, cores: int | None = None) -> int:
    """torch threads for a generation on `cores` cores (default: torch's thread count, the
    physical cores unless this process set it): all of them when the stages take turns; half when
    the AR works beside the DiT, since every op of either stage runs on torch's whole thread count
    (on two cores, 2 threads each took 1.3x the time of 1 each)."""
    cores = cores or torch.get_num_threads()
    return max(1, cores // 2) if overlap else cores


def timed(items: Iterator, times, field: str) -> Iterator:
    """`items` as they are pulled, the seconds each took to come added to `times.<field>`;
    closing this closes them (a read-ahead's thread ends once the item it is drawing is done)."""
    try:
        while True:
            started = time.perf_counter()
            item = next(items, None)
            setattr(times, field, getattr(times, field) + time.perf_counter() - started)
            if item is None:
                return
            yield item
    finally:
        items.close()


def counted(codes: Iterable, times: StageTimes, stop: threading.Event) -> Iterator:
    """`codes` as they are pulled, counted in `times.token_frames`; none more once `stop` is set."""
    for frame in codes:
        if stop.is_set():
            return
        times.token_frames += 1
        yield frame


_END = object()


def read_ahead(items: Iterator, closed: threading.Event | None = None) -> Iterator:
    """`items`, drawn in a thread of their own (in inference mode) one ahead of the consumer (and
    one being drawn); an error there is raised here. Closing this sets `closed` and waits for the
    thread, which ends once the item it is drawing is done (`items` may watch `closed` to end
    sooner); set from elsewhere, `closed` ends the items here too."""
    slots: queue.Queue = queue.Queue(maxsize=1)
    closed = closed or threading.Event()

    def put(entry) -> bool:
        while not closed.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        with torch.inference_mode():
            try:
                for item in items:
                    if not put((item, None)):
                        break
                else:
                    put((_END, None))
            except BaseException as error:  # raised where the items are read
                put((_END, error))
            finally:
                if hasattr(items, "close"):
                    items.close()

    def take():
        while True:
            try:
                return slots.get(timeout=0.05)
            except queue.Empty:  # a thread stopped by `closed` leaves no end behind
                if not thread.is_alive() and slots.empty():
                    return _END, None

    thread = threading.Thread(target=produce, name="arlon-ar", daemon=True)
    thread.start()
    try:
        while True:
            item, error = take()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        closed.set()
        thread.join()

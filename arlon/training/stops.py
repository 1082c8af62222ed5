"""Ctrl-C and SIGTERM while a run trains: noted, and acted on between steps (`arlon.training.trainer`)."""

from __future__ import annotations

import signal
import sys
import threading

import torch
from accelerate import Accelerator
from tqdm import tqdm

from arlon.errors import Stopped


class StopRequests:
    """Ctrl-C and SIGTERM while a run trains: the first is noted, and the loop stops at the end of
    the step under way (its evaluation and checkpoint done) with the state checkpointed; a second
    stops at once, as the signal would without this."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # where handlers can be set
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if kind is None and self.signum is not None:  # noted in the last checkpoint or evaluation
            raise self.error()

    def _note(self, signum, frame) -> None:
        if self.signum is not None:
            raise Stopped(128 + signum)
        self.signum = signum
        if self.accelerator.is_main_process:
            name = signal.Signals(signum).name
            tqdm.write(f"{name}: stopping after this step (again: at once)", file=sys.stderr)

    def requested(self) -> bool:
        """Whether any process was asked to stop: all of them stop after the same step."""
        if self.accelerator.num_processes > 1:
            noted = torch.tensor([self.signum or 0], device=self.accelerator.device)
            self.signum = int(self.accelerator.gather(noted).max()) or None
        return self.signum is not None

    def error(self) -> Stopped:
        return Stopped(128 + self.signum)

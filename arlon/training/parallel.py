"""`arlon recipe NAME --out DIR --parallel`: each stage of a recipe in a process of its own, as
soon as the stages it reads are finished, the machine's cores shared among those running.

On two CPU cores the AR trains on one beside the baseline and ARLON's DiT on the other, and has
both once they are done: a training stage whose share changes is stopped (one SIGTERM: it
checkpoints its step) and resumed from that step with the new share (`arlon recipe ... --resume
--stages NAME`; the same steps on the same batches, its sums rounded as the new thread count
rounds them). Each stage's output goes to OUT/logs/NAME.log.

The scheduler's own signal handlers only note a stop (Ctrl-C, SIGTERM, and SIGHUP unless it is
ignored, as under `nohup`); it then sends each stage one SIGTERM and waits for every one of them
to checkpoint, further signals only reminding what it waits for. A stage whose scheduler dies
without a word (SIGKILL) gets SIGTERM from the system on Linux (`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from arlon.errors import ArlonError, Stopped
from arlon.training.recipe import Recipe, check_run, done

PARENT_ENV = "ARLON_RECIPE_PARENT"  # a stage's process: the pid of the scheduler that started it
_STOPPED = (128 + signal.SIGTERM, -signal.SIGTERM)  # a stage that SIGTERM stopped, caught or not


def thread_shares(stages: list[str], cores: int) -> dict[str, int]:
    """The cores shared among the stages that run at once, in order: a thread at least each, the
    first ones one more while some are left."""
    base, extra = divmod(cores, len(stages))
    return {name: max(1, base + (i < extra)) for i, name in enumerate(stages)}


@dataclass
class _Stage:
    """A stage's running process, its threads, and whether the scheduler has signalled it."""

    process: subprocess.Popen
    threads: int
    signalled: bool = False

    def stop(self) -> None:
        """One SIGTERM, as Ctrl-C: a training stage finishes its step, checkpoints and exits."""
        if not self.signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.signalled = True


class _StopRequests:
    """While the scheduler runs: Ctrl-C, SIGTERM and SIGHUP (unless ignored) note a stop instead
    of raising; once the stages are being stopped, a further one says what is awaited."""

    def __init__(self):
        self.signum: int | None = None
        self.waiting_for: list[str] = []
        self.previous: dict = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is not threading.main_thread():  # no handlers there
            return self
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # SIGHUP: not on Windows
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _note(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"recipe: {signal.Signals(signum).name}: stopping every stage", flush=True)
        elif self.waiting_for:
            print(f"recipe: waiting for {', '.join(self.waiting_for)} to checkpoint", flush=True)


def run_parallel(
    recipe: Recipe, source: str, out: Path, resume: bool, flags: list[str], poll: float = 1.0
) -> Path:
    """Run every unfinished stage in a process of its own (`arlon recipe SOURCE --out OUT --resume
    --stages NAME FLAGS`) as soon as the stages it reads are finished, the cores shared among those
    running (`thread_shares`): on a CPU the AR trains beside the baseline and ARLON's DiT, and has
    every core once they are done. A training stage whose share changes is stopped (it checkpoints
    its step) and resumed with the new one. Each stage's output goes to OUT/logs/NAME.log. A stage
    that fails stops the others; Ctrl-C or SIGTERM stops them all, each checkpointed (`Stopped`)."""
    check_run(recipe, out, resume)
    cores = available_cores()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[str, _Stage] = {}
    finished = {s.name for s in recipe.stages if done(out, s) is not None}  # grows as stages end
    resuming: set[str] = set()  # stopped to change their share

    def launch(name: str, threads: int) -> _Stage:
        command = [sys.executable, "-m", "arlon.cli", "recipe", source, "--out", str(out)]
        command += ["--resume", "--stages", name, *flags]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env[PARENT_ENV] = str(os.getpid())
        with (out / "logs" / f"{name}.log").open("a") as log:
            # a session of its own: a Ctrl-C at the terminal reaches the scheduler alone, which
            # stops each stage with one SIGTERM (a second signal would stop it at once)
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return _Stage(process, threads)

    with _StopRequests() as stop:
        try:
            while stop.signum is None:
                for name, stage in list(running.items()):
                    code = stage.process.poll()
                    if code is None:
                        continue
                    del running[name]
                    if code == 0 and done(out, recipe.stage(name)) is not None:
                        finished.add(name)
                        print(f"recipe: stage {name} done", flush=True)
                    elif stage.signalled and code in _STOPPED:
                        resuming.add(name)  # ready again: resumed below with its new share
                    else:
                        log = out / "logs" / f"{name}.log"
                        raise ArlonError(
                            f"stage {name!r} stopped with exit status {code}: see {log}"
                        )
                ready = [
                    s.name
                    for s in recipe.stages
                    if s.name not in running
                    and s.name not in finished
                    and finished.issuperset(s.inputs())
                ]
                if not running and not ready:
                    return out / recipe.stages[-1].name
                shares = thread_shares([*running, *ready], cores)
                for name, stage in running.items():
                    if shares[name] != stage.threads and recipe.stage(name).kind == "train":
                        stage.stop()  # it checkpoints and exits; resumed once it has
                for name in ready:
                    running[name] = launch(name, shares[name])
                    how = "resumed" if name in resuming else "started"
                    resuming.discard(name)
                    print(
                        f"recipe: stage {name} {how} with {shares[name]} thread(s), its output "
                        f"in {out / 'logs' / name}.log",
                        flush=True,
                    )
                time.sleep(poll)
        finally:
            _stop_all(running, stop)
    raise Stopped(128 + stop.signum, "each stage checkpointed: --resume continues")


def _stop_all(running: dict[str, _Stage], stop: _StopRequests) -> None:
    """SIGTERM every stage once, then wait until each has checkpointed and exited."""
    for stage in running.values():
        stage.stop()
    for stage in running.values():
        stop.waiting_for = [
            f"{name} (pid {s.process.pid})"
            for name, s in running.items()
            if s.process.poll() is None
        ]
        stage.process.wait()
    stop.waiting_for = []


def available_cores() -> int:
    """The cores this process may run on: its affinity where the system has one, within the
    container's CPU quota (cgroup v2 `cpu.max`) where it has one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 here (macOS, cgroup v1)
        pass
    return cores or 1


def die_with_parent() -> None:
    """In a stage's process started by `run_parallel`: SIGTERM (a checkpoint, as the scheduler's
    own stop) when the scheduler dies, on Linux; at once if it has died already."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)

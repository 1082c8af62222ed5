"""`arlon recipe NAME --out DIR --parallel`: each stage of a recipe in a process of its own, as
soon as the stages it reads are finished, the machine's cores shared among those running.

On two CPU cores the AR trains on one beside the baseline and ARLON's DiT on the other, and has
both once they are done: a training stage whose share changes is stopped (one SIGTERM: it
checkpoints its step) and resumed with the new share, exactly (`arlon recipe ... --resume
--stages NAME`). Each stage's output goes to OUT/logs/NAME.log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from arlon.errors import ArlonError
from arlon.training.recipe import Recipe, check_run, done


def thread_shares(stages: list[str], cores: int) -> dict[str, int]:
    """The cores shared among the stages that run at once, in order: a thread at least each, the
    first ones one more while some are left."""
    base, extra = divmod(cores, len(stages))
    return {name: max(1, base + (i < extra)) for i, name in enumerate(stages)}


def run_parallel(
    recipe: Recipe, source: str, out: Path, resume: bool, flags: list[str], poll: float = 1.0
) -> Path:
    """Run every unfinished stage in a process of its own (`arlon recipe SOURCE --out OUT --resume
    --stages NAME FLAGS`) as soon as the stages it reads are finished, the cores shared among those
    running (`thread_shares`): on a CPU the AR trains beside the baseline and ARLON's DiT, and has
    every core once they are done. A training stage whose share changes is stopped (it checkpoints
    its step) and resumed with the new one, exactly. Each stage's output goes to OUT/logs/NAME.log.
    A stage that fails stops the others; Ctrl-C or SIGTERM stops them all, each checkpointed."""
    check_run(recipe, out, resume)
    cores = available_cores()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, int]] = {}
    finished = {s.name for s in recipe.stages if done(out, s) is not None}  # grows as stages end

    def launch(name: str, threads: int) -> subprocess.Popen:
        command = [sys.executable, "-m", "arlon.cli", "recipe", source, "--out", str(out)]
        command += ["--resume", "--stages", name, *flags]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with (out / "logs" / f"{name}.log").open("a") as log:
            # a session of its own: a Ctrl-C at the terminal reaches this process alone, which
            # stops each stage with one SIGTERM (a second signal would stop it at once)
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    try:
        while True:
            for name, (process, _) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode != 0 or done(out, recipe.stage(name)) is None:
                    log = out / "logs" / f"{name}.log"
                    raise ArlonError(
                        f"stage {name!r} stopped with exit status {process.returncode}: see {log}"
                    )
                finished.add(name)
                print(f"recipe: stage {name} done", flush=True)
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
            for name, (process, threads) in list(running.items()):
                if shares[name] != threads and recipe.stage(name).kind == "train":
                    _stop(process)
                    running[name] = (launch(name, shares[name]), shares[name])
                    print(f"recipe: stage {name} resumed with {shares[name]} thread(s)", flush=True)
            for name in ready:
                running[name] = (launch(name, shares[name]), shares[name])
                print(
                    f"recipe: stage {name} started with {shares[name]} thread(s), its output in "
                    f"{out / 'logs' / name}.log",
                    flush=True,
                )
            time.sleep(poll)
    finally:
        for process, _ in running.values():
            _stop(process)


def available_cores() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):  # not on macOS
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, as Ctrl-C: a training stage finishes its step, checkpoints and exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait()

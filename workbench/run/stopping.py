"""Stopping when asked to: SIGTERM (what a scheduler sends before it preempts a job) or SIGINT (Ctrl-C).

A worker that receives either sets STOP; every training run in it then saves a checkpoint at the end of
its current step and raises Interrupted. Its MLflow run is marked KILLED and its Optuna trial failed
(user attr `interrupted`) with a copy queued at once, so the next worker or launch continues it from that checkpoint.
A launcher that receives either sends SIGTERM to its workers and waits for them (they are started with
SIGINT ignored, so a Ctrl-C reaches them once, through the launcher), then ends its parent run as KILLED.
"""
from __future__ import annotations

import os
import signal
import threading
import time

STOP = threading.Event()  # set in a process that was asked to stop; training checks it after every step
requested: list[str] = []  # in a worker: the signal that set STOP
INTERRUPTED = "interrupted"  # the user attr of a trial stopped on request: the step its cell was checkpointed at
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as a shell reports it


class Interrupted(RuntimeError):
    """A run stopped on request after saving a checkpoint at `step`."""

    def __init__(self, step: int):
        super().__init__(f"stopped on request at step {step}, checkpoint saved; a rerun continues from it")
        self.step = step


def worker_stops_on_signals() -> None:
    """In a worker: SIGTERM sets STOP, and SIGINT too unless the launcher had it ignored. Optuna, which
    logs every trial that ends by an exception, is quieted to errors from then on: a stop is not a fault."""
    import optuna

    def request(signum, frame):
        requested.append(signal.Signals(signum).name)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        STOP.set()

    STOP.clear()
    requested.clear()
    signal.signal(signal.SIGTERM, request)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, request)


class Launcher:
    """A launcher's side: `start(processes)` starts workers with SIGINT ignored; after SIGINT or SIGTERM,
    `requested` names the signal and `stop(processes)` asks the workers to checkpoint and waits for them
    (grace_s seconds, WB_STOP_GRACE_S; then they are killed and the next launch finds them by heartbeat)."""

    def __init__(self, grace_s: float | None = None):
        self.requested: str | None = None
        self.grace_s = float(os.environ.get("WB_STOP_GRACE_S", 120)) if grace_s is None else grace_s
        self._previous = {s: signal.signal(s, self._request) for s in (signal.SIGINT, signal.SIGTERM)}

    def _request(self, signum, frame) -> None:
        self.requested = self.requested or signal.Signals(signum).name

    def start(self, processes) -> None:
        ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the spawned interpreters
        try:
            for process in processes:
                process.start()
        finally:
            signal.signal(signal.SIGINT, ignored)

    def stop(self, processes) -> int:
        """SIGTERM to every live worker, then waits; returns how many had to be killed."""
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.grace_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        stuck = [p for p in processes if p.is_alive()]
        for process in stuck:
            process.kill()
            process.join()
        return len(stuck)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

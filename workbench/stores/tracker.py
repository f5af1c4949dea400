"""The MLflow tracker of a cell's training run: buffered metric rows with backoff on a store that drops
out, shared checkpoints, and MLflow's system-metrics monitor on GPUs."""
from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from workbench.stores.layout import reason
from workbench.stores.queries import SHARED_CHECKPOINT

_sleep = time.sleep  # the tracker's backoff (the fault tests count the pauses instead of waiting)


class TrackingLost(RuntimeError):
    """The tracking store did not take the buffered metric values for longer than the tracker waits."""


def retry_seconds() -> float:
    """How long a tracker keeps retrying a tracking store that does not answer (WB_TRACKING_RETRY_S)."""
    return float(os.environ.get("WB_TRACKING_RETRY_S", 300))


def system_metrics(client: MlflowClient, run_id: str, on_gpu: bool, resume: bool = False):
    """MLflow's own system-metrics monitor on a run that trains on a GPU (GPU utilisation and memory, CPU, disk,
    network, as system/... metrics every 10 s), started; None on the CPU unless WB_SYSTEM_METRICS=1 asks for it.
    Stop it with .finish()."""
    if not (on_gpu or os.environ.get("WB_SYSTEM_METRICS") == "1"):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=client.tracking_uri)
    monitor.start()
    return monitor


class MlflowTracker:
    """Buffers metric rows and sends them with MlflowClient.log_batch every `flush_rows` rows.

    One synchronous call per training step would cost more than the step itself on small models;
    `seconds` accumulates the time spent here so the overhead can be reported.

    A store that fails a flush (a server restarting, a network drop, a locked database) is retried with
    exponential backoff (1 s, 2 s, ... 30 s) for up to `retry_s` seconds while training waits; the values
    stay buffered. Past that, TrackingLost: the cell fails, its checkpoint (saved only after a flush went
    through) is kept, and a rerun logs what the store does not hold.
    """

    def __init__(self, client, run_id: str, flush_rows: int = 20, logged: dict[str, int] | None = None,
                 retry_s: float | None = None, share_checkpoints: bool = False):
        """logged: a resumed run's last logged step per metric; values up to it are in the store already
        (a run resumes from a checkpoint at or before it), so they are not logged twice. share_checkpoints:
        upload every checkpoint to the run (artifact checkpoint/checkpoint.pt)."""
        self.client, self.run_id, self.flush_rows, self.logged = client, run_id, flush_rows, logged or {}
        self.share_checkpoints = share_checkpoints
        self.retry_s = retry_seconds() if retry_s is None else retry_s
        self.buffer: list = []
        self.rows = 0
        self.seconds = 0.0
        self.lost: TrackingLost | None = None  # set once the store stayed away past retry_s

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(value), now, step) for key, value in metrics.items()
                        if step > self.logged.get(key, 0)]
        self.rows += 1
        self.seconds += time.perf_counter() - start
        if self.rows % self.flush_rows == 0:
            self.flush()  # counts its own time

    def flush(self) -> None:
        start = time.perf_counter()
        while self.buffer:
            self._retrying(lambda: self.client.log_batch(self.run_id, metrics=self.buffer[:1000]),
                           f"{len(self.buffer)} metric values")  # MLflow takes at most 1000 per batch
            del self.buffer[:1000]
        self.seconds += time.perf_counter() - start

    def checkpointed(self, path: Path) -> None:
        if self.share_checkpoints:
            start = time.perf_counter()
            self._retrying(lambda: self.client.log_artifact(self.run_id, str(path), SHARED_CHECKPOINT), "a checkpoint")
            self.seconds += time.perf_counter() - start

    def _retrying(self, call, what: str) -> None:
        waited, delay = 0.0, 1.0
        while True:
            try:
                return call()
            except Exception as err:
                if getattr(err, "error_code", "") == "INVALID_PARAMETER_VALUE":  # a bad value: retrying cannot help
                    raise
                if waited >= self.retry_s:
                    self.lost = TrackingLost(
                        f"the tracking store did not take {what} of run {self.run_id} for {waited:.0f} s "
                        f"({reason(err)}); the cell's last checkpoint is kept, rerun to continue")
                    raise self.lost from err
                pause = min(delay, self.retry_s - waited)
                _sleep(pause)
                waited, delay = waited + pause, min(2 * delay, 30.0)

"""Trackers: where a training run sends its metric rows. Training calls a tracker, never MLflow."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class JsonlTracker:
    """Appends one JSON row per log call to run_dir/metrics.jsonl.

    On resume from step s, rows after s are dropped first: they are about to be recomputed.
    """

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [row for row in rows if row["step"] <= resume_step]
            path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        elif resume_step is None:
            path.write_text("")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def write_eval(run_dir: Path, info: dict, num_samples: int, metrics: dict[str, float]) -> None:
    """run_dir/eval.json: the scores with the feature set and sample count they were measured with."""
    record = {**info, "num_samples": num_samples, "metrics": metrics}
    (run_dir / "eval.json").write_text(json.dumps(record, indent=2))


class MlflowTracker:
    """Buffers metric rows and sends them with MlflowClient.log_batch every `flush_rows` rows.

    One synchronous call per training step would cost more than the step itself on small models;
    `seconds` accumulates the time spent here so the overhead can be reported.
    """

    def __init__(self, client, run_id: str, flush_rows: int = 20):
        self.client, self.run_id, self.flush_rows = client, run_id, flush_rows
        self.buffer: list = []
        self.rows = 0
        self.seconds = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        start = time.perf_counter()
        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.rows += 1
        if self.rows % self.flush_rows == 0:
            self.flush()
        self.seconds += time.perf_counter() - start

    def flush(self) -> None:
        start = time.perf_counter()
        for i in range(0, len(self.buffer), 1000):  # MLflow accepts at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=self.buffer[i:i + 1000])
        self.buffer = []
        self.seconds += time.perf_counter() - start

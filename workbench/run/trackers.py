"""Where a training run writes its metric rows: the Tracker protocol, a JSONL file beside the run (`wb
train`), nothing (a data-parallel rank other than 0); and eval.json. MLflow's tracker: stores/tracker.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...  # called before every checkpoint

    def checkpointed(self, path: Path) -> None: ...  # called after every checkpoint


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

    def flush(self) -> None:
        """Rows are written as they come."""

    def checkpointed(self, path: Path) -> None:
        """The checkpoint stays in the run folder."""


class NullTracker:
    """Logs nothing: the tracker of a data-parallel rank other than 0 (rank 0 logs for the run)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def checkpointed(self, path: Path) -> None:
        pass


def write_eval(run_dir: Path, info: dict, num_samples: int, metrics: dict[str, float]) -> None:
    """run_dir/eval.json: the scores with the feature set and sample count they were measured with."""
    record = {**info, "num_samples": num_samples, "metrics": metrics}
    (run_dir / "eval.json").write_text(json.dumps(record, indent=2))

"""One cell of a study or one seed of a search trial: train -> pictures -> evaluate, recorded as an MLflow
child run of the study's (or search's) parent run."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Generator
from pathlib import Path

import torch
from mlflow import MlflowClient

from workbench import tracking
from workbench.config import RunConfig, flatten
from workbench.evaluate import evaluator_for
from workbench.pictures import save_run_pictures
from workbench.studies import Cell, Study
from workbench.train import TrainResult, training


class CellRun:
    """A training run as an MLflow child run: created (params logged) on construction; `training()` is
    the train generator (metric curves go to the run); `finish(result)` uploads the pictures, eval.json and
    EMA weights and marks it FINISHED; `end(status, tags)` closes it otherwise (FAILED, KILLED)."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str],
                 config: RunConfig):
        self.started = time.perf_counter()
        self.client, self.config = client, config
        self.run_id = tracking.start_run(client, experiment_id, run_name, tags)
        tracking.log_cell(client, self.run_id, flatten(config))
        self.tracker = tracking.MlflowTracker(client, self.run_id)
        self.tracker.seconds = time.perf_counter() - self.started  # run creation and params count as tracking
        self._folder = tempfile.TemporaryDirectory()
        self.run_dir = Path(self._folder.name) / "run"
        self.ended = False

    def training(self) -> Generator[tuple[int, dict[str, float]], None, TrainResult]:
        return training(self.config, self.run_dir, tracker=self.tracker, progress=False,
                        evaluator=evaluator_for(self.config))

    def finish(self, result: TrainResult, tags: dict[str, str] | None = None) -> dict[str, float]:
        save_run_pictures(result.ema, result.data, self.config, self.run_dir, scored=True)
        uploads = time.perf_counter()
        self.tracker.flush()
        torch.save(result.ema.state_dict(), self.run_dir / "ema.pt")
        tracking.log_cell(self.client, self.run_id, {}, self.run_dir)
        self.tracker.seconds += time.perf_counter() - uploads
        tracking.log_cell(self.client, self.run_id, {}, finals={
            "wb_wall_seconds": time.perf_counter() - self.started, "wb_tracking_seconds": self.tracker.seconds})
        self.end("FINISHED", tags)
        return result.metrics

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        """Flushes the curves logged so far, sets `tags`, terminates the run with `status` (once)."""
        if self.ended:
            return
        self.ended = True
        try:
            self.tracker.flush()
        finally:
            tracking.end_run(self.client, self.run_id, status, tags)
            self._folder.cleanup()


def run_cell(study: Study, cell: Cell, client: MlflowClient, experiment_id: str, parent_run_id: str,
             on_start=None) -> dict[str, float]:
    """Trains and evaluates one cell as an MLflow child run; returns its final metrics.

    on_start(run_id) is called once the MLflow run exists (the scheduler records it with the trial).
    """
    tags = tracking.cell_tags(study.name, cell.settings, cell.seed, cell.key, parent_run_id)
    run = CellRun(client, experiment_id, cell.run_name, tags, cell.config)
    if on_start:
        on_start(run.run_id)
    try:
        steps = run.training()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return run.finish(done.value)
    except BaseException as err:
        run.end("FAILED", {tracking.FAIL_REASON: tracking.reason(err)})
        raise

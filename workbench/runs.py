"""One cell of a study: train -> pictures -> evaluate, recorded as an MLflow child run of the study's parent run."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from workbench import tracking
from workbench.config import flatten
from workbench.evaluate import evaluator_for
from workbench.pictures import save_run_pictures
from workbench.studies import Cell, Study
from workbench.train import train


def run_cell(study: Study, cell: Cell, client: MlflowClient, experiment_id: str, parent_run_id: str,
             on_start=None) -> dict[str, float]:
    """Trains and evaluates one cell as an MLflow child run; returns its final metrics.

    on_start(run_id) is called once the MLflow run exists (the scheduler records it with the trial).
    """
    started = time.perf_counter()
    tags = tracking.cell_tags(study.name, cell.settings, cell.seed, cell.key, parent_run_id)
    run_id = client.create_run(experiment_id, run_name=cell.run_name, tags=tags).info.run_id
    if on_start:
        on_start(run_id)
    tracking.log_cell(client, run_id, flatten(cell.config))
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.seconds = time.perf_counter() - started  # run creation and params count as tracking
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_dir = Path(folder) / "run"
            result = train(cell.config, run_dir, tracker=tracker, progress=False, evaluator=evaluator_for(cell.config))
            save_run_pictures(result.ema, result.data, cell.config, run_dir, scored=True)
            uploads = time.perf_counter()
            tracker.flush()
            torch.save(result.ema.state_dict(), run_dir / "ema.pt")
            tracking.log_cell(client, run_id, {}, run_dir)
            tracker.seconds += time.perf_counter() - uploads
        tracking.log_cell(client, run_id, {}, finals={"wb_wall_seconds": time.perf_counter() - started,
                                                      "wb_tracking_seconds": tracker.seconds})
        client.set_terminated(run_id, "FINISHED")
        return result.metrics
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise

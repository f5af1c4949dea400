"""One cell of a study: train -> evaluate, recorded as an MLflow child run of the study's parent run."""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from workbench.config import flatten
from workbench.evaluate import evaluator_for
from workbench.studies import Cell, Study
from workbench.tracking import MlflowTracker
from workbench.pictures import save_run_pictures
from workbench.train import train


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cell_tags(study: Study, cell: Cell, parent_run_id: str) -> dict[str, str]:
    tags = {"mlflow.parentRunId": parent_run_id, "wb.study": study.name, "wb.seed": str(cell.seed),
            "wb.config_hash": cell.key, "wb.git_commit": git_commit(),
            "wb.worker": f"{socket.gethostname()}:{os.getpid()}"}  # which machine and process trained it
    for name, label in cell.settings:
        tags[f"wb.axis.{name}"] = label
    tags["wb.axis"] = ",".join(name for name, _ in cell.settings)
    tags["wb.value"] = ",".join(label for _, label in cell.settings)
    return tags


def run_cell(study: Study, cell: Cell, client: MlflowClient, experiment_id: str, parent_run_id: str,
             on_start=None) -> dict[str, float]:
    """Trains and evaluates one cell as an MLflow child run; returns its final metrics.

    on_start(run_id) is called once the MLflow run exists (the scheduler records it with the trial).
    """
    started = time.perf_counter()
    run = client.create_run(experiment_id, run_name=cell.run_name,
                            tags=cell_tags(study, cell, parent_run_id))
    run_id = run.info.run_id
    if on_start:
        on_start(run_id)
    client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in flatten(cell.config).items()])
    tracker = MlflowTracker(client, run_id)
    tracker.seconds = time.perf_counter() - started  # run creation and params count as tracking
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_dir = Path(folder) / "run"
            result = train(cell.config, run_dir, tracker=tracker, progress=False, evaluator=evaluator_for(cell.config))
            save_run_pictures(result.ema, result.data, cell.config, run_dir, scored=True)
            uploads = time.perf_counter()
            tracker.flush()
            torch.save(result.ema.state_dict(), run_dir / "ema.pt")
            for name in ("config.json", "eval.json", "ema.pt"):
                client.log_artifact(run_id, str(run_dir / name))
            for picture in sorted(run_dir.glob("samples*.png")):  # samples.png, samples_2nfe.png, ...
                client.log_artifact(run_id, str(picture))
            tracker.seconds += time.perf_counter() - uploads
        wall = time.perf_counter() - started
        client.log_batch(run_id, metrics=[Metric("wb_wall_seconds", wall, int(time.time() * 1000), 0),
                                          Metric("wb_tracking_seconds", tracker.seconds, int(time.time() * 1000), 0)])
        client.set_terminated(run_id, "FINISHED")
        return result.metrics
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise

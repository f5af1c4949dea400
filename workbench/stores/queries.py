"""Reads of the MLflow record: a run's state, metric history and artifacts, a cell's finished or
unfinished run."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from workbench.stores.layout import AXIS, CONFIG_HASH, PARENT, REFERENCES, STUDY_FILE
from workbench.stores.urls import StoreError


def is_running(client: MlflowClient, run_id: str) -> bool:
    return client.get_run(run_id).info.status == "RUNNING"


def resumable_run(client: MlflowClient, run_id: str, experiment: str) -> Run | None:
    """The run `run_id` if it exists in `experiment` and has not finished (a dead attempt to continue)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.experiment_id == experiment and run.info.status != "FINISHED" else None


SHARED_CHECKPOINT = "checkpoint"  # the artifact folder of a cell's last checkpoint (--share-checkpoints)


def shared_attempt(client: MlflowClient, experiment: str, parent_id: str, key: str) -> Run | None:
    """An unfinished child run of the parent with config hash `key` that uploaded a checkpoint (a cell
    whose machine was lost), or None."""
    runs = client.search_runs([experiment], f"tags.`{PARENT}` = '{parent_id}' and tags.`{CONFIG_HASH}` = '{key}' "
                              "and attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"])
    for run in runs:
        if any(a.path == f"{SHARED_CHECKPOINT}/checkpoint.pt" for a in client.list_artifacts(run.info.run_id,
                                                                                               SHARED_CHECKPOINT)):
            return run
    return None


def last_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """Metric name -> the last step at which the run logged it (a resumed run logs only later steps)."""
    metrics = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=0) for key in metrics}


def metric_history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric of a run."""
    return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]


def download(client: MlflowClient, run_id: str, name: str, folder: Path) -> Path | None:
    """A run's artifact `name` downloaded into folder, or None if the run has none by that name."""
    folder_name = name.rsplit("/", 1)[0] if "/" in name else None
    if name not in {a.path for a in client.list_artifacts(run_id, folder_name)}:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(folder)))


def references(client: MlflowClient, parent: Run) -> dict | None:
    """The reference scores logged with a parent run (2D data with exact references), or None: none logged
    (other data, or a store written before they were)."""
    with tempfile.TemporaryDirectory() as folder:
        path = download(client, parent.info.run_id, REFERENCES, Path(folder))
        return json.loads(path.read_text()) if path is not None else None


def study_text(client: MlflowClient, parent: Run) -> str | None:
    """The study file logged with a parent run, or None (recorded by an older wb ablate)."""
    if STUDY_FILE not in {a.path for a in client.list_artifacts(parent.info.run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(parent.info.run_id, STUDY_FILE, folder)).read_text()


def finished_child(client: MlflowClient, parent_id: str, key: str) -> Run | None:
    """The FINISHED child run of the parent with config hash `key`, or None."""
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`{PARENT}` = '{parent_id}' and tags.`{CONFIG_HASH}` = '{key}' "
                              "and attributes.status = 'FINISHED'", max_results=1)
    return runs[0] if runs else None


def axis_label(run: Run, axis_name: str) -> str | None:
    return run.data.tags.get(f"{AXIS}.{axis_name}")


def model_files(tracking_uri: str, run_id: str, which: str, folder: Path) -> tuple[Path, Path]:
    """A finished run's config.json and EMA weights (ema.pt, or ema_<which>.pt), downloaded into folder."""
    client, name = MlflowClient(tracking_uri), f"ema_{which}.pt" if which else "ema.pt"
    try:
        config_file, weights = (download(client, run_id, file, folder) for file in ("config.json", name))
    except Exception as err:  # an unknown run id: MLflow's own message says which
        raise StoreError(f"MLflow run {run_id!r} at {tracking_uri}: {err}") from None
    if config_file is None or weights is None:
        raise StoreError(f"MLflow run {run_id!r} has no {'config.json' if config_file is None else name} artifact "
                         "(weights are logged when a cell finishes; 'raw' only in a run folder's checkpoint)")
    return config_file, weights

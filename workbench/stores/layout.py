"""The MLflow run layout of a study, and every write to it.

An experiment named after the study; one parent run tagged wb.role = study (its description as the run
note, the study file as run as the artifact study.toml); one child run per cell (tag mlflow.parentRunId),
tagged with the cell's config hash, seed, axis labels, commit and worker, holding params, metric curves,
final scores and artifacts (config.json, eval.json, ema.pt, samples*.png). A search (`wb search`) has its
own parent run in the same experiment, tagged wb.role = search, and one child run per (trial, seed),
tagged wb.trial and wb.trial_state (complete, pruned, failed; a failed one also wb.fail_reason).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from workbench.evaluate.names import with_sampler

PARENT = MLFLOW_PARENT_RUN_ID
NOTE = MLFLOW_RUN_NOTE
ROLE = "wb.role"  # "study" on an ablation's parent run, "search" on a search's
STUDY = "wb.study"
CONFIG_HASH = "wb.config_hash"  # a cell's identity (studies.config_hash)
SEED = "wb.seed"
COMMIT = "wb.git_commit"
WORKER = "wb.worker"  # host:pid that trained the cell
GPUS = "wb.gpus"  # the worker's CUDA_VISIBLE_DEVICES (wb ablate/search --gpus), when set
DEVICE = "wb.device"  # the device the cell trained on, e.g. "cuda:0 (NVIDIA H200)" or "cpu"
AXIS = "wb.axis"  # comma-joined axis names; wb.axis.<name> = the cell's label on that axis
VALUE = "wb.value"  # comma-joined labels
CONFIRMATION = "wb.confirmation"  # a search's parent run: the study that confirms its best trial
CONFIRMATION_FILE = "wb.confirmation_file"  # and the study file the search wrote it to
CONFIRMS = "wb.confirms"  # that study's parent run: the search it confirms
TRIAL = "wb.trial"  # a search's child run: its Optuna trial number
TRIAL_STATE = "wb.trial_state"  # complete | pruned | failed (the Optuna state; MLflow: FINISHED, KILLED, FAILED)
FAIL_REASON = "wb.fail_reason"  # why a run failed: the exception, one line ("Diverged: ..." for NaN/inf)
DIVERGED_PREFIX = "Diverged"  # the start of a diverged run's fail reason (workbench.run.train.Diverged)
ATTEMPTS = "wb.attempts"  # a cell's run continued from a dead attempt's checkpoint: how many attempts it took
STUDY_FILE = "study.toml"  # the parent run's artifact: the study file as run
REFERENCES = "references.json"  # the parent run's artifact: the scores of reference samplers on 2D data


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# MLflow 3's UI opens an experiment in the view this tag names; without it, in the GenAI view (traces)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, artifacts: str | None) -> str:
    """The experiment of study `name`, created with its artifacts under `artifacts`/<name> if new (None:
    where the tracking server puts them), tagged to open in the MLflow UI's model-training view."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=f"{artifacts}/{name}" if artifacts else None,
                                        tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


VIEW_KEY = "wb"  # the experiment's shared runs-table view (tag mlflow.sharedViewState.wb), opened by view_url()


def share_view(client: MlflowClient, experiment_id: str, metric: str, axis_keys: list[str], labels: list[str]) -> None:
    """The runs table as a study is read: every run flat, sorted by the metric, with columns for the
    metric (and its 2-NFE score), each setting's mean on the parent run, the axes' params and the seed.
    MLflow 3's table shows no metric column until one is ticked; its shared views (a JSON experiment tag,
    opened with ?viewStateShareKey=) are how a link opens with them."""
    columns = ["attributes.`Run Name`", f"metrics.`{metric}`", f"metrics.`{with_sampler(metric, '2nfe')}`",
               *(f"metrics.`{metric}/{metric_key(label)}`" for label in labels),
               *(f"params.`{key}`" for key in axis_keys), f"tags.`{SEED}`"]
    state = {"selectedColumns": columns, "orderByKey": f"metrics.`{metric}`", "orderByAsc": True}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))


def view_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in the MLflow UI at `base`: the model-training view, the shared table view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def metric_key(text: str) -> str:
    """A setting's label as part of an MLflow metric name (letters, digits, _ - . / and spaces)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text.replace("%", "pct"))


def log_setting_means(client: MlflowClient, parent_id: str, metric: str) -> dict[str, float]:
    """On the study's parent run: the mean of `metric` over the finished cells of each setting (tag
    wb.value), as metrics `<metric>/<setting>`, so the parent row of the runs table shows the result."""
    by_setting: dict[str, list[float]] = {}
    for run in child_runs(client, parent_id, status="FINISHED"):
        if metric in run.data.metrics and VALUE in run.data.tags:
            by_setting.setdefault(run.data.tags[VALUE], []).append(run.data.metrics[metric])
    means = {f"{metric}/{metric_key(setting)}": sum(v) / len(v) for setting, v in by_setting.items()}
    if means:
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in means.items()])
    return means


def find_parent(client: MlflowClient, name: str, role: str = "study") -> Run | None:
    """The parent run `wb ablate` (role "study") or `wb search` (role "search") recorded for study `name`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = '{role}'", max_results=1)
    return parents[0] if parents else None


def parent_run(client: MlflowClient, experiment: str, name: str, description: str, study_text: str,
               role: str = "study") -> str:
    """The study's (or search's) parent run id, created if new; the study file as run now is (re)logged
    with it, so a report can be rendered from the tracking store alone."""
    parent = find_parent(client, name, role)
    run_name = name if role == "study" else f"{name} ({role})"
    run_id = parent.info.run_id if parent else client.create_run(experiment, run_name=run_name, tags={
        ROLE: role, STUDY: name, COMMIT: git_commit(), NOTE: description}).info.run_id
    client.log_text(run_id, study_text, STUDY_FILE)
    return run_id


def start_run(client: MlflowClient, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """A new (child) run; returns its id."""
    return client.create_run(experiment, run_name=run_name, tags=tags).info.run_id


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str] | None = None,
            keep_end_time: bool = False) -> None:
    """Sets `tags`, then the run's status (FINISHED, FAILED, KILLED); keep_end_time leaves its end time as it
    was (a parent run whose study had nothing left to run still spans the study's wall time)."""
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    if keep_end_time:
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status)


def end_orphan(client: MlflowClient, run_id: str, reason: str) -> None:
    """A run its worker left RUNNING (the worker died): KILLED, with the reason (a search's run also tagged
    wb.trial_state = failed); a run that ended already is left as it is."""
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        end_run(client, run_id, "KILLED", {FAIL_REASON: reason, **({TRIAL_STATE: "failed"} if TRIAL in run.data.tags else {})})


def reopen(client: MlflowClient, run_id: str, tags: dict[str, str] | None = None) -> None:
    """A parent run whose study (or search) is running again, or a cell's run continued by a new attempt
    (its earlier fail reason dropped, `tags` set)."""
    run = client.get_run(run_id)
    if FAIL_REASON in run.data.tags:
        client.delete_tag(run_id, FAIL_REASON)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status="RUNNING")


def reason(err: BaseException) -> str:
    """An exception as the one line a failed run's wb.fail_reason tag holds."""
    text = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return text[:500]


def child_runs(client: MlflowClient, parent_id: str, status: str | None = None) -> list[Run]:
    """Every child run of a parent run (optionally only those with `status`), all pages."""
    experiment = client.get_run(parent_id).info.experiment_id
    query = f"tags.`{PARENT}` = '{parent_id}'" + (f" and attributes.status = '{status}'" if status else "")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def cell_tags(study: str, settings: tuple[tuple[str, str], ...], seed: int, key: str, parent_id: str) -> dict[str, str]:
    """The tags of a cell's child run."""
    tags = {PARENT: parent_id, STUDY: study, SEED: str(seed), CONFIG_HASH: key, COMMIT: git_commit(),
            WORKER: f"{socket.gethostname()}:{os.getpid()}"}
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        tags[GPUS] = os.environ["CUDA_VISIBLE_DEVICES"]
    tags |= {f"{AXIS}.{name}": label for name, label in settings}
    return tags | {AXIS: ",".join(name for name, _ in settings), VALUE: ",".join(label for _, label in settings)}


CELL_ARTIFACTS = ("config.json", "eval.json", "ema.pt")  # and every samples*.png and ema_*.pt (train.ema_decays)


def log_cell(client: MlflowClient, run_id: str, params: dict, run_dir: Path | None = None,
             finals: dict[str, float] | None = None) -> None:
    """A cell's params (values cut to MLflow's 500 characters), or its artifacts from run_dir and its
    final bookkeeping metrics (step 0)."""
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    if run_dir is not None:
        for name in CELL_ARTIFACTS:
            client.log_artifact(run_id, str(run_dir / name))
        for picture in sorted(run_dir.glob("samples*.png")):  # samples.png, samples_2nfe.png, ...
            client.log_artifact(run_id, str(picture))
        for weights in sorted(run_dir.glob("ema_*.pt")):
            client.log_artifact(run_id, str(weights))
    if finals:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in finals.items()])

"""The Optuna side of the record: the storage every queue uses (heartbeats, claims made atomic on SQLite)
and the trial attributes the queues write and the reports read.

A cell of an ablation and a trial of a search are both Optuna trials. A worker that dies leaves its trial
without heartbeat: Optuna fails it and queues a copy (same params, user attributes and pruner reports;
`continued_trial` says which trial the copy continues), and the copy's worker continues each of its runs
from the checkpoint in its cell folder.
"""
from __future__ import annotations

import optuna
from filelock import FileLock
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from workbench.stores.urls import Stores

# User attributes of a trial.
CELL = "cell"  # an ablation's trial: the cell's config hash
NAME = "name"  # an ablation's trial: the cell's run name
RUN_IDS = "mlflow_run_ids"  # the MLflow runs the trial trains (one per seed of a search trial)
RUN_ID = "mlflow_run_id"  # the same, as stores written before RUN_IDS hold it (one run per trial)
QUEUED = "queued"  # a search's own trials (queued by its launcher); ask() can make others
FAILED = "fail_reason"  # failed in the objective (a search counts it towards its trials)
DIVERGED = "diverged"  # the training diverged (its reason); a result, not queued again
INTERRUPTED = "interrupted"  # stopped on request: the step its runs were checkpointed at
OVERRIDES = "overrides"  # a search trial: the config keys its params set
SEED_VALUES = "seed_values"  # a search trial: its first metric on each seed


class ClaimingStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, with every change of a trial's state made atomic on SQLite as well.

    A worker claims a WAITING trial by reading its state and writing RUNNING in one transaction (and a
    launcher fails a stale RUNNING one the same way); a database server row-locks the read (SELECT ...
    FOR UPDATE), SQLite ignores that, so two workers can both read WAITING and both train the cell, or
    two launchers both fail a stale trial and both queue its copy. On SQLite the change runs under a
    file lock beside the database file (every process that opens the file is on its machine)."""

    def __init__(self, url: str, **options):
        super().__init__(url, **options)
        self._claims = FileLock(url.removeprefix("sqlite:///") + ".claims.lock") if url.startswith("sqlite:///") else None

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if self._claims is None:
            return super().set_trial_state_values(trial_id, state, values)
        with self._claims:
            return super().set_trial_state_values(trial_id, state, values)


def storage(stores: Stores, max_retry: int) -> optuna.storages.RDBStorage:
    """The Optuna storage with heartbeats: a RUNNING trial whose worker died turns stale after grace_s, is
    failed, and a copy queued with its params and pruner reports, at most max_retry times per trial."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)
    return ClaimingStorage(stores.storage, heartbeat_interval=stores.heartbeat_s, grace_period=stores.grace_s,
                           heartbeat_stale_trial_callback=retry)


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A running trial as the storage holds it now."""
    return trial.study._storage.get_trial(trial._trial_id)


def queue_copy(trial: optuna.Trial) -> None:
    """Queues a copy of a running trial, as Optuna's heartbeat does for a dead worker's: the same params, user
    attributes and pruner reports, and the trial it continues."""
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(trial.study, frozen(trial))


def continued_trial(trial: optuna.Trial) -> int:
    """The first trial of the series this one continues (its own number when it is not a copy)."""
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen(trial))
    return trial.number if first is None else first


def run_ids(trial: FrozenTrial) -> list[str]:
    """The MLflow runs of a trial."""
    if RUN_IDS in trial.user_attrs:
        return list(trial.user_attrs[RUN_IDS])
    return [trial.user_attrs[RUN_ID]] if RUN_ID in trial.user_attrs else []


def search_name(study: str) -> str:
    """The Optuna study of study `study`'s search."""
    return f"{study}.search"


def waiting(trials_study: optuna.Study) -> list[FrozenTrial]:
    return trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def best_trial(trials_study: optuna.Study, first_direction: str) -> FrozenTrial | None:
    """The best complete trial; for several metrics, the Pareto-front trial best on the first."""
    front = trials_study.best_trials if trials_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else []
    if not front:
        return None
    sign = 1 if first_direction == "minimize" else -1
    return min(front, key=lambda t: sign * t.values[0])


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """A search's trials that count towards its N: finished, pruned, failed in their objective, running or
    queued. A trial failed by a lost heartbeat or stopped on request does not: its queued copy does."""
    return [t for t in trials if t.user_attrs.get(QUEUED) and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        or (t.state == TrialState.FAIL and FAILED in t.user_attrs))]

"""The one worker loop of `wb ablate`, `wb search` and `wb worker`: a queue (the cells of an ablation, the
trials of a search) over one prepare / work / finish.

prepare() creates the MLflow experiment, the parent run and the Optuna study before any worker starts
(concurrent first-time SQLite schema creation crashes), ends the runs a dead worker left RUNNING, and fills
the queue. work() pops queued trials until none is left (in a local worker process or in `wb worker` on
any machine sharing the stores). finish() ends the study once nothing runs or waits, whichever process gets
there: the parent run's status, and the queue's own conclusion (setting means, the search's confirmation).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from workbench.run.stopping import STOP, worker_stops_on_signals
from workbench.schedule import gpus
from workbench.stores import layout, queries, trials
from workbench.stores.urls import Stores
from workbench.study.study import Study, study_file_text


@dataclass(frozen=True)
class Progress:
    """Where a study's queue stands: one record for both kinds (a search has no diverged cells, an ablation
    prunes nothing)."""

    unit: str  # "cells" or "trials"
    total: int  # the cells of the study, the trials the search wants
    complete: int
    failed: int  # ended failed and not queued again (diverged ones included)
    running: tuple[str, ...]  # the names of the running cells or trials
    waiting: int
    pruned: int = 0
    diverged: int = 0
    interrupted: int = 0  # stopped on request at a checkpoint, queued again, not yet taken
    best: str = ""  # a search's best value so far, for the status line

    @property
    def ended(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def idle(self) -> bool:
        """Nothing runs or waits, here or on any machine."""
        return not self.running and not self.waiting


@dataclass(frozen=True)
class Parent:
    """The study's place in MLflow, as prepare() made it: what every worker records under."""

    experiment_id: str
    run_id: str


@dataclass
class Context:
    """What an objective needs besides its trial."""

    client: MlflowClient
    parent: Parent
    stores: Stores


class Queue(ABC):
    """One kind of study over the shared loop: what its Optuna study is, how it is filled, what a trial
    does, how far it is, and what happens when it is done."""

    unit: str  # "cells" or "trials"
    role: str  # the parent run's wb.role
    max_retry: int  # copies of a dead worker's trial queued at most

    def __init__(self, study: Study, stores: Stores):
        self.study, self.stores = study, stores

    @property
    @abstractmethod
    def optuna_name(self) -> str: ...

    @abstractmethod
    def open(self) -> optuna.Study:
        """The Optuna study on the storage (created if new)."""

    @abstractmethod
    def fill(self, trials_study: optuna.Study, client: MlflowClient, parent: Parent) -> None:
        """Queues what is missing."""

    @abstractmethod
    def objective(self, trial: optuna.Trial, context: Context) -> float | list[float]:
        """Runs one queued trial; its value."""

    @abstractmethod
    def progress(self, trials_study: optuna.Study) -> Progress: ...

    @abstractmethod
    def succeeded(self, progress: Progress) -> bool:
        """Whether an idle study ended as it should (the parent run FINISHED, else FAILED)."""

    def conclude(self, trials_study: optuna.Study, client: MlflowClient, parent: Parent, write: bool) -> dict:
        """What the finished study leaves besides its runs (setting means, a confirmation study), written unless
        another process finished the study first; a summary."""
        return {}

    def prepared(self, client: MlflowClient, parent: Parent) -> None:
        """Anything the study's experiment shows besides its runs, set once prepared."""
        return None

    def time_left(self, trials_study: optuna.Study, workers: int) -> float | None:
        """Seconds until the last trial ends, when the queue can tell."""
        return None

    def storage(self) -> optuna.storages.RDBStorage:
        return trials.storage(self.stores, self.max_retry)


def prepare(queue: Queue) -> tuple[Parent, optuna.Study]:
    """Creates (or finds) the experiment, parent run and Optuna study; closes orphaned runs; fills the queue."""
    study, client = queue.study, MlflowClient(queue.stores.tracking_uri)
    experiment = layout.experiment_id(client, study.name, queue.stores.artifacts)
    parent = Parent(experiment, layout.parent_run(client, experiment, study.name, study.description,
                                                  study_file_text(study), role=queue.role))
    queue.prepared(client, parent)
    log_references(client, parent, study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_study = queue.open()
    optuna.storages.fail_stale_trials(trials_study)
    close_orphans(client, trials_study)
    queue.fill(trials_study, client, parent)
    layout.reopen(client, parent.run_id)
    return parent, trials_study


def log_references(client: MlflowClient, parent: Parent, study: Study) -> None:
    """On 2D data with exact references: the scores of the reference samplers (the data's floor, the exact map,
    trivial samplers) at the study's evaluation settings, logged once with the parent run for its reports."""
    from workbench.config import RunConfig, with_overrides
    from workbench.data import EXACT_REFERENCES

    config = with_overrides(RunConfig(), study.base)
    if config.data.name not in EXACT_REFERENCES or layout.REFERENCES in {
            a.path for a in client.list_artifacts(parent.run_id)}:
        return
    from workbench.evaluate.toy import toy_references

    client.log_dict(parent.run_id, toy_references(config.data.name, config.eval.num_samples, config.eval.seed,
                                                  config.data.labels), layout.REFERENCES)


def close_orphans(client: MlflowClient, trials_study: optuna.Study) -> None:
    """The MLflow runs of trials failed by a lost heartbeat (their worker died) that no running copy took
    over still say RUNNING: they end KILLED, with the reason."""
    states = (TrialState.FAIL, TrialState.RUNNING)
    by_state = {state: trials_study.get_trials(deepcopy=False, states=(state,)) for state in states}
    taken = {run_id for trial in by_state[TrialState.RUNNING] for run_id in trials.run_ids(trial)}
    for trial in by_state[TrialState.FAIL]:
        for run_id in set(trials.run_ids(trial)) - taken:
            layout.end_orphan(client, run_id, "its worker stopped (no heartbeat); the trial was queued again "
                              "with the same params")


def record_runs(trial: optuna.Trial, client: MlflowClient):
    """on_start of a trial's runs: records them with the trial, and ends the runs of the dead attempt it
    copies that it did not continue (no checkpoint was left)."""
    dead = trials.run_ids(trial)

    def record(run_ids: list[str]) -> None:
        trial.set_user_attr(trials.RUN_IDS, run_ids)
        for run_id in set(dead) - set(run_ids):
            layout.end_orphan(client, run_id, "its worker stopped; continued from step 0 in another run (no "
                              "checkpoint was left)")
    return record


def work(queue: Queue, parent: Parent, threads: int, gpu: str | None = None) -> Progress | None:
    """Pops queued trials until none is left (one process, on any machine sharing the stores), on GPU `gpu`
    (its CUDA_VISIBLE_DEVICES) when given; the last one out finishes the study. Returns the progress it
    finished with, or None when stopped on request."""
    gpus.use(gpu)
    import torch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, GP sampler
    worker_stops_on_signals()
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    context = Context(MlflowClient(queue.stores.tracking_uri), parent, queue.stores)
    trials_study = queue.open()
    while not STOP.is_set() and trials.waiting(trials_study):
        # optimize() (not ask/tell) so Optuna's heartbeat thread covers the running trial
        trials_study.optimize(lambda trial: queue.objective(trial, context), n_trials=1, catch=(Exception,))
    return None if STOP.is_set() else finish(queue, trials_study, context.client, parent)[0]


def finish(queue: Queue, trials_study: optuna.Study, client: MlflowClient, parent: Parent,
           stopped_by: str | None = None, keep_end_time: bool = False) -> tuple[Progress, dict]:
    """Ends the study if nothing runs or waits anywhere (or it was stopped on request: KILLED): the parent
    run FINISHED or FAILED, the queue's conclusion written; a study another process finished already is left
    as it ended. Returns the progress and the conclusion's summary."""
    close_orphans(client, trials_study)
    progress = queue.progress(trials_study)
    if stopped_by:
        layout.end_run(client, parent.run_id, "KILLED")
        return progress, {}
    if not progress.idle:
        return progress, {}  # the last one out finishes it
    first = queries.is_running(client, parent.run_id)  # prepare() reopened it; whoever ends it first concludes
    summary = queue.conclude(trials_study, client, parent, write=first)
    if first:
        layout.end_run(client, parent.run_id, "FINISHED" if queue.succeeded(progress) else "FAILED",
                       keep_end_time=keep_end_time)
    return progress, summary


def status_line(queue: Queue, progress: Progress, elapsed_s: float, left_s: float | None = None) -> str:
    """One line: ended / total, by state, the running ones, elapsed and the time left."""
    p = progress
    states = ", ".join(f"{n} {state}" for n, state in ((p.complete, "complete"), (p.pruned, "pruned"),
                                                        (p.failed, "failed")) if n or state != "pruned")
    running = f"{len(p.running)} running" + (f": {'; '.join(p.running)}" if p.running else "")
    left = f", ~{left_s / 60:.1f} min left" if left_s is not None else ""
    return (f"[{queue.study.name}{'' if queue.role == 'study' else ' ' + queue.role}] {p.ended}/{p.total} {queue.unit} "
            f"ended ({states}), {running}{p.best}, {elapsed_s / 60:.1f} min elapsed{left}")

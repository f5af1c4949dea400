"""The ablation queue: every cell (setting of every axis x seed) of a study as an Optuna trial.

fill() queues every cell that has no finished, queued, running or diverged trial; a cell whose MLflow run
finished before its trial was recorded (a worker killed in between) is recorded complete instead. The
objective trains the cell through its cell folder (schedule/cell.py), so a copy of a dead worker's trial,
or of one stopped on request, continues the cell from its checkpoint in the same MLflow run.
"""
from __future__ import annotations

import datetime
import hashlib
import json

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from workbench.run.stopping import Interrupted
from workbench.run.train import Diverged
from workbench.schedule.cell import run_cell
from workbench.schedule.queue import Context, Parent, Progress, Queue, record_runs
from workbench.stores import layout, queries, trials
from workbench.study.study import Cell, Study


def distributions(study: Study) -> dict[str, optuna.distributions.CategoricalDistribution]:
    """Each axis (by name) and the seed as a categorical Optuna parameter: an ablation's trials carry their
    settings as params, so optuna-dashboard's importance, slice and parallel-coordinate views work on it."""
    axes = {axis.name: optuna.distributions.CategoricalDistribution(list(axis.labels)) for axis in study.axes}
    return axes | {"seed": optuna.distributions.CategoricalDistribution(list(study.seeds))}


def trials_name(study: Study) -> str:
    """The Optuna study of an ablation: its name and a digest of its settings. Optuna fixes a parameter's
    choices once recorded, so a study file that adds a value to an axis gets a new Optuna study; fill()
    records the cells finished in MLflow into it, so none runs twice."""
    space = {name: list(d.choices) for name, d in distributions(study).items()}
    return f"{study.name}.{hashlib.sha256(json.dumps(space, default=str).encode()).hexdigest()[:8]}"


def cell_params(cell: Cell) -> dict:
    return dict(cell.settings) | {"seed": cell.seed}


class AblationQueue(Queue):
    unit, role, max_retry = "cells", "study", 3

    def __init__(self, study, stores):
        super().__init__(study, stores)
        self.cells = {cell.key: cell for cell in study.cells()}

    @property
    def optuna_name(self) -> str:
        return trials_name(self.study)

    def open(self) -> optuna.Study:
        return optuna.create_study(study_name=self.optuna_name, storage=self.storage(), direction="minimize",
                                   load_if_exists=True)

    def prepared(self, client: MlflowClient, parent: Parent) -> None:
        study = self.study
        layout.share_view(client, parent.experiment_id, study.metric, [key for axis in study.axes for key in axis.keys],
                          list(dict.fromkeys(",".join(label for _, label in c.settings) for c in self.cells.values())))
        searched = study.raw.get("confirms")
        if searched:  # the search and its confirmation point at each other
            client.set_tag(parent.run_id, layout.CONFIRMS, searched)
            search = layout.find_parent(client, searched, "search")
            if search is not None:
                client.set_tag(search.info.run_id, layout.CONFIRMATION, study.name)

    def fill(self, trials_study: optuna.Study, client: MlflowClient, parent: Parent) -> None:
        # A diverged cell is a result (reports show it as diverged): it is not queued again.
        taken = {t.user_attrs.get(trials.CELL) for t in trials_study.get_trials(deepcopy=False) if t.state in (
            TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) or trials.DIVERGED in t.user_attrs}
        for key, run in finished_cells(client, parent.run_id).items():
            if key not in taken and key in self.cells:  # finished before its trial was recorded: record it
                trials_study.add_trial(optuna.trial.create_trial(
                    state=TrialState.COMPLETE, value=run.data.metrics.get(self.study.metric, float("inf")),
                    params=cell_params(self.cells[key]), distributions=distributions(self.study),
                    user_attrs={trials.CELL: key, trials.NAME: run.info.run_name, trials.RUN_IDS: [run.info.run_id]}))
                taken.add(key)
        for cell in self.cells.values():
            if cell.key not in taken:
                trials_study.enqueue_trial(cell_params(cell), user_attrs={trials.CELL: cell.key, trials.NAME: cell.run_name})

    def objective(self, trial: optuna.Trial, context: Context) -> float:
        cell = self.cells.get(trial.user_attrs.get(trials.CELL))
        if cell is None:  # another worker took the last queued cell first; ask() made a fresh trial
            raise optuna.TrialPruned("no queued cell was left")
        for name, distribution in distributions(self.study).items():  # the queued values become its params
            trial.suggest_categorical(name, distribution.choices)
        client, parent = context.client, context.parent
        finished = queries.finished_child(client, parent.run_id, cell.key)
        if finished is not None:  # a worker died after its run finished, before Optuna recorded the trial
            trial.set_user_attr(trials.RUN_IDS, [finished.info.run_id])
            return finished.data.metrics.get(self.study.metric, float("nan"))
        try:
            metrics = run_cell(self.study, cell, client, parent.experiment_id, parent.run_id,
                               on_start=record_runs(trial, client), cells_dir=self.stores.cells,
                               share_checkpoints=self.stores.share_checkpoints)
        except Diverged as err:
            trial.set_user_attr(trials.DIVERGED, str(err))
            raise
        except Interrupted as err:  # queued again at once: the next worker or launch continues it
            trials.queue_copy(trial)
            trial.set_user_attr(trials.INTERRUPTED, err.step)
            raise
        return metrics.get(self.study.metric, float("nan"))

    def progress(self, trials_study: optuna.Study) -> Progress:
        found = [t for t in trials_study.get_trials(deepcopy=False) if t.user_attrs.get(trials.CELL) in self.cells]
        cells = lambda *states: {t.user_attrs[trials.CELL] for t in found if t.state in states}  # noqa: E731
        done, running, again = cells(TrialState.COMPLETE), cells(TrialState.RUNNING), cells(
            TrialState.RUNNING, TrialState.WAITING)
        failed = cells(TrialState.FAIL) - done - again  # not queued again
        # stopped on request at a checkpoint and queued again, not yet taken: the next worker or launch continues them
        interrupted = {t.user_attrs[trials.CELL] for t in found if trials.INTERRUPTED in t.user_attrs} - done - running
        diverged = {t.user_attrs[trials.CELL] for t in found if trials.DIVERGED in t.user_attrs} & failed
        names = tuple(t.user_attrs.get(trials.NAME, "") for t in found if t.state == TrialState.RUNNING)
        return Progress("cells", len(self.cells), len(done), len(failed), names, len(cells(TrialState.WAITING) - done),
                        diverged=len(diverged), interrupted=len(interrupted))

    def succeeded(self, progress: Progress) -> bool:
        return progress.complete == progress.total

    def conclude(self, trials_study: optuna.Study, client: MlflowClient, parent: Parent, write: bool) -> dict:
        """Each setting's mean on the parent run, the row the runs table shows first."""
        return {"setting_means": layout.log_setting_means(client, parent.run_id, self.study.metric)} if write else {}

    def time_left(self, trials_study: optuna.Study, workers: int, now: datetime.datetime | None = None) -> float | None:
        return time_left(self.study, trials_study, workers, now)


def finished_cells(client: MlflowClient, parent_id: str) -> dict:
    """Config hash -> FINISHED MLflow child run of the study's parent run."""
    runs = layout.child_runs(client, parent_id, status="FINISHED")
    return {run.data.tags[layout.CONFIG_HASH]: run for run in runs if layout.CONFIG_HASH in run.data.tags}


def time_left(study: Study, trials_study: optuna.Study, workers: int,
              now: datetime.datetime | None = None) -> float | None:
    """Seconds until the last cell finishes, None before any has: each cell costs the mean time of the
    finished cells of its setting (settings differ: MeanFlow at ratio 1 takes longer than Flow Matching),
    or of all finished cells for a setting none has finished yet; the running ones need the rest of
    theirs, and the queued ones go, in order, to whichever of the `workers` is free first (so the last
    cell of an odd count runs alone). now: the clock (tests fix it)."""
    setting = {cell.key: cell.settings for cell in study.cells()}
    found = [t for t in trials_study.get_trials(deepcopy=False) if t.user_attrs.get(trials.CELL) in setting]
    seconds: dict = {}
    for t in found:
        if t.state == TrialState.COMPLETE and t.duration:
            seconds.setdefault(setting[t.user_attrs[trials.CELL]], []).append(t.duration.total_seconds())
    if not seconds:
        return None
    overall = [x for xs in seconds.values() for x in xs]

    def cost(cell: str) -> float:
        xs = seconds.get(setting[cell], overall)
        return sum(xs) / len(xs)

    now = now or datetime.datetime.now()
    running = {t.user_attrs[trials.CELL]: t for t in found if t.state == TrialState.RUNNING and t.datetime_start}
    done = {t.user_attrs[trials.CELL] for t in found if t.state == TrialState.COMPLETE}
    queued = {t.user_attrs[trials.CELL] for t in found if t.state == TrialState.WAITING} - done
    free = [max(0.0, cost(k) - (now - t.datetime_start).total_seconds()) for k, t in running.items()]
    free = sorted(free + [0.0] * max(0, workers - len(free)))
    for cell in setting:
        if cell in queued and cell not in running:
            free[0] += cost(cell)
            free.sort()
    return max(free)

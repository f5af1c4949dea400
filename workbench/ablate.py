"""`wb ablate`: schedule a study's cells as Optuna trials and run them in local worker processes.

The launcher creates the MLflow experiment, the study's parent run and the Optuna study before any
worker starts (concurrent first-time SQLite schema creation crashes both), then enqueues every cell
that has no finished trial. Workers pop enqueued trials from the storage, so N workers (on one
machine or many sharing one RDB storage) never run a cell twice. Optuna's heartbeat finds the trial
of a killed worker: it is failed and a copy queued (a live worker continues the cell from its
checkpoint); the trials of a killed launcher are queued again by re-running the command, and a cell
whose MLflow run finished before the kill is recorded as complete instead.
"""
from __future__ import annotations

import datetime
import multiprocessing
import multiprocessing.connection
import os
import time

import mlflow
import optuna
from filelock import FileLock
from mlflow import MlflowClient
from optuna.trial import TrialState

from workbench import gpus, tracking
from workbench.runs import run_cell
from workbench.stopping import INTERRUPTED, STOP, Interrupted, Launcher, worker_stops_on_signals
from workbench.studies import Study, load_study, study_file_text
from workbench.tracking import Stores
from workbench.train import Diverged

DIVERGED = "diverged"  # the user attr of a cell's trial whose training diverged (its reason)


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


def optuna_storage(stores: Stores, max_retry: int = 3) -> optuna.storages.RDBStorage:
    """The study's Optuna storage with heartbeats: a RUNNING trial whose worker died turns stale after
    grace_s, is failed, and a copy (same cell or params) is queued, at most max_retry times per trial."""
    return ClaimingStorage(stores.storage, heartbeat_interval=stores.heartbeat_s, grace_period=stores.grace_s,
                           heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry))


def distributions(study: Study) -> dict[str, optuna.distributions.CategoricalDistribution]:
    """Each axis (by name) and the seed as a categorical Optuna parameter: an ablation's trials carry their
    settings as params, so optuna-dashboard's importance, slice and parallel-coordinate views work on it."""
    axes = {axis.name: optuna.distributions.CategoricalDistribution(list(axis.labels)) for axis in study.axes}
    return axes | {"seed": optuna.distributions.CategoricalDistribution(list(study.seeds))}


def trials_name(study: Study) -> str:
    """The Optuna study of an ablation: its name and a digest of its settings. Optuna fixes a parameter's
    choices once recorded, so a study file that adds a value to an axis gets a new Optuna study; prepare()
    records the cells finished in MLflow into it, so none runs twice."""
    import hashlib
    import json

    space = {name: list(d.choices) for name, d in distributions(study).items()}
    return f"{study.name}.{hashlib.sha256(json.dumps(space, default=str).encode()).hexdigest()[:8]}"


def cell_params(cell) -> dict:
    return dict(cell.settings) | {"seed": cell.seed}


def enqueue(trials_study: optuna.Study, cell) -> None:
    trials_study.enqueue_trial(cell_params(cell), user_attrs={"cell": cell.key, "name": cell.run_name})


def prepare(study: Study, stores: Stores) -> tuple[str, str, optuna.Study]:
    """Creates (or finds) the experiment, parent run and Optuna study; enqueues unfinished cells.

    Returns (experiment id, parent run id, Optuna study).
    """
    client = MlflowClient(stores.tracking_uri)
    experiment_id = tracking.experiment_id(client, study.name, stores.artifacts)
    parent_id = tracking.parent_run(client, experiment_id, study.name, study.description, study_file_text(study))
    tracking.share_view(client, experiment_id, study.metric, [key for axis in study.axes for key in axis.keys],
                        list(dict.fromkeys(",".join(label for _, label in c.settings) for c in study.cells())))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_study = optuna.create_study(study_name=trials_name(study), storage=optuna_storage(stores),
                                       direction="minimize", load_if_exists=True)
    optuna.storages.fail_stale_trials(trials_study)
    for trial in trials_study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and tracking.is_running(client, run_id):
            tracking.end_run(client, run_id, "KILLED")  # its worker died; the cell is enqueued again below
    # A diverged cell is a result (reports show it as diverged): it is not queued again.
    taken = {t.user_attrs.get("cell") for t in trials_study.get_trials(deepcopy=False) if t.state in (
        TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) or DIVERGED in t.user_attrs}
    # A worker killed after its MLflow run finished but before Optuna recorded the trial left a
    # finished cell behind a failed trial: record it as complete rather than train it again.
    by_key = {cell.key: cell for cell in study.cells()}
    for key, run in finished_cells(client, parent_id).items():
        if key not in taken and key in by_key:
            trials_study.add_trial(optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=run.data.metrics.get(study.metric, float("inf")),
                params=cell_params(by_key[key]), distributions=distributions(study),
                user_attrs={"cell": key, "name": run.info.run_name, "mlflow_run_id": run.info.run_id}))
            taken.add(key)
    for cell in study.cells():
        if cell.key not in taken:
            enqueue(trials_study, cell)
    tracking.reopen(client, parent_id)
    return experiment_id, parent_id, trials_study


def finished_cells(client: MlflowClient, parent_id: str) -> dict:
    """Config hash -> FINISHED MLflow child run of the study's parent run."""
    runs = tracking.child_runs(client, parent_id, status="FINISHED")
    return {run.data.tags[tracking.CONFIG_HASH]: run for run in runs if tracking.CONFIG_HASH in run.data.tags}


def worker(study_path: str, stores: Stores, experiment_id: str, parent_id: str, threads: int,
           gpu: str | None = None) -> None:
    """Pops enqueued cells until none is left (one process; also usable on another machine), on GPU
    `gpu` (its CUDA_VISIBLE_DEVICES) when given."""
    import warnings

    gpus.use(gpu)
    import torch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat is "experimental"
    worker_stops_on_signals()
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(study_path)
    cells, axes = {cell.key: cell for cell in study.cells()}, distributions(study)
    client = MlflowClient(stores.tracking_uri)
    trials_study = optuna.load_study(study_name=trials_name(study), storage=optuna_storage(stores))

    def objective(trial: optuna.Trial) -> float:
        cell = cells.get(trial.user_attrs.get("cell"))
        if cell is None:  # another worker took the last enqueued cell first; ask() made a fresh trial
            raise optuna.TrialPruned()
        for name, distribution in axes.items():  # the enqueued values: the cell's settings become its params
            trial.suggest_categorical(name, distribution.choices)
        finished = tracking.finished_child(client, parent_id, cell.key)
        if finished is not None:  # a worker died after its run finished, before Optuna recorded the trial
            trial.set_user_attr("mlflow_run_id", finished.info.run_id)
            return finished.data.metrics.get(study.metric, float("nan"))
        dead = trial.user_attrs.get("mlflow_run_id")  # a copy of a dead worker's trial: that attempt's run

        def started(run_id: str) -> None:
            trial.set_user_attr("mlflow_run_id", run_id)
            if dead and dead != run_id and tracking.is_running(client, dead):  # not continued (no checkpoint here)
                tracking.end_run(client, dead, "KILLED")

        try:
            metrics = run_cell(study, cell, client, experiment_id, parent_id, on_start=started, cells_dir=stores.cells,
                               share_checkpoints=stores.share_checkpoints)
        except Diverged as err:
            trial.set_user_attr(DIVERGED, str(err))
            raise
        except Interrupted as err:  # queued again at once: the next worker or launch continues it
            trial.set_user_attr(INTERRUPTED, err.step)
            enqueue(trials_study, cell)
            raise
        return metrics.get(study.metric, float("nan"))

    while not STOP.is_set() and trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        # optimize() (not ask/tell) so Optuna's heartbeat thread covers the running cell
        trials_study.optimize(objective, n_trials=1, catch=(Exception,))


def run_study(study: Study, stores: Stores, workers: int, progress=print, threads: int | None = None,
              gpu_ids: list[str] | None = None) -> dict:
    """Prepares, starts `workers` local processes (`threads` torch threads each, default: the CPU
    cores split between them; worker i on GPU gpu_ids[i % len] when given), shows progress until no
    cell is running, here or elsewhere."""
    mlflow.set_tracking_uri(stores.tracking_uri)
    experiment_id, parent_id, trials_study = prepare(study, stores)
    total, started = len(study.cells()), time.time()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    waiting = len(trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # new and left over
    stopped_by = supervise(
        trials_study, lambda slot: context.Process(target=worker, args=(
            str(study.path), stores, experiment_id, parent_id, threads, gpus.for_slot(slot, gpu_ids or []))),
        min(workers, waiting), running=lambda: counts(study, trials_study)["running"],
        status=lambda: progress(status_line(study, trials_study, total, started, min(workers, waiting))))
    client = MlflowClient(stores.tracking_uri)
    summary = counts(study, trials_study)
    tracking.log_setting_means(client, parent_id, study.metric)
    status = "KILLED" if stopped_by else "FINISHED" if summary["done"] == total else "FAILED"
    tracking.end_run(client, parent_id, status, keep_end_time=not waiting)  # nothing ran: keep the end time
    if status == "FINISHED" and os.path.isdir(stores.cells) and not os.listdir(stores.cells):
        os.rmdir(stores.cells)  # every cell finished: no checkpoint left to continue from
    return {"experiment_id": experiment_id, "parent_run_id": parent_id, **summary, "total": total,
            "seconds": time.time() - started, "stopped_by": stopped_by}


def finish_parent(study: Study, stores: Stores, parent_id: str) -> str:
    """After a launcher-less worker (`wb worker`): the last one out ends the parent run; says where the study is."""
    trials_study = optuna.load_study(study_name=trials_name(study), storage=optuna_storage(stores))
    c, total = counts(study, trials_study), len(study.cells())
    waiting = trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not c["running"] and not waiting:
        client = MlflowClient(stores.tracking_uri)
        tracking.log_setting_means(client, parent_id, study.metric)
        tracking.end_run(client, parent_id, "FINISHED" if c["done"] == total else "FAILED")
    return f"{c['done']}/{total} cells finished, {c['failed']} failed, {len(c['running'])} running elsewhere"


def supervise(trials_study: optuna.Study, new_worker, wanted: int, running, status) -> str | None:
    """Starts `wanted` local worker processes (new_worker(slot) makes the one of slot 0..wanted-1; a
    replacement gets its dead predecessor's slot, and so its GPU) and calls status() every 2 s, and when a
    worker exits, while one lives or running() says trials run elsewhere (other launchers, machines), so that this
    launcher's exit status covers the whole study. A trial whose worker died (here or elsewhere) turns
    stale after the storage's grace period: it is failed and its copy queued, which a live worker takes
    or a replacement started here (at most `wanted` replacements). On SIGINT or SIGTERM the workers are
    asked to checkpoint and stop. Returns the name of the signal that stopped the launch, or None."""
    slots = {slot: new_worker(slot) for slot in range(wanted)}  # the latest process of each slot
    processes, replaced = list(slots.values()), 0
    launcher = Launcher()
    try:
        launcher.start(processes)
        while not launcher.requested and (any(p.is_alive() for p in processes) or running()):
            status()
            alive = [p.sentinel for p in processes if p.is_alive()]
            # up to 2 s, less when a worker exits: the last one out ends the launch at once
            if alive:
                multiprocessing.connection.wait(alive, timeout=2)
            else:
                time.sleep(2)
            optuna.storages.fail_stale_trials(trials_study)
            dead = [slot for slot, process in slots.items() if not process.is_alive()]
            if dead and replaced < wanted and trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                slots[dead[0]] = new_worker(dead[0])
                processes.append(slots[dead[0]])
                launcher.start(processes[-1:])
                replaced += 1
        if launcher.requested:
            launcher.stop(processes)
    finally:
        launcher.restore()
    return launcher.requested


def counts(study: Study, trials_study: optuna.Study) -> dict:
    keys = {cell.key for cell in study.cells()}
    trials = [t for t in trials_study.get_trials(deepcopy=False) if t.user_attrs.get("cell") in keys]
    done = {t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE}
    running = [t.user_attrs.get("name", "") for t in trials if t.state == TrialState.RUNNING]
    again = {t.user_attrs["cell"] for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    failed = {t.user_attrs["cell"] for t in trials if t.state == TrialState.FAIL} - done - again  # not re-queued
    # stopped on request at a checkpoint and queued again, not yet taken: the next worker or launch continues them
    interrupted = {t.user_attrs["cell"] for t in trials if INTERRUPTED in t.user_attrs} - done - {
        t.user_attrs["cell"] for t in trials if t.state == TrialState.RUNNING}
    diverged = {t.user_attrs["cell"] for t in trials if DIVERGED in t.user_attrs} & failed
    return {"done": len(done), "running": running, "failed": len(failed), "diverged": len(diverged),
            "interrupted": len(interrupted)}


def status_line(study: Study, trials_study: optuna.Study, total: int, started: float, workers: int = 1) -> str:
    """One line: cells done / running / failed, elapsed, and the time left (time_left)."""
    c = counts(study, trials_study)
    elapsed = time.time() - started
    left = time_left(study, trials_study, workers) if c["done"] < total else None
    remaining = f", ~{left / 60:.1f} min left" if left is not None else ""
    return (f"[{study.name}] {c['done']}/{total} cells done, {len(c['running'])} running"
            f"{': ' + '; '.join(c['running']) if c['running'] else ''}, {c['failed']} failed, "
            f"{elapsed / 60:.1f} min elapsed{remaining}")


def time_left(study: Study, trials_study: optuna.Study, workers: int,
              now: datetime.datetime | None = None) -> float | None:
    """Seconds until the last cell finishes, None before any has: each cell costs the mean time of the
    finished cells of its setting (settings differ: MeanFlow at ratio 1 takes longer than Flow Matching),
    or of all finished cells for a setting none has finished yet; the running ones need the rest of
    theirs, and the queued ones go, in order, to whichever of the `workers` is free first (so the last
    cell of an odd count runs alone). now: the clock (tests fix it)."""
    setting = {cell.key: cell.settings for cell in study.cells()}
    trials = [t for t in trials_study.get_trials(deepcopy=False) if t.user_attrs.get("cell") in setting]
    seconds: dict = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and t.duration:
            seconds.setdefault(setting[t.user_attrs["cell"]], []).append(t.duration.total_seconds())
    if not seconds:
        return None
    overall = [x for xs in seconds.values() for x in xs]

    def cost(cell: str) -> float:
        xs = seconds.get(setting[cell], overall)
        return sum(xs) / len(xs)

    now = now or datetime.datetime.now()
    running = {t.user_attrs["cell"]: t for t in trials if t.state == TrialState.RUNNING and t.datetime_start}
    done = {t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE}
    queued = {t.user_attrs["cell"] for t in trials if t.state == TrialState.WAITING} - done
    free = [max(0.0, cost(k) - (now - t.datetime_start).total_seconds()) for k, t in running.items()]
    free = sorted(free + [0.0] * max(0, workers - len(free)))
    for cell in setting:
        if cell in queued and cell not in running:
            free[0] += cost(cell)
            free.sort()
    return max(free)


def terminal_progress():
    """One status line rewritten in place on a terminal; in a log, a new line only when cells change."""
    import sys

    last = [""]

    def show(line: str) -> None:
        if sys.stderr.isatty():
            print("\r" + line.ljust(len(last[0])), end="", file=sys.stderr, flush=True)
        elif line.split(" min elapsed")[0].rsplit(",", 1)[0] != last[0].split(" min elapsed")[0].rsplit(",", 1)[0]:
            print(line, file=sys.stderr, flush=True)
        last[0] = line
    return show

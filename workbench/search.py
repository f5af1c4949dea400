"""`wb search`: an Optuna search over a study's [search] space, on the storage, heartbeat, workers and
MLflow layout of `wb ablate`.

The launcher creates the MLflow experiment (named after the study), the search's parent run (tagged
wb.role = search) and the Optuna study "<name>.search" before any worker starts, then enqueues empty
trials up to the search's trial count; workers pop them and the sampler chooses each one's params when
it starts, from the trials finished by then (on any machine sharing the storage). So N trials run in
all, never one more, and a rerun (or a larger --trials) only adds the missing ones.

A trial trains one run per seed, side by side: at every eval.every step the pruner sees the mean of the
seeds' scores, so every trial is compared with the others on the same seeds. Each (trial, seed) is an
MLflow child run whose status follows the trial's: complete -> FINISHED, pruned -> KILLED, failed ->
FAILED (tag wb.trial_state, and wb.fail_reason); a trial stopped on request (SIGTERM, SIGINT) ends its runs
KILLED (wb.trial_state = interrupted) and queues a copy with the same params, which starts from step 0.
A worker that dies leaves a trial without heartbeat: Optuna fails it and queues a copy with the same
params (RetryHeartbeatStaleTrialCallback).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path

import mlflow
import optuna
import tomli_w
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from workbench import gpus, tracking
from workbench.ablate import optuna_storage, supervise
from workbench.config import RunConfig, flatten, with_overrides
from workbench.runs import CellRun
from workbench.search_space import SearchModel, dimensions, grid_points, grid_values, objectives, overrides, suggest
from workbench.stopping import INTERRUPTED, STOP, Interrupted, worker_stops_on_signals
from workbench.studies import Study, config_hash, load_study, study_file_text
from workbench.tracking import Stores

FAIL_REASON = "fail_reason"  # the user attr of a trial that failed in its objective (counts towards N)
QUEUED = "queued"  # the user attr of every trial the launcher queued (the search's own trials)


def optuna_name(study: Study) -> str:
    return f"{study.name}.search"


def seeds(study: Study) -> list[int]:
    return list(study.search.seeds or study.seeds)


def storage(stores: Stores) -> optuna.storages.RDBStorage:
    """The Optuna storage with heartbeats; a trial whose worker died is failed and queued again with its params."""
    return optuna_storage(stores, max_retry=2)


def sampler(search: SearchModel) -> optuna.samplers.BaseSampler:
    """Optuna's own sampler by name (each worker builds it; samplers are not stored)."""
    if search.sampler == "grid":
        return optuna.samplers.GridSampler({name: grid_values(p) for name, p in dimensions(search).items()})
    return {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "random": optuna.samplers.RandomSampler,
            "qmc": optuna.samplers.QMCSampler}[search.sampler]()


def pruner(study: Study) -> optuna.pruners.BasePruner:
    """Optuna's own pruner by name, on the steps of the eval.every evaluations."""
    config = with_overrides(RunConfig(), study.base)
    every = config.eval.every or 1
    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=every),
            "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=every),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=every, max_resource=config.train.steps),
            "none": optuna.pruners.NopPruner}[study.search.prune]()


def load(study: Study, stores: Stores) -> optuna.Study:
    directions = [direction for _, direction in objectives(study.search, study.metric)]
    return optuna.create_study(study_name=optuna_name(study), storage=storage(stores), directions=directions,
                               sampler=sampler(study.search), pruner=pruner(study), load_if_exists=True)


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards the search's N: finished, pruned, failed in their objective, running
    or queued. A trial failed by a lost heartbeat does not: its queued copy does."""
    return [t for t in trials if t.user_attrs.get(QUEUED) and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        or (t.state == TrialState.FAIL and FAIL_REASON in t.user_attrs))]


def target(study: Study, trials: int | None = None) -> int:
    """Trials in all: --trials, else search.trials; a grid has no more than its points."""
    wanted = trials or study.search.trials
    return min(wanted, len(grid_points(study.search))) if study.search.sampler == "grid" else wanted


def prepare(study: Study, stores: Stores, trials: int | None = None) -> tuple[str, str, optuna.Study]:
    """Creates (or finds) the experiment, the search's parent run and the Optuna study, and queues trials
    up to `trials` (default: the study's search.trials). Returns (experiment id, parent run id, study)."""
    client = MlflowClient(stores.tracking_uri)
    experiment_id = tracking.experiment_id(client, study.name, stores.artifacts)
    parent_id = tracking.parent_run(client, experiment_id, study.name, study.description, study_file_text(study),
                                    role="search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_study = load(study, stores)
    optuna.storages.fail_stale_trials(trials_study)
    close_orphans(client, trials_study)
    missing = target(study, trials) - len(counted(trials_study.get_trials(deepcopy=False)))
    if study.search.sampler == "grid":  # the grid's points not yet taken, in order
        taken = [t.params for t in counted(trials_study.get_trials(deepcopy=False))]
        for point in [p for p in grid_points(study.search) if p not in taken][:max(0, missing)]:
            trials_study.enqueue_trial(point, user_attrs={QUEUED: True})
    else:
        for _ in range(max(0, missing)):
            trials_study.enqueue_trial({}, user_attrs={QUEUED: True})  # the sampler fills the params at start
    tracking.reopen(client, parent_id)
    return experiment_id, parent_id, trials_study


def close_orphans(client: MlflowClient, trials_study: optuna.Study) -> None:
    """The MLflow runs of trials failed by a lost heartbeat (their worker died) still say RUNNING: fail them."""
    for trial in trials_study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        for run_id in trial.user_attrs.get("mlflow_run_ids", []):
            if tracking.is_running(client, run_id):
                tracking.end_run(client, run_id, "FAILED", {tracking.TRIAL_STATE: "failed", tracking.FAIL_REASON: (
                    "its worker stopped (no heartbeat); the trial is queued again with the same params")})


def run_trial(trial: optuna.Trial, study: Study, client: MlflowClient, experiment_id: str,
              parent_id: str) -> float | list[float]:
    """One trial: a run per seed, advanced side by side; the pruner sees their mean at each evaluation."""
    goals = objectives(study.search, study.metric)
    settings = suggest(trial, study.search)
    trial.set_user_attr("overrides", {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()})
    runs: list[CellRun] = []
    try:
        for seed in seeds(study):
            config = with_overrides(RunConfig(), {**study.base, **settings, "train.seed": seed})
            tags = tracking.cell_tags(study.name, (), seed, config_hash(config), parent_id) | {
                tracking.TRIAL: str(trial.number), tracking.TRIAL_STATE: "running"}
            runs.append(CellRun(client, experiment_id, f"trial {trial.number} seed {seed}", tags, config))
            trial.set_user_attr("mlflow_run_ids", [run.run_id for run in runs])
        steps = [run.training() for run in runs]
        results, step = advance(trial, steps, goals[0][0], report=len(goals) == 1)
        if results is None:  # pruned
            for run in runs:
                run.end("KILLED", {tracking.TRIAL_STATE: "pruned", "wb.pruned_at_step": str(step)})
            raise optuna.TrialPruned(f"pruned at step {step}")
        values = [sum(r.metrics.get(metric, math.nan) for r in results) / len(results) for metric, _ in goals]
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"{', '.join(m for m, _ in goals)} = {values} (a seed diverged)")
        trial.set_user_attr("seed_values", [r.metrics.get(goals[0][0]) for r in results])
        for run, result in zip(runs, results):
            run.finish(result, {tracking.TRIAL_STATE: "complete"})
        return values[0] if len(values) == 1 else values
    except optuna.TrialPruned:
        raise
    except Interrupted as err:  # stopped on request: a copy with the same params is queued (from step 0)
        trial.set_user_attr(INTERRUPTED, err.step)
        trial.study.enqueue_trial(trial.params, user_attrs={QUEUED: True})
        for run in runs:
            run.end("KILLED", {tracking.TRIAL_STATE: INTERRUPTED, tracking.FAIL_REASON: tracking.reason(err)})
        raise
    except BaseException as err:
        trial.set_user_attr(FAIL_REASON, tracking.reason(err))
        for run in runs:
            run.end("FAILED", {tracking.TRIAL_STATE: "failed", tracking.FAIL_REASON: tracking.reason(err)})
        raise


def advance(trial: optuna.Trial, steps: list, metric: str, report: bool) -> tuple[list | None, int]:
    """Runs every seed's training generator to the next evaluation in turn; reports the seeds' mean of
    `metric` there (a single-objective search; Optuna takes no intermediate values for several). Returns
    (the seeds' TrainResults, 0) at the end, or (None, step) once the pruner stops the trial at `step`."""
    while True:
        reached, results = [], []
        for run in steps:
            try:
                reached.append(next(run))
            except StopIteration as done:
                results.append(done.value)
        if results:
            if reached:
                raise RuntimeError("the seeds of a trial evaluate at different steps")
            return results, 0
        step = reached[0][0]
        if report:
            trial.report(sum(scores.get(metric, math.nan) for _, scores in reached) / len(reached), step)
            if trial.should_prune():
                for run in steps:
                    run.close()
                return None, step


def worker(study_path: str, stores: Stores, experiment_id: str, parent_id: str, threads: int,
           gpu: str | None = None) -> None:
    """Pops queued trials until none is left (one process; also usable on another machine), on GPU
    `gpu` (its CUDA_VISIBLE_DEVICES) when given."""
    import warnings

    gpus.use(gpu)
    import torch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, GP sampler
    worker_stops_on_signals()
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(study_path)
    client = MlflowClient(stores.tracking_uri)
    trials_study = load(study, stores)

    def objective(trial: optuna.Trial):
        if not trial.user_attrs.get(QUEUED):  # another worker took the last queued trial first; ask() made one
            raise optuna.TrialPruned("no queued trial was left")
        return run_trial(trial, study, client, experiment_id, parent_id)

    while not STOP.is_set() and trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        # optimize() (not ask/tell) so Optuna's heartbeat thread covers the running trial
        trials_study.optimize(objective, n_trials=1, catch=(Exception,))


def run_search(study: Study, stores: Stores, workers: int, trials: int | None = None, progress=print,
               threads: int | None = None, gpu_ids: list[str] | None = None) -> dict:
    """Prepares, starts `workers` local processes, shows progress until no trial runs (here or elsewhere),
    writes the confirmation study file. Returns the counts, the best trial and the paths."""
    mlflow.set_tracking_uri(stores.tracking_uri)
    experiment_id, parent_id, trials_study = prepare(study, stores, trials)
    goal, started = target(study, trials), time.time()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    waiting = len(trials_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    context = multiprocessing.get_context("spawn")
    stopped_by = supervise(
        trials_study, lambda slot: context.Process(target=worker, args=(
            str(study.path), stores, experiment_id, parent_id, threads, gpus.for_slot(slot, gpu_ids or []))),
        min(workers, waiting), running=lambda: counts(trials_study)["running"],
        status=lambda: progress(status_line(study, trials_study, goal, started)))
    client = MlflowClient(stores.tracking_uri)
    close_orphans(client, trials_study)
    summary = counts(trials_study)
    finished = summary["complete"] + summary["pruned"] + summary["failed"] >= goal and not summary["waiting"]
    tracking.end_run(client, parent_id, "KILLED" if stopped_by else "FINISHED" if finished else "FAILED")
    best = best_trial(study, trials_study)
    confirm = write_confirmation(study, best) if best is not None and not stopped_by else None
    return {"experiment_id": experiment_id, "parent_run_id": parent_id, **summary, "target": goal,
            "seconds": time.time() - started, "best": best, "confirmation": confirm, "stopped_by": stopped_by}


def finish_parent(study: Study, stores: Stores, parent_id: str) -> str:
    """After a launcher-less worker (`wb worker`): the last one out ends the parent run; says where the search is."""
    trials_study, goal = load(study, stores), target(study)
    c = counts(trials_study)
    ended = c["complete"] + c["pruned"] + c["failed"]
    if not c["running"] and not c["waiting"]:
        tracking.end_run(MlflowClient(stores.tracking_uri), parent_id, "FINISHED" if ended >= goal else "FAILED")
    return f"{ended}/{goal} trials ended ({c['complete']} complete), {c['running']} running elsewhere"


def counts(trials_study: optuna.Study) -> dict:
    """Trials by state; failed = failed in their objective (a lost heartbeat's trial is queued again)."""
    trials = counted(trials_study.get_trials(deepcopy=False))
    by = {state: sum(t.state == state for t in trials) for state in TrialState}
    return {"complete": by[TrialState.COMPLETE], "pruned": by[TrialState.PRUNED], "failed": by[TrialState.FAIL],
            "running": by[TrialState.RUNNING], "waiting": by[TrialState.WAITING]}


def best_trial(study: Study, trials_study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial; for several metrics, the Pareto-front trial best on the first."""
    front = trials_study.best_trials if trials_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else []
    if not front:
        return None
    sign = 1 if objectives(study.search, study.metric)[0][1] == "minimize" else -1
    return min(front, key=lambda t: sign * t.values[0])


def status_line(study: Study, trials_study: optuna.Study, target: int, started: float) -> str:
    c = counts(trials_study)
    best = best_trial(study, trials_study)
    shown = f", best {best.values[0]:.4g} (trial {best.number})" if best is not None else ""
    return (f"[{study.name} search] {c['complete'] + c['pruned'] + c['failed']}/{target} trials: {c['complete']} "
            f"complete, {c['pruned']} pruned, {c['failed']} failed, {c['running']} running{shown}, "
            f"{(time.time() - started) / 60:.1f} min elapsed")


# The confirmation ablation ------------------------------------------------------------------------

def confirmation_path(study: Study) -> Path:
    return study.path.parent / f"{study.name}-confirm.toml"


def confirmation(study: Study, best: FrozenTrial) -> dict:
    """A study file (as a dict) that re-runs the best trial's settings against the study's base config,
    on seeds the search did not use."""
    search = study.search
    chosen = overrides(search, best.params)
    base = flatten(with_overrides(RunConfig(), study.base))
    keys = list(chosen)
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 (TOML has no tuples)
    used = set(seeds(study)) | set(study.seeds)
    fresh = [max(used) + 1 + i for i in range(max(3, len(seeds(study))))]
    metric, direction = objectives(search, study.metric)[0]
    rank_by = metric if direction == "minimize" else study.metric  # a study ranks lower-is-better
    return {
        "name": f"{study.name}-confirm",
        "description": (f"Confirmation of `wb search {study.name}`: its best trial (#{best.number}, {metric} = "
                        f"{best.values[0]:.4g} over seeds {seeds(study)}) against the study's base config, on fresh "
                        f"seeds {fresh}. Written by wb search; command: wb ablate {study.name}-confirm"),
        "metric": rank_by, "seeds": fresh,
        # two workers, each cell about as long as one seed of the best trial took
        "budget_minutes": round(2 * len(fresh) * best.duration.total_seconds() / len(seeds(study)) / 2 / 60, 1)
        if best.duration else 0,
        "base": dict(study.base),
        "axes": [{"key": keys if len(keys) > 1 else keys[0],
                  "values": [[plain(chosen[k]) for k in keys] if len(keys) > 1 else plain(chosen[keys[0]]),
                             [plain(base[k]) for k in keys] if len(keys) > 1 else plain(base[keys[0]])],
                  "labels": [f"best (trial {best.number})", "base"], "name": "setting"}],
    }


def write_confirmation(study: Study, best: FrozenTrial) -> Path | None:
    """studies/<name>-confirm.toml next to the study file; None when the best trial is the base config."""
    raw = confirmation(study, best)
    best_values, base_values = raw["axes"][0]["values"]
    if best_values == base_values:
        return None
    path = confirmation_path(study)
    path.write_text(tomli_w.dumps(raw, multiline_strings=True))
    return path

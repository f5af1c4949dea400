"""The search queue: an Optuna search over a study's [search] space, on the loop, storage, heartbeat and
MLflow layout of an ablation.

fill() queues empty trials up to the search's trial count (a grid: its points not yet taken, in order);
a worker pops one and the sampler chooses its params when it starts, from the trials finished by then (on
any machine sharing the storage). So N trials run in all, never one more, and a rerun (or a larger
--trials) only adds the missing ones.

A trial trains one run per seed, side by side, each through its own cell folder: at every eval.every step
the pruner sees the mean of the seeds' scores, so every trial is compared with the others on the same
seeds. Each (trial, seed) is an MLflow child run whose status follows the trial's: complete -> FINISHED,
pruned -> KILLED, failed -> FAILED (tag wb.trial_state, and wb.fail_reason). A trial stopped on request
(SIGTERM, SIGINT) or whose worker died is queued again as a copy with the same params and pruner reports
(stores/trials.py); the copy continues every seed from its checkpoint, in the same MLflow runs.
"""
from __future__ import annotations

import math

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from workbench.config import RunConfig, with_overrides
from workbench.run.stopping import Interrupted
from workbench.schedule.cell import Attempt, open_run, side_by_side
from workbench.schedule.queue import Context, Parent, Progress, Queue, record_runs
from workbench.stores import layout, trials
from workbench.study.derived import confirmation_path, write_confirmation
from workbench.study.space import PRUNERS, SAMPLERS, grid_points, objectives, suggest
from workbench.study.study import Cell, Study


def target(study: Study, wanted: int | None = None) -> int:
    """Trials in all: --trials, else search.trials; a grid has no more than its points."""
    wanted = wanted or study.search.trials
    return min(wanted, len(grid_points(study.search))) if study.search.sampler == "grid" else wanted


class SearchQueue(Queue):
    unit, role, max_retry = "trials", "search", 2

    def __init__(self, study: Study, stores, trials_wanted: int | None = None):
        super().__init__(study, stores)
        self.target = target(study, trials_wanted)
        self.goals = objectives(study.search, study.metric)

    @property
    def optuna_name(self) -> str:
        return trials.search_name(self.study.name)

    def open(self) -> optuna.Study:
        config = with_overrides(RunConfig(), self.study.base)
        pruner = PRUNERS[self.study.search.prune](config.eval.every or 1, config.train.steps)
        return optuna.create_study(study_name=self.optuna_name, storage=self.storage(), load_if_exists=True,
                                   directions=[direction for _, direction in self.goals],
                                   sampler=SAMPLERS[self.study.search.sampler](self.study.search), pruner=pruner)

    def fill(self, trials_study: optuna.Study, client: MlflowClient, parent: Parent) -> None:
        taken = trials.counted(trials_study.get_trials(deepcopy=False))
        missing = max(0, self.target - len(taken))
        if self.study.search.sampler == "grid":  # the grid's points not yet taken, in order
            params = [t.params for t in taken]
            for point in [p for p in grid_points(self.study.search) if p not in params][:missing]:
                trials_study.enqueue_trial(point, user_attrs={trials.QUEUED: True})
        else:
            for _ in range(missing):
                trials_study.enqueue_trial({}, user_attrs={trials.QUEUED: True})  # the sampler fills the params

    def objective(self, trial: optuna.Trial, context: Context) -> float | list[float]:
        """One trial: a run per seed, advanced side by side; the pruner sees their mean at each evaluation."""
        if not trial.user_attrs.get(trials.QUEUED):  # another worker took the last queued trial first
            raise optuna.TrialPruned("no queued trial was left")
        settings = suggest(trial, self.study.search)
        trial.set_user_attr(trials.OVERRIDES, {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()})
        series = trials.continued_trial(trial)  # a copy continues the runs of the trial it copies
        record = record_runs(trial, context.client)
        try:
            with Attempt(keep_failed=False, state_tag=True) as attempt:  # closes the runs before what follows
                for seed in self.study.search_seeds:
                    config = with_overrides(RunConfig(), {**self.study.base, **settings, "train.seed": seed})
                    attempt.runs.append(open_run(
                        Cell(self.study.name, (), seed, config), context.client, context.parent.experiment_id,
                        context.parent.run_id, self.stores.cells, self.stores.share_checkpoints,
                        folder_name=f"{self.optuna_name}-{series}-seed{seed}", run_name=f"trial {trial.number} seed {seed}",
                        tags={layout.TRIAL: str(trial.number), layout.TRIAL_STATE: "running"}))
                    trial.set_user_attr(trials.RUN_IDS, [run.run_id for run in attempt.runs])
                record([run.run_id for run in attempt.runs])
                return self._train(trial, attempt)
        except Interrupted as err:  # stopped on request: a copy continues from the checkpoints
            trials.queue_copy(trial)
            trial.set_user_attr(trials.INTERRUPTED, err.step)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr(trials.FAILED, layout.reason(err))
            raise

    def _train(self, trial: optuna.Trial, attempt: Attempt) -> float | list[float]:
        metric, single = self.goals[0][0], len(self.goals) == 1
        pruned_at = []

        def on_eval(step: int, scores: list[dict]) -> bool:
            if not single:  # Optuna takes no intermediate values for several objectives
                return False
            trial.report(sum(s.get(metric, math.nan) for s in scores) / len(scores), step)
            if trial.should_prune():
                pruned_at.append(step)
                return True
            return False

        results = side_by_side(attempt.runs, on_eval)
        if results is None:
            for run in attempt.runs:
                run.end("KILLED", {layout.TRIAL_STATE: "pruned", "wb.pruned_at_step": str(pruned_at[0])})
            raise optuna.TrialPruned(f"pruned at step {pruned_at[0]}")
        values = [sum(r.metrics.get(m, math.nan) for r in results) / len(results) for m, _ in self.goals]
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"{', '.join(m for m, _ in self.goals)} = {values} (a seed diverged)")
        trial.set_user_attr(trials.SEED_VALUES, [r.metrics.get(metric) for r in results])
        for run, result in zip(attempt.runs, results):
            run.finish(result, {layout.TRIAL_STATE: "complete"})
        return values[0] if single else values

    def progress(self, trials_study: optuna.Study) -> Progress:
        found = trials.counted(trials_study.get_trials(deepcopy=False))
        by = {state: sum(t.state == state for t in found) for state in TrialState}
        best = self.best(trials_study)
        return Progress("trials", self.target, by[TrialState.COMPLETE], by[TrialState.FAIL],
                        tuple(f"trial {t.number}" for t in found if t.state == TrialState.RUNNING),
                        by[TrialState.WAITING], pruned=by[TrialState.PRUNED],
                        best=f", best {best.values[0]:.4g} (trial {best.number})" if best is not None else "")

    def succeeded(self, progress: Progress) -> bool:
        return progress.ended >= progress.total

    def best(self, trials_study: optuna.Study):
        return trials.best_trial(trials_study, self.goals[0][1])

    def conclude(self, trials_study: optuna.Study, client: MlflowClient, parent: Parent, write: bool) -> dict:
        """The confirmation study file, named on the search's parent run."""
        best = self.best(trials_study)
        if not write:
            written = confirmation_path(self.study)
            return {"best": best, "confirmation": written if best is not None and written.is_file() else None}
        path = write_confirmation(self.study, best) if best is not None else None
        if path is not None:
            client.set_tag(parent.run_id, layout.CONFIRMATION, f"{self.study.name}-confirm")
            client.set_tag(parent.run_id, layout.CONFIRMATION_FILE, str(path))
        return {"best": best, "confirmation": path}

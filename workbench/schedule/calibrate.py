"""`wb calibrate`: run a calibration plan's (budget, study) pairs (study/plan.py), one after the other, each
through the ablation queue, so they resume and land in the same MLflow store as every study."""
from __future__ import annotations

from workbench.schedule.ablation import AblationQueue
from workbench.schedule.launcher import Summary, launch
from workbench.stores.urls import Stores
from workbench.study.derived import write_studies
from workbench.study.plan import Plan
from workbench.study.schema import StudyError
from workbench.study.study import load_study


def run_plan(plan: Plan, stores: Stores, workers: int, budgets: list[str] | None = None,
             studies: list[str] | None = None, progress=print) -> list[tuple[str, Summary]]:
    """Runs the selected (budget, study) pairs one after the other, each resuming where it stopped;
    returns (study name, wb ablate summary) per pair run; a pair stopped by SIGINT / SIGTERM is the last."""
    for name in budgets or []:
        plan.budget(name)
    for name in studies or []:
        if name not in plan.studies:
            raise StudyError(f"{plan.path}: study {name!r} is not in the plan ({', '.join(plan.studies)})")
    paths = write_studies(plan, budgets, studies)
    specs = [load_study(path) for path in paths]
    summaries = []
    for spec in specs:
        summaries.append((spec.name, launch(AblationQueue(spec, stores), workers, progress)))
        if summaries[-1][1].stopped_by:
            break
    return summaries

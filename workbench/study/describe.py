"""What `wb ablate` and `wb search` say about a study before they run it (and all `--dry-run` shows)."""
from __future__ import annotations

from workbench.study.space import dimensions, objectives
from workbench.study.study import Study


def study_lines(study: Study, cells: bool = False) -> list[str]:
    """The study's size, metric and stated budget; with cells, its [base] and every cell's hash and name."""
    every = study.cells()
    minutes = study.budget_minutes
    expected = ("" if not minutes else f", about {minutes:g} min with 2 workers on 2 CPU cores (budget_minutes; its "
                "description says where that was measured; up to 2x on slower CPUs)" if minutes < 1000
                else f", sized for GPUs: about {minutes / 60:,.0f} GPU-hours (its description says how that was estimated)")
    lines = [f"study {study.name}: {len(every)} cells, metric {study.metric}{expected}"]
    if cells:
        lines += ["every cell (the study's [base], over wb config's defaults):"]
        lines += [f"  {key} = {value}" for key, value in study.base.items()]
        lines += ["cells:"] + [f"  {cell.key}  {cell.run_name}" for cell in every]
    return lines


def search_lines(study: Study, trials: int) -> list[str]:
    """The search's size, objectives, sampler and pruner, and each dimension of its space."""
    goals = ", ".join(f"{direction} {metric}" for metric, direction in objectives(study.search, study.metric))
    seeds = study.search_seeds
    lines = [f"search {study.name}: {trials} trials x {len(seeds)} seeds {seeds}, {goals}, sampler "
             f"{study.search.sampler}, pruner {study.search.prune}"]
    for name, param in dimensions(study.search).items():
        span = param.choices if param.kind == "categorical" else f"{param.low:g} .. {param.high:g}" + (
            " (log)" if param.log else "") + (f" step {param.step:g}" if param.step else "")
        lines.append(f"  {name}: {param.kind} {span}")
    return lines

"""The study files the workbench writes itself: a search's confirmation study (its best trial against the
study's base config, on fresh seeds). The calibration plan's candidate studies: study/plan.py."""
from __future__ import annotations

from pathlib import Path

import tomli_w
from optuna.trial import FrozenTrial

from workbench.config import RunConfig, flatten, with_overrides
from workbench.study.space import objectives, overrides
from workbench.study.study import Study


def confirmation_path(study: Study) -> Path:
    return study.path.parent / f"{study.name}-confirm.toml"


def confirmation(study: Study, best: FrozenTrial) -> dict:
    """A study file (as a dict) that re-runs the best trial's settings against the study's base config,
    on seeds the search did not use."""
    search, seeds = study.search, study.search_seeds
    chosen = overrides(search, best.params)
    base = flatten(with_overrides(RunConfig(), study.base))
    keys = list(chosen)
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 (TOML has no tuples)
    used = set(seeds) | set(study.seeds)
    fresh = [max(used) + 1 + i for i in range(max(3, len(seeds)))]
    metric, direction = objectives(search, study.metric)[0]
    rank_by = metric if direction == "minimize" else study.metric  # a study ranks lower-is-better
    return {
        "name": f"{study.name}-confirm",
        "description": (f"Confirmation of `wb search {study.name}`: its best trial (#{best.number}, {metric} = "
                        f"{best.values[0]:.4g} over seeds {seeds}) against the study's base config, on fresh "
                        f"seeds {fresh}. Written by wb search; command: wb ablate {study.name}-confirm"),
        "metric": rank_by, "seeds": fresh, "confirms": study.name,
        # two workers, each cell about as long as one seed of the best trial took
        "budget_minutes": round(2 * len(fresh) * best.duration.total_seconds() / len(seeds) / 2 / 60, 1)
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

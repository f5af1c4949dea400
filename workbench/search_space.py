"""The `[search]` section of a study file: what `wb search` lets Optuna choose, and how it is judged.

    [search]
    metric = "transport_1nfe"          # lower-is-better metric the trials are ranked by
    trials = 40                        # trials in all (a rerun adds trials up to this number)
    seeds = [0, 1]                     # every trial trains one run per seed; its value is their mean
    sampler = "tpe"                    # tpe | gp | cmaes | random | qmc | grid (Optuna's samplers)
    pruner = "median"                  # median | halving | hyperband | none, on the eval.every scores
    [search.space]                     # dotted config key -> a range or choices
    "meanflow.ratio" = {low = 0.1, high = 1.0}
    "optim.lr" = {low = 1e-4, high = 1e-2, log = true}
    "net.mlp.depth" = {low = 2, high = 5, type = "int"}
    "meanflow.t_dist" = {choices = ["uniform(0,1)", "lognorm(-0.4,1.0)"]}

Every key must be a config key, and every bound and choice a value that key accepts (checked against
the study's [base] before anything is created).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from workbench.config import ConfigError, RunConfig, with_overrides
from workbench.schema import FileModel, StudyError

SAMPLERS = ("tpe", "gp", "cmaes", "random", "qmc", "grid")
PRUNERS = ("median", "halving", "hyperband", "none")


class ParamModel(FileModel):
    """One dimension: a float or int range (low <= value <= high, optional log scale or step), or choices."""

    type: Literal["float", "int", "categorical"] | None = None  # default: categorical with choices, else
    low: float | None = None                                   # int when both bounds are integers, else float
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> ParamModel:
        kind = self.kind
        if kind == "categorical":
            if self.choices is None or self.low is not None or self.high is not None:
                raise ValueError("choices: a categorical dimension has choices and no low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: a {kind} dimension has low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"low: a {kind} dimension needs low and high")
        if not self.low < self.high:
            raise ValueError(f"high: must be above low, got low={self.low:g}, high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"low: a log range needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("step: Optuna takes a step or a log scale, not both")
        if kind == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError(f"low: an int dimension needs integer bounds and step, got {self.low:g}..{self.high:g}")
        return self

    @property
    def kind(self) -> str:
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        both_int = all(v is not None and float(v).is_integer() for v in (self.low, self.high))
        return "int" if both_int and self.step is None and not self.log else "float"

    def extremes(self) -> list[Any]:
        """The values at the ends of the range (or every choice): what the config must accept."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


class SearchModel(FileModel):
    metric: str | None = None  # default: the study's metric
    trials: int = Field(20, ge=1)
    seeds: list[int] | None = None  # default: the study's seeds
    sampler: Literal[SAMPLERS] = "tpe"
    pruner: Literal[PRUNERS] = "median"
    space: dict[str, ParamModel] = Field(min_length=1)

    @model_validator(mode="after")
    def _grid(self) -> SearchModel:
        if self.sampler == "grid" and any(p.kind != "categorical" and p.step is None for p in self.space.values()):
            raise ValueError("sampler: grid needs choices or a step on every dimension of the space")
        return self


def check_space(search: SearchModel, base: dict, path: Path) -> None:
    """Every dimension's key must exist and accept both ends of its range (each choice), over `base`."""
    for key, param in search.space.items():
        if key in base:
            raise StudyError(f"{path}: search.space.{key}: also set in [base]; a key is searched or fixed, not both")
        for value in param.extremes():
            try:
                with_overrides(RunConfig(), {**base, key: value})
            except ConfigError as err:
                raise StudyError(f"{path}: search.space.{key}: {value!r} is not a value this key takes ({err})") from None


def grid_values(param: ParamModel) -> list[Any]:
    """Every value of a dimension on a grid: its choices, or low..high by step."""
    if param.kind == "categorical":
        return list(param.choices)
    count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
    values = [param.low + i * param.step for i in range(count)]
    return [int(v) for v in values] if param.kind == "int" else values


def suggest(trial, search: SearchModel) -> dict[str, Any]:
    """The trial's config overrides, one per dimension, from Optuna's trial.suggest_* (so they are the
    trial's params: importances, slices and optuna-dashboard see them)."""
    overrides = {}
    for key, param in search.space.items():
        if param.kind == "categorical":
            overrides[key] = trial.suggest_categorical(key, list(param.choices))
        elif param.kind == "int":
            overrides[key] = trial.suggest_int(key, int(param.low), int(param.high), step=int(param.step or 1),
                                               log=param.log)
        else:
            overrides[key] = trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)
    return overrides

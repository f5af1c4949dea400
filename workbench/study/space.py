"""The `[search]` section of a study file: what `wb search` lets Optuna choose, and how it is judged.

    [search]
    metric = "transport_1nfe"          # the metric trials are ranked by (default: the study's), or a list of
                                       # metrics for a multi-objective search (its Pareto front)
    direction = "minimize"             # or "maximize", one per metric; default: the metric's own sense
    trials = 40                        # trials in all (a rerun adds trials up to this number)
    seeds = [0, 1]                     # every trial trains one run per seed; its value is their mean
    sampler = "tpe"                    # tpe | gp | cmaes | random | qmc | grid (Optuna's samplers)
    pruner = "median"                  # median | halving | hyperband | none, on the eval.every scores
                                       # (default: median; none for a multi-objective search)
    [search.space]                     # dotted config key -> a range or choices
    "meanflow.ratio" = {low = 0.1, high = 1.0}
    "optim.lr" = {low = 1e-4, high = 1e-2, log = true}
    "net.mlp.depth" = {low = 2, high = 5, type = "int"}
    "meanflow.tangent" = {choices = ["(v,0,1)", "(v,0,0)"]}
    "meanflow.t_dist" = {template = "lognorm({mu:.3f},{sigma:.3f})", params = {
                         mu = {low = -1.0, high = 0.5}, sigma = {low = 0.6, high = 1.6}}}

A template fills a string-valued key from numbers Optuna chooses: each of its `params` is a dimension
of its own (named "meanflow.t_dist.mu" in Optuna), formatted into the template with Python's str.format.
Every key must be a config key, and every bound and choice a value that key accepts (checked against
the study's [base] before anything is created).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import Field, model_validator

from workbench.config import ConfigError, RunConfig, with_overrides
from workbench.evaluate.names import higher_is_better
from workbench.study.schema import FileModel, StudyError

SAMPLERS = {  # Optuna's samplers by name, built from the [search] section (each worker builds its own)
    "tpe": lambda search: optuna.samplers.TPESampler(),
    "gp": lambda search: optuna.samplers.GPSampler(),
    "cmaes": lambda search: optuna.samplers.CmaEsSampler(),
    "random": lambda search: optuna.samplers.RandomSampler(),
    "qmc": lambda search: optuna.samplers.QMCSampler(),
    "grid": lambda search: optuna.samplers.GridSampler({name: grid_values(p) for name, p in dimensions(search).items()}),
}
PRUNERS = {  # Optuna's pruners by name, on the steps of the eval.every evaluations of a run of `steps` steps
    "median": lambda every, steps: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=every),
    "halving": lambda every, steps: optuna.pruners.SuccessiveHalvingPruner(min_resource=every),
    "hyperband": lambda every, steps: optuna.pruners.HyperbandPruner(min_resource=every, max_resource=steps),
    "none": lambda every, steps: optuna.pruners.NopPruner(),
}


class ParamModel(FileModel):
    """One dimension: a float or int range (low <= value <= high, optional log scale or step), or choices;
    or a template over dimensions of its own."""

    type: Literal["float", "int", "categorical", "template"] | None = None  # default: template with one,
    low: int | float | None = None              # categorical with choices, else int when both bounds are
    high: int | float | None = None             # written as integers (2, not 2.0), else float
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool] | None = Field(None, min_length=1)
    template: str | None = None
    params: dict[str, ParamModel] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> ParamModel:
        kind = self.kind
        if kind == "template":
            if self.template is None or not self.params or any(
                    v is not None for v in (self.low, self.high, self.choices, self.step)):
                raise ValueError("template: a template dimension has a template and params, and no low/high/choices")
            if any(p.kind == "template" for p in self.params.values()):
                raise ValueError("params: a template's params are ranges or choices, not templates")
            try:
                self.template.format(**{name: p.extremes()[0] for name, p in self.params.items()})
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"template: {self.template!r} does not format with params "
                                 f"{sorted(self.params)} ({type(err).__name__}: {err})") from None
            return self
        if self.params is not None or self.template is not None:
            raise ValueError("template: template and params go together")
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
        if self.template is not None:
            return "template"
        if self.choices is not None:
            return "categorical"
        both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if both_int and self.step is None and not self.log else "float"

    def extremes(self) -> list[Any]:
        """The values at the ends of the range (or every choice): what the config must accept."""
        if self.kind == "template":  # every param at its low end, then at its high end (and each choice)
            ends = [p.extremes() for p in self.params.values()]
            width = max(len(e) for e in ends)
            return [self.template.format(**{name: e[min(i, len(e) - 1)] for name, e in zip(self.params, ends)})
                    for i in range(width)]
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


Direction = Literal["minimize", "maximize"]


class SearchModel(FileModel):
    metric: str | list[str] | None = None  # default: the study's metric
    direction: Direction | list[Direction] | None = None  # default: each metric's own sense
    trials: int = Field(20, ge=1)
    seeds: list[int] | None = Field(None, min_length=1)  # default: the study's seeds
    sampler: Literal[tuple(SAMPLERS)] = "tpe"
    pruner: Literal[tuple(PRUNERS)] | None = None  # default: median, or none for several metrics
    space: dict[str, ParamModel] = Field(min_length=1)
    # named settings of searched keys that the confirmation study runs beside the best trial and the base
    # (e.g. another study's hand-picked base); a key left out keeps the base's value
    compare: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> SearchModel:
        for label, setting in self.compare.items():
            unknown = sorted(set(setting) - set(self.space))
            if unknown or not setting:
                raise ValueError(f"compare.{label}: names keys the search does not search: {unknown}; allowed: "
                                 f"{sorted(self.space)}" if unknown else f"compare.{label}: sets no key")
        if self.sampler == "grid" and any(p.kind not in ("categorical", "template") and p.step is None
                                          for p in dimensions(self).values()):
            raise ValueError("sampler: grid needs choices or a step on every dimension of the space")
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if isinstance(self.metric, list) and (not self.metric or len(set(self.metric)) != len(self.metric)):
            raise ValueError(f"metric: a list of distinct metric names, got {self.metric}")
        if isinstance(self.direction, list) and len(self.direction) != len(metrics):
            raise ValueError(f"direction: one per metric ({len(metrics)}), got {self.direction}")
        if len(metrics) > 1 and self.pruner not in (None, "none"):
            raise ValueError(f"pruner: Optuna prunes single-objective searches only; with {len(metrics)} metrics "
                             "set pruner = \"none\" (or leave it out)")
        if len(metrics) > 1 and self.sampler in ("gp", "cmaes"):
            raise ValueError(f"sampler: {self.sampler!r} is single-objective in Optuna; with {len(metrics)} metrics use "
                             "tpe, random, qmc or grid")
        return self

    @property
    def prune(self) -> str:
        """The pruner in effect."""
        return self.pruner or ("none" if isinstance(self.metric, list) and len(self.metric) > 1 else "median")


def dimensions(search: SearchModel) -> dict[str, ParamModel]:
    """Optuna's parameters: the space's dimensions, a template's params named '<key>.<param>'."""
    dims = {}
    for key, param in search.space.items():
        if param.kind == "template":
            dims |= {f"{key}.{name}": sub for name, sub in param.params.items()}
        else:
            dims[key] = param
    return dims


def objectives(search: SearchModel, study_metric: str) -> list[tuple[str, str]]:
    """(metric, direction) per objective; a direction left out is the metric's own sense."""
    metrics = search.metric if isinstance(search.metric, list) else [search.metric or study_metric]
    given = search.direction if isinstance(search.direction, list) else [search.direction] * len(metrics)
    return [(metric, direction or ("maximize" if higher_is_better(metric) else "minimize"))
            for metric, direction in zip(metrics, given)]


def check_space(search: SearchModel, base: dict, path: Path) -> None:
    """Every dimension's key must exist and accept both ends of its range (each choice), over `base`; a
    pruner needs intermediate evaluations."""
    if search.prune != "none":
        try:
            every = with_overrides(RunConfig(), {k: v for k, v in base.items() if k == "eval.every"}).eval.every
        except ConfigError as err:
            raise StudyError(f"{path}: base: {err}") from None
        if every == 0 and "eval.every" not in search.space:
            raise StudyError(f"{path}: search.pruner: {search.prune!r} prunes on the evaluations every eval.every "
                             "steps, but eval.every is 0; set \"eval.every\" in [base] or pruner = \"none\"")
    for key, param in search.space.items():
        if key in base:
            raise StudyError(f"{path}: search.space.{key}: also set in [base]; a key is searched or fixed, not both")
        for value in param.extremes():
            try:
                with_overrides(RunConfig(), {**base, key: value})
            except ConfigError as err:
                raise StudyError(f"{path}: search.space.{key}: {value!r} is not a value this key takes ({err})") from None
    for label, setting in search.compare.items():
        try:
            with_overrides(RunConfig(), {**base, **setting})
        except ConfigError as err:
            raise StudyError(f"{path}: search.compare.{label}: {err}") from None


def grid_points(search: SearchModel) -> list[dict[str, Any]]:
    """Every point of a grid search: Optuna params (as `dimensions` names them) per point."""
    dims = dimensions(search)
    return [dict(zip(dims, values)) for values in itertools.product(*(grid_values(p) for p in dims.values()))]


def grid_values(param: ParamModel) -> list[Any]:
    """Every value of a dimension on a grid: its choices, or low..high by step."""
    if param.kind == "categorical":
        return list(param.choices)
    count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
    values = [param.low + i * param.step for i in range(count)]
    return [int(v) for v in values] if param.kind == "int" else values


def suggest(trial, search: SearchModel) -> dict[str, Any]:
    """The trial's config overrides from Optuna's trial.suggest_* over `dimensions(search)` (so they are
    the trial's params: importances, slices and optuna-dashboard see them)."""
    params = {}
    for name, param in dimensions(search).items():
        if param.kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(param.choices))
        elif param.kind == "int":
            params[name] = trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1),
                                             log=param.log)
        else:
            params[name] = trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
    return overrides(search, params)


def overrides(search: SearchModel, params: dict[str, Any]) -> dict[str, Any]:
    """Config overrides (dotted key -> value) from a trial's params, templates filled in."""
    result = {}
    for key, param in search.space.items():
        if param.kind == "template":
            result[key] = param.template.format(**{name: params[f"{key}.{name}"] for name in param.params})
        else:
            result[key] = params[key]
    return result

"""Study files (studies/*.toml) -> validated cells (config x seed). Pure functions, no I/O but reading the file.

A study:
    name = "table1a"                      # [a-z0-9_-]+
    description = "the question, the cost, the command"
    metric = "transport_1nfe"             # compared across cells; lower is better (checked against the
                                          # names the evaluator produces for the study's data)
    seeds = [0, 1, 2]
    budget_minutes = 12                   # expected wall time on a 2-core machine (shown before running)
    [base]                                # dotted config keys shared by every cell
    "data.name" = "checkerboard"
    [[axes]]                              # the grid is the product of all axes
    key = "meanflow.ratio"                # or a list of keys varied together, values then lists
    values = [0.0, 0.25, 0.5, 1.0]
    labels = ["0% (FM)", "25%", "50%", "100%"]   # optional display labels
    paper = [328.91, 61.06, 63.14, 67.32]         # optional paper reference value per value
    name = "ratio"                                # optional; default: the last part of the first key
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, RunConfig, flatten, with_overrides

STUDY_KEYS = {"name", "description", "metric", "seeds", "budget_minutes", "base", "axes"}
AXIS_KEYS = {"key", "values", "labels", "paper", "name"}


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file, key, value and what is allowed."""


@dataclass(frozen=True)
class Axis:
    keys: tuple[str, ...]  # config keys varied together
    values: tuple[tuple[Any, ...], ...]  # one tuple of key values per setting
    labels: tuple[str, ...]
    paper: tuple[float | None, ...]
    title: str = ""  # the axis's `name` in the study file; default: the last part of its first key

    @property
    def name(self) -> str:
        return self.title or self.keys[0].split(".")[-1]


@dataclass(frozen=True)
class Cell:
    study: str
    settings: tuple[tuple[str, str], ...]  # (axis name, label) per axis
    seed: int
    overrides: dict = field(hash=False)  # dotted key -> value, base + axes + train.seed
    config: RunConfig = field(hash=False)

    @property
    def key(self) -> str:
        """Identity of the cell: a hash of its full config (seed included)."""
        return config_hash(self.config)

    @property
    def run_name(self) -> str:
        return " ".join(f"{name}={label}" for name, label in self.settings) + f" seed={self.seed}"


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    metric: str
    seeds: tuple[int, ...]
    budget_minutes: float
    base: dict
    axes: tuple[Axis, ...]
    path: Path

    def cells(self) -> list[Cell]:
        """Every (setting of every axis) x seed, in file order."""
        cells = []
        for combo in itertools.product(*[range(len(axis.values)) for axis in self.axes]):
            axis_overrides = {k: v for axis, i in zip(self.axes, combo) for k, v in zip(axis.keys, axis.values[i])}
            settings = tuple((axis.name, axis.labels[i]) for axis, i in zip(self.axes, combo))
            for seed in self.seeds:
                overrides = {**self.base, **axis_overrides, "train.seed": seed}
                try:
                    config = with_overrides(RunConfig(), overrides)
                except ConfigError as err:
                    raise StudyError(f"{self.path}: cell {settings} seed {seed}: {err}") from None
                cells.append(Cell(self.name, settings, seed, overrides, config))
        return cells


def study_file_text(study: Study) -> str:
    """The study file as run, logged with the study's parent run so a report renders from the store alone."""
    return study.path.read_text()


def config_hash(config: RunConfig) -> str:
    return hashlib.sha256(json.dumps(flatten(config), sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_study(path: str | Path) -> Study:
    """Reads and validates a study file (or a name in studies/); raises StudyError naming the problem."""
    path = resolve_path(path)
    return parse_study_text(path.read_text(), path)


def parse_study_text(text: str, path: Path) -> Study:
    """A study from the text of a study file (`path` names it in errors); every cell's config validated."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{path}: not valid TOML ({err})") from None
    study = parse_study(raw, path)
    check_metric(study, study.cells())  # every cell's config must validate before anything runs
    return study


def check_metric(study: Study, cells: list[Cell]) -> None:
    """The study's metric must be one every cell's evaluation produces, and one where lower is better
    (reports and the scheduler rank by it that way)."""
    from workbench.evaluate import HIGHER_IS_BETTER, metric_names  # evaluation code only when a study is checked

    for cell in cells:
        names = metric_names(cell.config)
        if study.metric not in names:
            raise StudyError(f"{study.path}: metric: {study.metric!r} is not produced for cell {cell.run_name!r} "
                             f"(data.name={cell.config.data.name!r}); it produces: {', '.join(names)}")
    if study.metric.split("_")[0] in HIGHER_IS_BETTER:
        lower = [n for n in metric_names(cells[0].config) if n.split("_")[0] not in HIGHER_IS_BETTER]
        raise StudyError(f"{study.path}: metric: {study.metric!r} is higher-is-better; a study ranks by a "
                         f"lower-is-better metric, one of: {', '.join(lower)}")


def resolve_path(path: str | Path) -> Path:
    candidates = [Path(path), Path("studies") / f"{path}.toml", Path(__file__).parent.parent / "studies" / f"{path}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StudyError(f"study {str(path)!r} not found (looked at {', '.join(map(str, candidates))})")


def parse_study(raw: dict, path: Path) -> Study:
    def fail(key: str, message: str) -> StudyError:
        return StudyError(f"{path}: {key}: {message}")

    unknown = set(raw) - STUDY_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key; allowed: {', '.join(sorted(STUDY_KEYS))}")
    for key in ("name", "metric", "seeds", "axes"):
        if key not in raw:
            raise fail(key, "missing (required: name, metric, seeds, axes)")
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_-]+", name):
        raise fail("name", f"{name!r} must match [a-z0-9_-]+")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise fail("seeds", f"{seeds!r} must be a non-empty list of distinct integers >= 0")
    base = raw.get("base", {})
    if not isinstance(base, dict):
        raise fail("base", "must be a table of dotted config keys")
    budget = raw.get("budget_minutes", 0)
    if not isinstance(budget, (int, float)) or budget < 0:
        raise fail("budget_minutes", f"{budget!r} must be a number >= 0")
    if not isinstance(raw["axes"], list) or not raw["axes"]:
        raise fail("axes", "needs at least one [[axes]] table")
    axes = tuple(parse_axis(axis, f"axes[{i}]", fail) for i, axis in enumerate(raw["axes"]))
    keys = [k for axis in axes for k in axis.keys]
    if len(set(keys)) != len(keys):
        raise fail("axes", f"a key appears in two axes: {keys}")
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise fail("axes", f"two axes share a name: {names} (set `name` on one)")
    return Study(name, str(raw.get("description", "")), str(raw["metric"]), tuple(seeds), float(budget), base, axes, path)


def parse_axis(raw: Any, where: str, fail) -> Axis:
    if not isinstance(raw, dict):
        raise fail(where, "must be a table")
    unknown = set(raw) - AXIS_KEYS
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", f"unknown key; allowed: {', '.join(sorted(AXIS_KEYS))}")
    if "key" not in raw or "values" not in raw:
        raise fail(where, "needs key and values")
    keys = (raw["key"],) if isinstance(raw["key"], str) else tuple(raw["key"])
    values = raw["values"]
    if not isinstance(values, list) or not values:
        raise fail(f"{where}.values", "must be a non-empty list")
    if len(keys) > 1 and not all(isinstance(v, list) and len(v) == len(keys) for v in values):
        raise fail(f"{where}.values", f"with {len(keys)} keys every value must be a list of {len(keys)}")
    values = tuple(tuple(v) if len(keys) > 1 else (v,) for v in values)
    labels = raw.get("labels", [", ".join(map(str, v)) for v in values])
    paper = raw.get("paper", [None] * len(values))
    for name, items in (("labels", labels), ("paper", paper)):
        if not isinstance(items, list) or len(items) != len(values):
            raise fail(f"{where}.{name}", f"needs one entry per value ({len(values)}), got {items!r}")
    if len({str(label) for label in labels}) != len(labels):
        raise fail(f"{where}.labels", f"labels must be distinct, got {labels}")
    title = raw.get("name", "")
    if not isinstance(title, str) or (title and not re.fullmatch(r"[A-Za-z0-9_-]+", title)):
        raise fail(f"{where}.name", f"{title!r} must match [A-Za-z0-9_-]+ (it names a tag and a figure)")
    return Axis(keys, values, tuple(str(label) for label in labels), tuple(paper), title)

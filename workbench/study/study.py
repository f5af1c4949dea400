"""Study files (studies/*.toml) -> validated cells (config x seed). Pure functions, no I/O but reading files.

A study:
    name = "table1a"                      # [a-z0-9_-]+
    description = "the question, the cost, the command"
    metric = "transport_1nfe"             # compared across cells; lower is better (checked against the
                                          # names the evaluator produces for the study's data)
    seeds = [0, 1, 2]
    budget_minutes = 12                   # expected wall time on a 2-core machine (shown before running)
    extends = "bases/imagenet.toml"       # optional: a file whose [base] this one's [base] goes over
    [base]                                # dotted config keys shared by every cell
    "data.name" = "checkerboard"
    [[axes]]                              # the grid is the product of all axes
    key = "meanflow.ratio"                # or a list of keys varied together, values then lists
    values = [0.0, 0.25, 0.5, 1.0]
    labels = ["0% (FM)", "25%", "50%", "100%"]   # optional display labels
    paper = [328.91, 61.06, 63.14, 67.32]         # optional paper reference value per value
    name = "ratio"                                # optional; default: the last part of the first key

The file's shape is checked by pydantic models (FileModel, extra keys forbidden); every cell's config
by workbench.config (workbench/study/schema.py turns pydantic's errors into StudyError). Errors name the
file, the key, the value and what is allowed.
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

import tomli_w
from pydantic import Field, field_validator, model_validator

from workbench.config import OBJECTIVE_SECTIONS, ConfigError, RunConfig, flatten, with_overrides
from workbench.evaluate.names import TWO_SIDED, family, higher_is_better, metric_names
from workbench.study.schema import FileModel, StudyError, validated
from workbench.study.space import SearchModel, check_space


class AxisModel(FileModel):
    key: str | list[str]
    values: list[Any] = Field(min_length=1)
    labels: list[str | int | float] | None = None
    paper: list[float | None] | None = None
    name: str = Field("", pattern=r"^[A-Za-z0-9_-]*$", description="names a tag and a figure")

    @model_validator(mode="after")
    def _shapes(self) -> AxisModel:
        keys = [self.key] if isinstance(self.key, str) else self.key
        if not keys or not all(keys):
            raise ValueError(f"key: a config key or a non-empty list of them, got {self.key!r}")
        if len(keys) > 1 and not all(isinstance(v, list) and len(v) == len(keys) for v in self.values):
            raise ValueError(f"values: with {len(keys)} keys every value must be a list of {len(keys)}")
        for name in ("labels", "paper"):
            items = getattr(self, name)
            if items is not None and len(items) != len(self.values):
                raise ValueError(f"{name}: needs one entry per value ({len(self.values)}), got {items!r}")
        repeated = [v for i, v in enumerate(self.values) if v in self.values[:i]]
        if repeated:
            raise ValueError(f"values: every value must be distinct (each is one setting), {repeated[0]!r} is repeated "
                             f"in {self.values}")
        if self.labels is not None and len({str(label) for label in self.labels}) != len(self.labels):
            raise ValueError(f"labels: labels must be distinct, got {self.labels}")
        return self


class StudyModel(FileModel):
    name: str
    description: str = ""
    metric: str
    seeds: list[int]
    budget_minutes: float = Field(0, ge=0)
    base: dict[str, Any] = {}
    axes: list[AxisModel] = []
    search: SearchModel | None = None  # what `wb search` lets Optuna choose (workbench/study/space.py)
    confirms: str | None = None  # the search whose best trial this study confirms (written by wb search)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9_-]+", name):
            raise ValueError(f"{name!r} must match [a-z0-9_-]+")
        return name

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"{seeds!r} must be a non-empty list of distinct integers >= 0")
        return seeds

    @model_validator(mode="after")
    def _axes(self) -> StudyModel:
        if not self.axes and self.search is None:
            raise ValueError("axes: needs at least one [[axes]] table (or a [search] section for wb search)")
        return self


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
    raw: dict = field(default_factory=dict, hash=False)  # the file as parsed, `extends` resolved
    search: SearchModel | None = None

    @property
    def search_seeds(self) -> list[int]:
        """The seeds every search trial trains on: search.seeds, else the study's."""
        return list(self.search.seeds or self.seeds) if self.search else list(self.seeds)

    def cells(self) -> list[Cell]:
        """Every (setting of every axis) x seed, in file order."""
        cells = []
        for combo in itertools.product(*[range(len(axis.values)) for axis in self.axes]):
            axis_overrides = {k: v for axis, i in zip(self.axes, combo) for k, v in zip(axis.keys, axis.values[i])}
            settings = tuple((axis.name, axis.labels[i]) for axis, i in zip(self.axes, combo))
            for seed in self.seeds:
                try:
                    config = with_overrides(RunConfig(), {**self.base, **axis_overrides, "train.seed": seed})
                except ConfigError as err:
                    raise StudyError(f"{self.path}: cell {settings} seed {seed}: {err}") from None
                cells.append(Cell(self.name, settings, seed, config))
        return cells


NOT_HASHED = {"train.nproc"}  # how many processes share a batch changes the float rounding, not the experiment
# Keys added after studies were first recorded: hashed only when set, so an older cell keeps its identity (and a rerun finds it).
HASHED_WHEN_SET = {"data.hflip", "data.augment_p", "train.ema_decays", "train.ema_every", "train.compile", "train.tf32",
                   "eval.raw", "eval.inception_mode", "eval.omega", "eval.interval", "eval.quantize", "eval.fid_reference",
                   "eval.vae_path", "net.songunet.channels", "net.songunet.channel_mult", "net.songunet.blocks",
                   "net.songunet.attn_resolutions", "net.songunet.dropout", "net.v_head", "net.dit.v_head_blocks",
                   "meanflow.objective", "meanflow.dudt", "meanflow.fd_step", "meanflow.beta", "meanflow.mmf_lambda",
                   "meanflow.mmf_warmup",
                   *(f"meanflow.{n}.{k}" for n, section in OBJECTIVE_SECTIONS.items() for k in section.model_fields)}


def config_hash(config: RunConfig) -> str:
    defaults = flatten(RunConfig())
    keys = {k: v for k, v in flatten(config).items()
            if k not in NOT_HASHED and not (k in HASHED_WHEN_SET and v == defaults[k])}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_file_text(study: Study) -> str:
    """The study file as run (`extends` resolved), logged with the study's parent run so that a report
    renders from the store alone."""
    return tomli_w.dumps(study.raw, multiline_strings=True)


def load_study(path: str | Path) -> Study:
    """Reads and validates a study file (or a name in studies/); raises StudyError naming the problem."""
    path = resolve_path(path)
    return parse_study_text(path.read_text(), path)


def parse_study_text(text: str, path: Path) -> Study:
    """A study from the text of a study file (`path` names it in errors); every cell's config validated."""
    study = parse_study(read_toml(text, path), path)
    check_metric(study, study.cells())  # every cell's config must validate before anything runs
    return study


def read_toml(text: str, path: Path) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{path}: not valid TOML ({err})") from None


def parse_study(raw: dict, path: Path) -> Study:
    raw = resolve_extends(raw, path)
    spec = validated(StudyModel, raw, path)
    axes = tuple(_axis(axis) for axis in spec.axes)
    keys = [k for axis in axes for k in axis.keys]
    if len(set(keys)) != len(keys):
        raise StudyError(f"{path}: axes: a key appears in two axes: {keys}")
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: axes: two axes share a name: {names} (set `name` on one)")
    if spec.search is not None:
        check_space(spec.search, dict(spec.base), path)
    return Study(spec.name, spec.description, spec.metric, tuple(spec.seeds), float(spec.budget_minutes),
                 dict(spec.base), axes, path, raw, spec.search)


def resolve_extends(raw: dict, path: Path) -> dict:
    """A study with `extends = "file.toml"` (relative to the study file): that file's [base] under this one's."""
    if "extends" not in raw:
        return raw
    target = path.parent / str(raw["extends"])
    if not target.is_file():
        raise StudyError(f"{path}: extends: {str(raw['extends'])!r} not found (looked at {target})")
    parent = read_toml(target.read_text(), target)
    if set(parent) - {"base"} or not isinstance(parent.get("base", {}), dict):
        raise StudyError(f"{target}: a file a study extends holds one [base] table, found keys {sorted(parent)}")
    merged = {k: v for k, v in raw.items() if k != "extends"}
    merged["base"] = {**parent.get("base", {}), **raw.get("base", {})}
    return merged


def _axis(spec: AxisModel) -> Axis:
    keys = (spec.key,) if isinstance(spec.key, str) else tuple(spec.key)
    values = tuple(tuple(v) if len(keys) > 1 else (v,) for v in spec.values)
    labels = spec.labels if spec.labels is not None else [", ".join(map(str, v)) for v in values]
    paper = spec.paper if spec.paper is not None else [None] * len(values)
    return Axis(keys, values, tuple(str(label) for label in labels), tuple(paper), spec.name)


def check_metric(study: Study, cells: list[Cell]) -> None:
    """The study's metric must be one every cell's evaluation produces, and one where lower is better
    (reports and the scheduler rank by it that way)."""

    metrics = {"metric": study.metric}
    if study.search is not None and study.search.metric is not None:
        names = study.search.metric if isinstance(study.search.metric, list) else [study.search.metric]
        metrics |= {f"search.metric {name!r}": name for name in names}
    for where, metric in metrics.items():
        for cell in cells:
            names = metric_names(cell.config)
            if metric not in names:
                raise StudyError(f"{study.path}: {where.split(' ')[0]}: {metric!r} is not produced for cell "
                                 f"{cell.run_name!r} (data.name={cell.config.data.name!r}); it produces: "
                                 f"{', '.join(names)}")
        if family(metric) in TWO_SIDED or metric.endswith("_exact"):
            raise StudyError(f"{study.path}: {where.split(' ')[0]}: {metric!r} cannot rank cells: "
                             + ("its target is 1, neither direction is better" if family(metric) in TWO_SIDED
                                else "it scores the exact target map, not the model"))
        if where.startswith("search."):  # a search states its direction; a study ranks lower-is-better
            continue
        if higher_is_better(metric):
            lower = [n for n in metric_names(cells[0].config) if not higher_is_better(n)]
            raise StudyError(f"{study.path}: {where}: {metric!r} is higher-is-better; a study ranks by a "
                             f"lower-is-better metric, one of: {', '.join(lower)}")


SHIPPED = Path(__file__).parent.parent.parent / "studies"


def available() -> list[str]:
    """Names of the studies `wb ablate NAME` finds: ./studies/*.toml and the shipped ones."""
    return sorted({p.stem for folder in (Path("studies"), SHIPPED) for p in folder.glob("*.toml")} - {"calibration"})


def did_you_mean(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def resolve_path(path: str | Path) -> Path:
    candidates = [Path(path), Path("studies") / f"{path}.toml", SHIPPED / f"{path}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if str(path).endswith(".toml") or "/" in str(path):
        raise StudyError(f"study file {str(path)!r} not found")
    names = available()
    raise StudyError(f"study {str(path)!r} not found (no file {path}, no studies/{path}.toml){did_you_mean(str(path), names)} "
                     f"Studies: {', '.join(names)}")

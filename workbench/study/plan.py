"""The calibration plan of `wb calibrate`: the Table 1 studies under candidate CPU budgets.

A plan (studies/calibration.toml) lists studies, candidate budgets and, per study, the chosen budget.
A budget is a set of [base] settings. A shipped study file carries its chosen budget, so that budget
runs the study under its own name (the shipped study's runs); every other budget runs
`<study>-<budget>`, from a study file written to studies/calibration/ (the exact file each candidate
ran, so `wb ablate` can repeat it). Runs go through `wb ablate`'s machinery, so they resume and land
in the same MLflow store, and the report (reports/calibration/README.md, workbench/report/calibration.py)
is computed from that store alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from workbench.study.schema import FileModel, StudyError, validated
from workbench.study.study import read_toml

SHIPPED = "shipped"  # the report's label for the shipped studies, each under its chosen budget


@dataclass(frozen=True)
class Budget:
    name: str
    description: str
    overrides: dict = field(hash=False)  # dotted config key -> value, applied over each study's [base]
    studies: tuple[str, ...] | None = None  # None: every study of the plan


@dataclass(frozen=True)
class Plan:
    description: str
    studies: tuple[str, ...]
    chosen: dict = field(hash=False)  # study -> the budget its shipped study file carries
    budgets: tuple[Budget, ...]
    path: Path

    def budget(self, name: str) -> Budget:
        for budget in self.budgets:
            if budget.name == name:
                return budget
        raise StudyError(f"{self.path}: no budget {name!r} (have {', '.join(b.name for b in self.budgets)})")

    def pairs(self) -> list[tuple[Budget, str]]:
        """(budget, study) in run order: the shipped studies (each under its chosen budget) first."""
        pairs = [(b, s) for b in self.budgets for s in self.studies if b.studies is None or s in b.studies]
        return sorted(pairs, key=lambda pair: not self.is_chosen(*pair))

    def is_chosen(self, budget: Budget, study: str) -> bool:
        return self.chosen[study] == budget.name

    def run_name(self, budget: Budget, study: str) -> str:
        """The study's own name under its chosen budget, else `<study>-<budget>`."""
        return study if self.is_chosen(budget, study) else f"{study}-{budget.name}"


class BudgetModel(FileModel):
    name: str
    description: str = ""
    set: dict[str, Any] = {}  # dotted config key -> value, over each study's [base]
    studies: list[str] | None = None  # None: every study of the plan

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]+", name) or name == SHIPPED:
            raise ValueError(f"{name!r} must match [a-z0-9_]+ (the study runs as <study>-<name>) "
                             f"and not be {SHIPPED!r} (the report's label for the shipped studies)")
        return name


class PlanModel(FileModel):
    description: str = ""
    studies: list[str] = Field(min_length=1)
    chosen: str | dict[str, str]  # one budget for every study, or study -> budget
    budgets: list[BudgetModel]

    @model_validator(mode="after")
    def _consistent(self) -> PlanModel:
        names = [b.name for b in self.budgets]
        if len(set(names)) != len(names):
            raise ValueError(f"budgets: budget names must be unique, got {names}")
        for i, budget in enumerate(self.budgets):
            if budget.studies is not None and set(budget.studies) - set(self.studies):
                raise ValueError(f"budgets[{i}].studies: must list studies of the plan ({', '.join(self.studies)}), "
                                 f"got {budget.studies!r}")
        chosen = dict.fromkeys(self.studies, self.chosen) if isinstance(self.chosen, str) else self.chosen
        if set(chosen) != set(self.studies):
            raise ValueError(f"chosen: must be a budget name or a table giving each study of the plan "
                             f"({', '.join(self.studies)}) its budget, got {self.chosen!r}")
        for study, name in chosen.items():
            if name not in names:
                raise ValueError(f"chosen.{study}: {name!r} is not a budget ({', '.join(names)})")
            budget = self.budgets[names.index(name)]
            if budget.studies is not None and study not in budget.studies:
                raise ValueError(f"chosen.{study}: budget {name!r} does not run {study!r} (its studies: "
                                 f"{budget.studies})")
        return self


def load_plan(path: str | Path = "studies/calibration.toml") -> Plan:
    """Reads and validates a calibration plan; raises StudyError naming the file, key and problem."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"calibration plan {str(path)!r} not found")
    spec = validated(PlanModel, read_toml(path.read_text(), path), path)
    chosen = dict.fromkeys(spec.studies, spec.chosen) if isinstance(spec.chosen, str) else spec.chosen
    budgets = tuple(Budget(b.name, b.description, dict(b.set), None if b.studies is None else tuple(b.studies))
                    for b in spec.budgets)
    return Plan(spec.description, tuple(spec.studies), {s: chosen[s] for s in spec.studies}, budgets, path)



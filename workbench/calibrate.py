"""`wb calibrate`: run the Table 1 studies under candidate CPU budgets and measure which outcomes are signal.

A plan (studies/calibration.toml) lists studies, candidate budgets and, per study, the chosen budget.
A budget is a set of [base] settings. A shipped study file carries its chosen budget, so that budget
runs the study under its own name (the shipped study's runs); every other budget runs
`<study>-<budget>`, from a study file written to studies/calibration/ (the exact file each candidate
ran, so `wb ablate` can repeat it). Runs go through `wb ablate`'s machinery, so they resume and land
in the same MLflow store, and the report (reports/calibration/README.md) is computed from that store
alone.

Per study and budget the report measures, on the log of the metric (distances differ by factors):
  seed SD   pooled within-setting standard deviation over seeds;
  spread    standard deviation of the per-setting means;
  noise     seed SD / spread: below about 0.5 the settings' order stands out of the seed noise;
  gap       (runner-up's mean - best's mean) / seed SD: one far-off setting (Flow Matching in 1a)
            makes the spread large, so this says whether the best itself is resolved;
plus the settings a paired t-test separates from our best, and agreement with the paper (same best
setting, Kendall tau).
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w
from mlflow import MlflowClient

from workbench.ablate import Stores, run_study
from workbench.config import flatten
from workbench.report import (BARS, Record, axis_table, fmt, kendall_tau, load_record, meets_bar, require_store,
                              study_runs)
from workbench.studies import Study, StudyError, load_study, parse_study_text, resolve_path

PLAN_KEYS = {"description", "studies", "chosen", "budgets"}
BUDGET_KEYS = {"name", "description", "set", "studies"}
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


def load_plan(path: str | Path = "studies/calibration.toml") -> Plan:
    """Reads and validates a calibration plan; raises StudyError naming the file, key and problem."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"calibration plan {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{path}: not valid TOML ({err})") from None

    def fail(key: str, message: str) -> StudyError:
        return StudyError(f"{path}: {key}: {message}")

    unknown = set(raw) - PLAN_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key; allowed: {', '.join(sorted(PLAN_KEYS))}")
    for key in ("studies", "chosen", "budgets"):
        if key not in raw:
            raise fail(key, "missing (required: studies, chosen, budgets)")
    studies = raw["studies"]
    if not isinstance(studies, list) or not studies or not all(isinstance(s, str) for s in studies):
        raise fail("studies", f"must be a non-empty list of study names, got {studies!r}")
    budgets = []
    for i, entry in enumerate(raw["budgets"]):
        where = f"budgets[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise fail(where, "needs a name")
        if set(entry) - BUDGET_KEYS:
            raise fail(f"{where}.{sorted(set(entry) - BUDGET_KEYS)[0]}", f"unknown key; allowed: {', '.join(sorted(BUDGET_KEYS))}")
        name = entry["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name) or name == SHIPPED:
            raise fail(f"{where}.name", f"{name!r} must match [a-z0-9_]+ (the study runs as <study>-<name>) "
                                        f"and not be {SHIPPED!r} (the report's label for the shipped studies)")
        only = entry.get("studies")
        if only is not None and (not isinstance(only, list) or set(only) - set(studies)):
            raise fail(f"{where}.studies", f"must list studies of the plan ({', '.join(studies)}), got {only!r}")
        budgets.append(Budget(name, str(entry.get("description", "")), dict(entry.get("set", {})),
                              None if only is None else tuple(only)))
    names = [b.name for b in budgets]
    if len(set(names)) != len(names):
        raise fail("budgets", f"budget names must be unique, got {names}")
    chosen = raw["chosen"]
    if isinstance(chosen, str):  # one budget for every study
        chosen = dict.fromkeys(studies, chosen)
    if not isinstance(chosen, dict) or set(chosen) != set(studies):
        raise fail("chosen", f"must be a budget name or a table giving each study of the plan ({', '.join(studies)}) "
                             f"its budget, got {chosen!r}")
    for study, name in chosen.items():
        if name not in names:
            raise fail(f"chosen.{study}", f"{name!r} is not a budget ({', '.join(names)})")
        budget = budgets[names.index(name)]
        if budget.studies is not None and study not in budget.studies:
            raise fail(f"chosen.{study}", f"budget {name!r} does not run {study!r} (its studies: {list(budget.studies)})")
    return Plan(str(raw.get("description", "")), tuple(studies), {s: chosen[s] for s in studies}, tuple(budgets), path)


def derived_study(plan: Plan, budget: Budget, study: str, folder: Path) -> tuple[Path, str | None]:
    """The study file of `study` under `budget`, validated. For the study's chosen budget that is the
    shipped file itself, (its path, None), after checking that it carries the budget's settings; for
    any other, (folder/<study>-<budget>.toml, the text to write there): the shipped study with the
    budget's settings over its [base]."""
    source = resolve_path(study)
    shipped = load_study(source)
    raw = tomllib.loads(source.read_text())
    raw["name"] = plan.run_name(budget, study)
    raw["base"] = {**raw.get("base", {}), **budget.overrides}
    settings = ", ".join(f"{k} = {v}" for k, v in budget.overrides.items()) or "none"
    raw["description"] = (f"Calibration candidate {budget.name!r} of {study}: {budget.description}.\n"
                          f"[base] settings over the shipped study: {settings}. The shipped study's description "
                          f"(its chosen budget is {plan.chosen[study]!r}) follows.\n\n"
                          f"{raw.get('description', '').strip()}\n")
    path = folder / f"{raw['name']}.toml"
    text = f"# Generated by `wb calibrate` from studies/{source.name} and the plan's budget {budget.name!r}.\n" \
           + tomli_w.dumps(raw, multiline_strings=True)
    try:
        candidate = parse_study_text(text, path)
    except StudyError as err:
        raise StudyError(f"budget {budget.name!r} on study {study!r}: {err}") from None
    differs = config_differences(shipped, candidate)
    if plan.is_chosen(budget, study):
        if differs:
            raise StudyError(f"{source}: the plan {plan.path} chooses budget {budget.name!r} for {study!r}, but the "
                             f"study file differs from it in {differs}; a shipped study must carry its chosen budget")
        return source, None
    if not differs:
        raise StudyError(f"{plan.path}: budget {budget.name!r} changes nothing in {study!r} (the study already has "
                         f"its settings), so it would repeat the shipped study's runs under another name")
    return path, text


def config_differences(a: Study, b: Study) -> str:
    """The config keys (with both values) in which the first cells of two studies differ, '' if none."""
    x, y = (flatten(s.cells()[0].config) for s in (a, b))
    return ", ".join(f"{k} ({x.get(k)!r} vs {y.get(k)!r})" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k))


def write_studies(plan: Plan, budgets: list[str] | None = None, studies: list[str] | None = None) -> list[Path]:
    """The study file of every selected (budget, study) pair, in run order; all are validated before
    any is written, so a bad budget leaves nothing behind. Derived ones go to studies/calibration/."""
    folder = plan.path.parent / "calibration"
    files = [derived_study(plan, b, s, folder) for b, s in plan.pairs()
             if (budgets is None or b.name in budgets) and (studies is None or s in studies)]
    for path, text in files:
        if text is not None and (not path.is_file() or path.read_text() != text):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return [path for path, _ in files]


def run_plan(plan: Plan, stores: Stores, workers: int, budgets: list[str] | None = None,
             studies: list[str] | None = None, progress=print) -> list[tuple[str, dict]]:
    """Runs the selected (budget, study) pairs one after the other, each resuming where it stopped;
    returns (study name, wb ablate summary) per pair."""
    for name in budgets or []:
        plan.budget(name)
    for name in studies or []:
        if name not in plan.studies:
            raise StudyError(f"{plan.path}: study {name!r} is not in the plan ({', '.join(plan.studies)})")
    paths = write_studies(plan, budgets, studies)
    specs = [load_study(path) for path in paths]
    return [(spec.name, run_study(spec, stores, workers, progress)) for spec in specs]


# Measuring ----------------------------------------------------------------------------------------

def noise(record: Record) -> dict:
    """Seed SD, spread and their ratio on log(metric) over the first axis, plus the paper comparison."""
    axis = record.study.axes[0]
    done = record.cells[(record.cells["status"] == "finished") & (record.cells["metric"] > 0)]
    logs = done.assign(log=np.log(done["metric"])).groupby(axis.name)["log"]
    variances = logs.var(ddof=1).dropna()
    means = logs.mean()
    seed_sd = math.sqrt(variances.mean()) if len(variances) else math.nan
    spread = float(means.std(ddof=1)) if len(means) > 1 else math.nan
    table = axis_table(record, 0)
    best = table.loc[table["mean"].idxmin(), "value"] if table["mean"].notna().any() else None
    paper_best = table.loc[table["paper"].idxmin(), "value"] if table["paper"].notna().any() else None
    others = table[(table["value"] != best) & (table["n"] > 0)]
    ordered = means.sort_values()
    gap = (ordered.iloc[1] - ordered.iloc[0]) / seed_sd if len(ordered) > 1 and seed_sd else math.nan
    quality = best_quality(record, axis.name, best)
    return {"seed_sd": seed_sd, "spread": spread, "ratio": seed_sd / spread if spread else math.nan, "gap": gap,
            **quality,
            "separated": int((others["p_vs_best"] < 0.05).sum()), "others": len(others),
            "best": best, "paper_best": paper_best, "match": best is not None and best == paper_best,
            "tau": kendall_tau(table)[0], "finished": len(record.cells[record.cells["status"] == "finished"]),
            "cells": len(record.cells)}


def best_quality(record: Record, axis_name: str, best: str | None) -> dict:
    """The best setting's mean 1-NFE precision and transport error over seeds, and whether it meets the
    bar of a model that has learned the data (workbench.report.BARS); NaN / None for other data."""
    data_name = record.study.cells()[0].config.data.name
    done = record.cells[(record.cells["status"] == "finished") & (record.cells[axis_name] == best)]
    if best is None or data_name not in BARS or not len(done):
        return {"best_precision": math.nan, "best_transport": math.nan, "bar": None}
    scores = pd.DataFrame(list(done["metrics"])).mean()
    return {"best_precision": scores.get("precision_1nfe", math.nan),
            "best_transport": scores.get("transport_1nfe", math.nan), "bar": meets_bar(data_name, scores)}


def elapsed_minutes(client: MlflowClient, name: str) -> float:
    """Wall time of the study's parent run (first start to last end), NaN while it runs."""
    parents = study_runs(client, name)
    if not parents or not parents[0].info.end_time:
        return math.nan
    return (parents[0].info.end_time - parents[0].info.start_time) / 60_000


def measure(plan: Plan, tracking_uri: str) -> pd.DataFrame:
    """One row per (budget, study) the store holds; pairs not run yet are left out."""
    rows, client = [], MlflowClient(tracking_uri)
    for budget, study in plan.pairs():
        name = plan.run_name(budget, study)
        if client.get_experiment_by_name(name) is None:
            continue
        record = load_record(name, tracking_uri)
        rows.append({"budget": budget.name, "study": study, "name": name, "chosen": plan.is_chosen(budget, study),
                     **noise(record),
                     "elapsed_min": elapsed_minutes(client, name)})
    return pd.DataFrame(rows)


# The page -----------------------------------------------------------------------------------------

def summary_row(label: str, group: pd.DataFrame) -> str:
    return (f"| {label} | {len(group)} | {group['finished'].sum()}/{group['cells'].sum()} "
            f"| {fmt(group['ratio'].median(), 2)} | {fmt(group['gap'].median(), 2)} | {int(group['match'].sum())}/{len(group)} "
            f"| {fmt(group['tau'].mean(), 2)} | {int(group['separated'].sum())}/{int(group['others'].sum())} "
            f"| {fmt(group['elapsed_min'].sum(min_count=len(group)), 3)} |")


def comparisons(table: pd.DataFrame) -> list[str]:
    """One sentence per budget: the shipped studies (rows with `chosen`) against it, on the studies
    both ran where the budget is not the chosen one (elsewhere the rows are the same runs)."""
    mine = table[table["chosen"]].set_index("study")
    lines = []
    for name, other in table[~table["chosen"]].groupby("budget", sort=False):
        other = other.set_index("study")
        both = mine.dropna(subset=["ratio"]).index.intersection(other.dropna(subset=["ratio"]).index)
        if not len(both):
            continue
        a, b = mine.loc[both], other.loc[both]
        lines.append(f"- {SHIPPED} against {name}, on the {len(both)} studies where {name} is a candidate not chosen: "
                     f"lower noise on {int((a['ratio'] < b['ratio']).sum())} (median {fmt(a['ratio'].median(), 2)} vs "
                     f"{fmt(b['ratio'].median(), 2)}), larger gap on {int((a['gap'] > b['gap']).sum())} (median "
                     f"{fmt(a['gap'].median(), 2)} vs {fmt(b['gap'].median(), 2)}), best = paper's on "
                     f"{int(a['match'].sum())} vs {int(b['match'].sum())}, mean tau {fmt(a['tau'].mean(), 2)} vs "
                     f"{fmt(b['tau'].mean(), 2)}, settings separated {int(a['separated'].sum())} vs "
                     f"{int(b['separated'].sum())} of {int(a['others'].sum())}.")
    return lines


def render_calibration(plan: Plan, tracking_uri: str, out_root: Path = Path("reports")) -> Path:
    """Writes out_root/calibration/README.md; returns its path."""
    require_store(tracking_uri)
    table = measure(plan, tracking_uri)
    if table.empty:
        raise StudyError(f"{plan.path}: no calibration runs in {tracking_uri} (run `wb calibrate` first)")
    lines = ["# Calibrating the CPU budgets of the Table 1 studies", "", plan.description.strip(), "",
             "Measured on log(metric) over finished cells: **seed SD** = pooled within-setting standard deviation "
             "across seeds; **spread** = standard deviation of the per-setting means; **noise** = seed SD / spread "
             "(lower is better: at 1 the seeds vary as much as the settings do). **gap** = (runner-up's mean - best's "
             "mean) / seed SD: below about 2 the best setting is not resolved from the runner-up, however large "
             "the spread. **separated** = settings a paired "
             "t-test over seeds puts behind our best at p < 0.05, of all others. **tau** = Kendall tau between our "
             "means and the paper's FIDs. **learned (bar)**: whether our best setting's 1-NFE samples meet the bar of a "
             "model that has learned the data (" + "; ".join(f"{k}: {v}" for k, v in BARS.items()) + "), mean over seeds. "
             "Minutes: wall time of the study (`wb ablate`, 2 workers on 2 cores).", "",
             "## Budgets", "", "| budget | [base] settings | chosen for | description |", "|---|---|---|---|"]
    for budget in plan.budgets:
        settings = ", ".join(f"`{k}={v}`" for k, v in budget.overrides.items()) or "none (as in the study files)"
        chosen_for = ", ".join(s for s in plan.studies if plan.chosen[s] == budget.name) or "–"
        lines.append(f"| {budget.name} | {settings} | {chosen_for} | {budget.description} |")
    lines += ["", "## Summary per budget", "",
              f"**{SHIPPED}**: the shipped study files, each study under its chosen budget (the suite `wb ablate` runs).", "",
              "| budget | studies | cells finished | median noise | median gap | best = paper's | mean tau "
              "| settings separated | wall min (sum) |", "|---|---|---|---|---|---|---|---|---|",
              summary_row(f"**{SHIPPED}**", table[table["chosen"]])]
    lines += [summary_row(name, group) for name, group in table.groupby("budget", sort=False)]
    lines += ["", *comparisons(table), "", "## Per study", "",
              "The chosen budget of each study in bold; its row links to the study's report.", "",
              "| study | budget | cells | seed SD | spread | noise | gap | separated | our best | best's precision_1nfe "
              "| best's transport_1nfe | learned (bar) | paper's best | tau | wall min |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.sort_values(["study"], kind="stable").itertuples():
        budget = f"**{row.budget}**" if row.chosen else row.budget
        study = f"[{row.study}](../{row.name}/README.md)" if row.chosen else row.study
        best = row.best if isinstance(row.best, str) else "–"
        bar = "–" if row.bar is None or (isinstance(row.bar, float) and math.isnan(row.bar)) else "yes" if row.bar else "**no**"
        lines.append(f"| {study} | {budget} | {row.finished}/{row.cells} | {fmt(row.seed_sd, 2)} | {fmt(row.spread, 2)} "
                     f"| {fmt(row.ratio, 2)} | {fmt(row.gap, 2)} | {row.separated}/{row.others} | {best} "
                     f"| {fmt(row.best_precision, 3)} | {fmt(row.best_transport, 3)} | {bar} | {row.paper_best} "
                     f"| {fmt(row.tau, 2)} | {fmt(row.elapsed_min, 3)} |")
    lines += ["", "## Where the CPU proxy disagrees with the paper (chosen budgets)", ""]
    chosen = table[table["chosen"]].sort_values("study", kind="stable")
    for row in chosen.itertuples():
        if row.match and row.tau >= 0.5:
            continue
        order = "reverses" if row.tau < 0 else "does not follow" if row.tau < 0.5 else "follows"
        lines.append(f"- {row.study} ({row.budget}): our best is {row.best}, the paper's {row.paper_best}; our order "
                     f"{order} the paper's (tau {fmt(row.tau, 2)}); noise {fmt(row.ratio, 2)}, gap {fmt(row.gap, 2)}, "
                     f"{row.separated} of {row.others} other settings separated from our best.")
    agree = chosen[chosen["match"] & (chosen["tau"] >= 0.5)]["study"].tolist()
    lines += ["", f"Agrees with the paper (same best, tau >= 0.5): {', '.join(agree) or 'none'}.", "",
              "---", f"Generated by `wb calibrate --report-only` from the MLflow store and the plan {plan.path.name}.", ""]
    path = out_root / "calibration" / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path

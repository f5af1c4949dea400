"""reports/calibration/README.md: per study and budget of a calibration plan, from the MLflow store alone.

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
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from workbench.report import markdown, stats
from workbench.report.quality import BARS, best_quality
from workbench.report.record import Record, axis_table, best_value, fmt, load_record
from workbench.report.verdicts import outcome
from workbench.stores import layout, urls
from workbench.study.plan import SHIPPED, Plan
from workbench.study.study import StudyError


def noise(record: Record) -> dict:
    """Seed SD, spread, their ratio and the gap on log(metric) over the first axis (stats.log_noise), the
    best setting's quality, and the paper comparison."""
    axis = record.study.axes[0]
    table = axis_table(record, 0)
    best, paper_best = best_value(table), best_value(table, "paper")
    others = table[(table["value"] != best) & (table["n"] > 0)]
    return {**stats.log_noise(record.finished(), axis.name), **best_quality(record, axis.name, best),
            "separated": int((others["p_holm"] < stats.ALPHA).sum()), "others": len(others),
            "best": best, "paper_best": paper_best, "match": best is not None and best == paper_best,
            "tau": stats.kendall_tau(table)[0], "agreement": outcome(table)["agreement"],
            "finished": len(record.finished()), "cells": len(record.cells)}


def elapsed_minutes(client: MlflowClient, name: str) -> float:
    """Wall time of the study's parent run (first start to last end), NaN while it runs."""
    parent = layout.find_parent(client, name)
    if parent is None or not parent.info.end_time:
        return math.nan
    return (parent.info.end_time - parent.info.start_time) / 60_000


def measure(plan: Plan, tracking_uri: str) -> pd.DataFrame:
    """One row per (budget, study) the store holds; pairs not run yet are left out."""
    rows, client = [], MlflowClient(tracking_uri)
    for budget, study in plan.pairs():
        name = plan.run_name(budget, study)
        if layout.find_parent(client, name) is None:
            continue
        record = load_record(name, tracking_uri)
        rows.append({"budget": budget.name, "study": study, "name": name, "chosen": plan.is_chosen(budget, study),
                     **noise(record),
                     "elapsed_min": elapsed_minutes(client, name)})
    return pd.DataFrame(rows)


# The page -----------------------------------------------------------------------------------------

def summary_row(label: str, group: pd.DataFrame) -> str:
    return markdown.row([label, len(group), f"{group['finished'].sum()}/{group['cells'].sum()}",
                         fmt(group['ratio'].median(), 2), fmt(group['gap'].median(), 2),
                         f"{int(group['match'].sum())}/{len(group)}", fmt(group['tau'].mean(), 2),
                         f"{int(group['separated'].sum())}/{int(group['others'].sum())}",
                         fmt(group['elapsed_min'].sum(min_count=len(group)), 3)])


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
    urls.require_store(tracking_uri)
    table = measure(plan, tracking_uri)
    if table.empty:
        raise StudyError(f"{plan.path}: no calibration runs in {tracking_uri} (run `wb calibrate` first)")
    lines = ["# Calibrating the CPU budgets of the Table 1 studies", "", plan.description.strip(), "",
             "Measured on log(metric) over finished cells: **seed SD** = pooled within-setting standard deviation "
             "across seeds; **spread** = standard deviation of the per-setting means; **noise** = seed SD / spread "
             "(lower is better: at 1 the seeds vary as much as the settings do). **gap** = (runner-up's mean - best's "
             "mean) / seed SD: below about 2 the best setting is not resolved from the runner-up, however large "
             "the spread. **separated** = settings a paired "
             "t-test over seeds puts behind our best at p < 0.05 (Holm-corrected per table), of all others. **tau** = "
             "Kendall tau between our "
             "means and the paper's FIDs. **learned (bar)**: whether our best setting's 1-NFE samples meet the bar of a "
             "model that has learned the data (" + "; ".join(f"{k}: {v}" for k, v in BARS.items()) + "), mean over seeds. "
             "Minutes: wall time of the study (`wb ablate`, 2 workers on 2 cores).", "",
             "## Budgets", "", *markdown.header(["budget", "[base] settings", "chosen for", "description"])]
    for budget in plan.budgets:
        settings = ", ".join(f"`{k}={v}`" for k, v in budget.overrides.items()) or "none (as in the study files)"
        chosen_for = ", ".join(s for s in plan.studies if plan.chosen[s] == budget.name) or "–"
        lines.append(markdown.row([budget.name, settings, chosen_for, budget.description]))
    lines += ["", "## Summary per budget", "",
              f"**{SHIPPED}**: the shipped study files, each study under its chosen budget (the suite `wb ablate` runs).", "",
              *markdown.header(["budget", "studies", "cells finished", "median noise", "median gap", "best = paper's",
                                "mean tau", "settings separated", "wall min (sum)"]),
              summary_row(f"**{SHIPPED}**", table[table["chosen"]])]
    lines += [summary_row(name, group) for name, group in table.groupby("budget", sort=False)]
    lines += ["", *comparisons(table), "", "## Per study", "",
              "The chosen budget of each study in bold; its row links to the study's report.", "",
              *markdown.header(["study", "budget", "cells", "seed SD", "spread", "noise", "gap", "separated", "our best",
                                "best's precision_1nfe", "best's transport_1nfe", "learned (bar)", "paper's best", "tau",
                                "wall min"])]
    for row in table.sort_values(["study"], kind="stable").itertuples():
        budget = f"**{row.budget}**" if row.chosen else row.budget
        study = f"[{row.study}](../{row.name}/README.md)" if row.chosen else row.study
        best = row.best if isinstance(row.best, str) else "–"
        bar = "–" if row.bar is None or (isinstance(row.bar, float) and math.isnan(row.bar)) else "yes" if row.bar else "**no**"
        lines.append(markdown.row([study, budget, f"{row.finished}/{row.cells}", fmt(row.seed_sd, 2), fmt(row.spread, 2),
                                   fmt(row.ratio, 2), fmt(row.gap, 2), f"{row.separated}/{row.others}", best,
                                   fmt(row.best_precision, 3), fmt(row.best_transport, 3), bar, row.paper_best,
                                   fmt(row.tau, 2), fmt(row.elapsed_min, 3)]))
    lines += ["", "## Where the CPU proxy does not agree with the paper (chosen budgets)", "",
              "agree: the paper's best is ours and every other setting is worse at p < 0.05 (paired t-test over seeds, "
              "Holm-corrected per table); disagree: another best that way, or the paper's best worse than ours; "
              "unresolved: the paper's best within seed noise of ours (the study's report has the tests).", ""]
    chosen = table[table["chosen"]].sort_values("study", kind="stable")
    for row in chosen.itertuples():
        if row.agreement == "agree":
            continue
        lines.append(f"- {row.study} ({row.budget}): **{row.agreement}**; our best is {row.best}, the paper's "
                     f"{row.paper_best}; Kendall tau {fmt(row.tau, 2)}; noise {fmt(row.ratio, 2)}, gap {fmt(row.gap, 2)}, "
                     f"{row.separated} of {row.others} other settings separated from our best.")
    agree = chosen[chosen["agreement"] == "agree"]["study"].tolist()
    lines += ["", f"Agrees with the paper: {', '.join(agree) or 'none'}.", "",
              "---", f"Generated by `wb calibrate --report-only` from the MLflow store and the plan {plan.path.name}.", ""]
    path = out_root / "calibration" / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path

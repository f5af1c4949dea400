"""What a table of one axis says: our best setting against the others and the paper's (outcome, the sentence
under the table), and whether that verdict holds when the same runs are ranked by each other metric they
logged (other_metrics)."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd

from workbench.evaluate.names import with_sampler
from workbench.report import markdown
from workbench.report.record import Record, axis_table, best_value, fmt
from workbench.report.stats import ALPHA, MIN_PAIRS, MIN_SETTINGS, agreement, kendall_tau

# The metrics a verdict is checked against besides the study's own, where the runs logged them (all lower is
# better): the 1-NFE sample against its exact target, the 2-step sample, u on the paper's and on the run's own
# (t, r) sampler, and the distance to the data.
ALTERNATIVES = ("transport_1nfe", "transport_2nfe", "uerr", "uerrown", "energy_1nfe")


def outcome(table: pd.DataFrame) -> dict:
    """Our best setting against the others and the paper's: the settings worse than ours, tied with it and
    untested (paired t-test over seeds, Holm-corrected over this table's comparisons), and whether we agree
    with the paper's best setting (agree / disagree / unresolved, stats.agreement)."""
    ours = best_value(table)
    papers = best_value(table, "paper") if table["paper"].notna().any() else None
    others = table[(table["value"] != ours) & (table["n"] > 0)]
    worse = others[others["p_holm"] < ALPHA]["value"].tolist()
    tied = others[others["p_holm"] >= ALPHA]["value"].tolist()
    untested = others[others["p_holm"].isna()]["value"].tolist()
    separated = bool(len(others)) and len(worse) == len(others)
    return {"ours": ours, "papers": papers, "worse": worse, "tied": tied, "untested": untested,
            "agreement": agreement(ours, papers, separated, papers in worse)}


def lead(table: pd.DataFrame) -> tuple[str, float] | None:
    """The runner-up to our best setting and the best's lead over it in seed SDs: the gap of their means over
    sqrt((sd_best^2 + sd_runner_up^2) / 2), their pooled seed SD (NaN where either has fewer than 2 seeds)."""
    ranked = table.dropna(subset=["mean"]).sort_values("mean", kind="stable")
    if len(ranked) < 2:
        return None
    best, runner_up = ranked.iloc[0], ranked.iloc[1]
    return runner_up["value"], (runner_up["mean"] - best["mean"]) / math.sqrt((best["std"] ** 2 + runner_up["std"] ** 2) / 2)


def verdict(table: pd.DataFrame) -> str:
    """The plain sentence under a table: which settings our runs separate, and do we agree with the paper's
    best setting and its order?"""
    if table["mean"].isna().all():
        return "No finished cells yet."
    result = outcome(table)
    ours, papers = result["ours"], result["papers"]
    parts = []
    if papers is not None:
        tau, n, p = kendall_tau(table)
        order = (f"Kendall tau between our means and the paper's FIDs = {fmt(tau, 2)} over {n} settings (p = "
                 f"{fmt(p, 2)} against no order)." if n >= MIN_SETTINGS
                 else f"(no Kendall tau: {n} settings with a paper value, it needs {MIN_SETTINGS})")
        parts.append(f"Our best setting ({ours}) against the paper's ({papers}): **{result['agreement']}**; {order}")
    else:
        parts.append(f"Our best setting: {ours} (no paper values for this axis).")
    if (gap := lead(table)) is not None and math.isfinite(gap[1]):  # one seed: no seed SD to measure it in
        parts.append(f"It leads the runner-up ({gap[0]}) by {fmt(gap[1], 2)} seed SDs (the gap of their means over "
                     "their pooled seed SD).")
    family_text = f"paired t-test over seeds, Holm-corrected over the {int(table['p_holm'].notna().sum())} comparisons here"
    if result["tied"]:
        parts.append(f"Tied with the best ({family_text}, p >= {ALPHA}): {', '.join(result['tied'])}; these runs do "
                     "not order them against it.")
    if result["untested"]:
        parts.append(f"Not tested against the best (n too small: fewer than {MIN_PAIRS} seeds paired with it, and a "
                     f"t-test on fewer has too few degrees of freedom to mean anything): {', '.join(result['untested'])}.")
    if result["worse"] and not result["tied"] and not result["untested"]:
        parts.append(f"Every other setting is worse than the best at p < {ALPHA} ({family_text}).")
    elif result["worse"]:
        parts.append(f"Worse than the best at p < {ALPHA} ({family_text}): {', '.join(result['worse'])}.")
    return " ".join(parts)


def rescored(record: Record, metric: str) -> Record:
    """The same cells ranked by another logged metric: the cells kept out as diverged stay out."""
    cells = record.cells.copy()
    cells["metric"] = [m.get(metric, math.nan) for m in cells["metrics"]]
    cells["metric_2nfe"] = [m.get(with_sampler(metric, "2nfe"), math.nan) if "_" in metric else math.nan
                            for m in cells["metrics"]]
    cells["metric_fm"] = math.nan
    study = dataclasses.replace(record.study, metric=metric)
    return Record(study, cells, record.client, record.references)


def other_metrics(record: Record, axis_index: int, within: dict[str, str] | None = None) -> list[dict]:
    """The verdict of one axis table under each of ALTERNATIVES the runs logged (the study's own metric
    first): our best, the agreement with the paper's best, Kendall tau with its p-value, and whether the
    agreement differs from the study metric's (flips)."""
    finished = record.finished()
    logged = set().union(*finished["metrics"]) if len(finished) else set()
    metrics = [record.study.metric] + [m for m in ALTERNATIVES if m in logged and m != record.study.metric]
    rows = []
    for metric in metrics:
        table = axis_table(rescored(record, metric) if metric != record.study.metric else record, axis_index, within)
        if table["mean"].isna().all():
            continue
        result = outcome(table)
        tau, _, p = kendall_tau(table)
        rows.append({"metric": metric, "ours": result["ours"], "tau": tau, "p": p, "tied": result["tied"],
                     "agreement": result["agreement"] if result["papers"] is not None else "–"})
    for row in rows:  # without paper values the verdict is our best setting
        row["flips"] = (row["agreement"] != rows[0]["agreement"] if row["agreement"] != "–"
                        else row["ours"] != rows[0]["ours"])
    return rows


def other_metrics_lines(rows: list[dict]) -> list[str]:
    """The markdown of other_metrics: a small table and one sentence on which metric would flip the verdict."""
    if len(rows) < 2:
        return []
    lines = markdown.table(
        ["ranked by", "our best", "tied with it", "against the paper's best", "Kendall tau (p)", "verdict"],
        [[f"`{r['metric']}`" + (" (the study's)" if i == 0 else ""), r["ours"], ", ".join(r["tied"]) or "–",
          r["agreement"], f"{fmt(r['tau'], 2)} ({fmt(r['p'], 2)})" if fmt(r["tau"]) else "–",
          "–" if i == 0 else "**flips**" if r["flips"] else "holds"] for i, r in enumerate(rows)])
    flipped = [f"`{r['metric']}` ({_said(r)})" for r in rows[1:] if r["flips"]]
    others = ", ".join(f"`{r['metric']}`" for r in rows[1:])
    said = (f"Ranked by another logged metric the verdict flips under {', '.join(flipped)}." if flipped else
            f"Every other logged metric ({others}) gives the same verdict.")
    return ["", f"The same runs ranked by the other metrics they logged (lower is better for each; `{rows[0]['metric']}` "
            "decides above; `uerrown` scores each setting on pairs from its own (t, r) sampler, so where the axis "
            "changes the sampler its rows answer different questions):", "", *lines, "", said]


def flips_summary(rows: list[dict]) -> str:
    """One cell of the suite table: the metrics under which the verdict flips, or 'none'."""
    flipped = [f"`{r['metric']}`: {_said(r)}" for r in rows[1:] if r["flips"]]
    return "; ".join(flipped) if flipped else ("none" if len(rows) > 1 else "–")


def _said(row: dict) -> str:
    """What a metric's verdict is: the agreement with the paper's best, or (no paper values) our best setting."""
    return row["agreement"] if row["agreement"] != "–" else f"best {row['ours']}"

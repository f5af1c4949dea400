"""A study as recorded in the tracking store: its study file and one row per cell, and the per-axis table.

Everything comes from the tracking store (the parent run's study.toml, the child runs' tags and
metrics), never from the process that ran the study, so a report renders later and on another machine.
"""
from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from workbench.config import RunConfig, with_overrides
from workbench.data import EXACT_REFERENCES
from workbench.evaluate.names import baselines, family, with_sampler
from workbench.report import stats
from workbench.stores import layout, queries, urls
from workbench.study.study import Study, parse_study

# Columns of Record.cells that are not settings: the rest (axes, seed) identify a cell.
RECORD_COLUMNS = ("key", "status", "run_id", "metric", "metric_2nfe", "metric_fm", "fm_name", "wall", "end", "commit",
                  "metrics")


class ReportError(ValueError):
    """A study the tracking store does not hold; the message names the store and the study."""


@dataclass
class Record:
    """A study as recorded: the study file of its parent run and one row per cell (config x seed)."""

    study: Study
    cells: pd.DataFrame  # one row per cell: settings columns, seed, then RECORD_COLUMNS
    client: MlflowClient
    references: dict | None = None  # the reference samplers' scores logged with the parent run (2D data)

    def finished(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "finished"]


def load_record(name: str, tracking_uri: str) -> Record:
    """Reads the study's parent run and children; a cell without a FINISHED run is 'failed' or 'missing'."""
    urls.require_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    parent = layout.find_parent(client, name)
    if parent is None:
        raise ReportError(f"study {name!r}: no runs in the tracking store {tracking_uri} (run `wb ablate {name}` first, "
                          "or pass --tracking-uri)")
    text = queries.study_text(client, parent)
    if text is None:
        raise ReportError(f"study {name!r}: its parent run in {tracking_uri} has no study.toml (recorded by an older "
                          f"wb ablate); run `wb ablate {name}` once more: finished cells are skipped, the file is added")
    study = parse_study(tomllib.loads(text), Path(f"studies/{name}.toml"))
    by_cell: dict[str, list] = {}
    by_settings: dict[tuple, list] = {}
    for run in layout.child_runs(client, parent.info.run_id):
        by_cell.setdefault(run.data.tags.get(layout.CONFIG_HASH), []).append(run)
        settings = tuple((axis.name, queries.axis_label(run, axis.name)) for axis in study.axes)
        by_settings.setdefault((settings, run.data.tags.get(layout.SEED)), []).append(run)
    rows = []
    for cell in study.cells():
        # Runs recorded before a config field was added carry another config hash; the study file of the
        # parent run is the one they ran, so within it the settings and seed identify the cell.
        attempts = by_cell.get(cell.key) or by_settings.get((cell.settings, str(cell.seed)), [])
        rows.append(dict(cell.settings) | {"seed": cell.seed, "key": cell.key} | _outcome(attempts, study.metric))
    references = queries.references(client, parent)
    config = study.cells()[0].config
    if references is None and config.data.name in EXACT_REFERENCES:
        references = logged_references(None, with_overrides(RunConfig(), study.base))
    prior = (references or {}).get("prior (u = 0)", {}).get(family(study.metric))
    for row in rows:  # a run that finished blown up is shown as diverged and kept out of every statistic
        if row["status"] == "finished" and stats.blown_up(row["metric"], prior):
            row["status"] = "diverged"
    return Record(study, pd.DataFrame(rows), client, references)


def _outcome(attempts: list, metric: str) -> dict:
    finished = [run for run in attempts if run.info.status == "FINISHED"]
    if not finished:
        diverged = any(r.data.tags.get(layout.FAIL_REASON, "").startswith(layout.DIVERGED_PREFIX) for r in attempts)
        status = ("running" if any(r.info.status == "RUNNING" for r in attempts) else "diverged" if diverged
                  else "failed" if attempts else "missing")
        return {"status": status, "run_id": None, "metric": math.nan, "metric_2nfe": math.nan, "metric_fm": math.nan,
                "fm_name": "", "wall": math.nan,
                "end": 0, "commit": None, "metrics": {}}
    run = max(finished, key=lambda run: run.info.end_time or 0)
    metrics = run.data.metrics
    # the Flow Matching Euler baseline the run scored with the same metric (eval.fm_steps; fewest steps first)
    fm = baselines(metric, metrics)
    return {"status": "finished", "run_id": run.info.run_id, "metric": metrics.get(metric, math.nan),
            "metric_2nfe": metrics.get(with_sampler(metric, '2nfe'), math.nan),
            "metric_fm": metrics[fm[0]] if fm else math.nan, "fm_name": fm[0] if fm else "",
            "wall": metrics.get("wb_wall_seconds", math.nan), "end": run.info.end_time or 0,
            "commit": run.data.tags.get(layout.COMMIT, "unknown"), "metrics": dict(metrics)}


def combinations(record: Record, axis_index: int) -> list[dict[str, str]]:
    """Every setting of the study's other axes (name -> label), in file order: one table of the axis each, so
    that its statistics run over seeds, the only replicates ([{}] for a one-axis study)."""
    others = [axis for i, axis in enumerate(record.study.axes) if i != axis_index]
    return [dict(zip((a.name for a in others), labels)) for labels in itertools.product(*(a.labels for a in others))]


def axis_table(record: Record, axis_index: int, within: dict[str, str] | None = None) -> pd.DataFrame:
    """Per setting of one axis, over seeds at the other axes' settings `within` (a one-axis study: none): n,
    mean, std, paper, ranks, and a paired t-test over seeds against our best setting, Holm-corrected."""
    axis = record.study.axes[axis_index]
    cells, done = record.cells, record.finished()
    for name, label in (within or {}).items():
        cells, done = cells[cells[name] == label], done[done[name] == label]
    rows = []
    for label, paper in zip(axis.labels, axis.paper):
        values = done.loc[done[axis.name] == label, "metric"].dropna()
        mine = cells[cells[axis.name] == label]
        rows.append({"value": label, "n": len(values), "cells": len(mine),
                     "mean": values.mean() if len(values) else math.nan,
                     "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                     **_spread(_column(done, axis.name, label, "metric_2nfe"), "2nfe"),
                     **_spread(_column(done, axis.name, label, "metric_fm"), "fm"),
                     "fm_name": next(iter(_column(done, axis.name, label, "fm_name")), ""),
                     "paper": math.nan if paper is None else float(paper),
                     "failed": int((mine["status"] == "failed").sum()), "missing": int((mine["status"] == "missing").sum()),
                     "diverged": int((mine["status"] == "diverged").sum()),
                     "running": int((mine["status"] == "running").sum())})
    table = pd.DataFrame(rows)
    table["rank"] = table["mean"].rank(method="min")
    table["paper_rank"] = table["paper"].rank(method="min")
    table["p_vs_best"], table["worse_on"] = math.nan, ""
    ours = best_value(table)
    if ours is not None:
        keys = [c for c in done.columns if c not in {axis.name, *RECORD_COLUMNS}]  # the seed and the other axes
        tests = [stats.paired_test(done, axis.name, ours, label, keys) for label in table["value"]]
        table["p_vs_best"] = [p for p, _ in tests]
        table["worse_on"] = [worse for _, worse in tests]
    table["p_holm"] = stats.holm(table["p_vs_best"])  # corrected over the comparisons on this table
    return table


def _column(done: pd.DataFrame, axis_name: str, label: str, column: str) -> pd.Series:
    """One recorded column over a setting's finished cells (empty where the record has no such column)."""
    return done.loc[done[axis_name] == label, column].dropna() if column in done else pd.Series(dtype=object)


def _spread(values: pd.Series, name: str) -> dict[str, float]:
    return {f"mean_{name}": values.mean() if len(values) else math.nan,
            f"std_{name}": values.std(ddof=1) if len(values) > 1 else math.nan}


def best_value(table: pd.DataFrame, column: str = "mean") -> str | None:
    """The setting (value) with the lowest `column` of an axis table: ours ("mean") or the paper's ("paper")."""
    index = stats.best(table[column])
    return None if index is None else table.loc[index, "value"]


def fmt(x: float, digits: int = 4) -> str:
    """A number as tables print it: `digits` significant digits, blank for None / NaN."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def logged_references(logged: dict | None, config) -> dict[str, dict[str, float]]:
    """The reference samplers' scores as the study logged them; a store written before they were logged gets
    them computed here, once, from the same settings (toy_references is deterministic)."""
    if logged is not None:
        return logged
    from workbench.evaluate.toy import toy_references

    return toy_references(config.data.name, config.eval.num_samples, config.eval.seed, config.data.labels)

"""`wb report`: a study's MLflow runs -> reports/<study>/README.md with tables beside the paper and plots.

Everything comes from the tracking store (the parent run's study.toml, the child runs' tags, metrics
and sample pictures), never from the process that ran the study, so a report renders later and on
another machine. The same store gives the same markdown: no clock, no absolute paths.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from scipy import stats

from workbench import plots
from workbench.data import EXACT_REFERENCES
from workbench.studies import Study, parse_study

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per picture otherwise
SUITE = ("table1a", "table1b", "table1c", "table1d", "table1e", "table1f", "table5")


# Columns of Record.cells that are not settings: the rest (axes, seed) identify a cell.
RECORD_COLUMNS = ("key", "status", "run_id", "metric", "metric_2nfe", "wall", "end", "commit", "metrics")
# The 2D quality scores shown beside the exact references (workbench/evaluate.py point_scores).
QUALITY = ("precision_1nfe", "tv_1nfe", "modes_1nfe", "labelprec_1nfe", "transport_1nfe", "uerr", "energy_1nfe",
           "precision_2nfe", "transport_2nfe", "precision_fm50", "transport_fm50")
BARS = {"checkerboard": "precision_1nfe >= 0.9 (share of 1-NFE samples on the 8 squares) and modes_1nfe = 8 "
                        "(Flow Matching sampled in one step puts 0.95 of its samples on 2 squares)",
        "gaussians": "precision_1nfe >= 0.9 (share within 3 std of a mode), modes_1nfe = 8 and transport_1nfe <= "
                     "0.005 (about a quarter of the 0.019 that samples all sitting on their class's mean score, "
                     "which precision and modes cannot tell from a learned mixture)"}


class ReportError(ValueError):
    """A study the tracking store does not hold; the message names the store and the study."""


@dataclass
class Record:
    """A study as recorded: the study file of its parent run and one row per cell (config x seed)."""

    study: Study
    cells: pd.DataFrame  # one row per cell: settings columns, seed, status, metric, metric_2nfe, wall, run_id
    client: MlflowClient


def require_store(tracking_uri: str) -> None:
    """Reading from a SQLite store that is not there would create an empty one; say so instead."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        if not path.exists():
            raise ReportError(f"no MLflow store at {path} (tracking URI {tracking_uri}); run the study first, "
                              "or pass --tracking-uri")


def load_record(name: str, tracking_uri: str) -> Record:
    """Reads the study's parent run and children; a cell without a FINISHED run is 'failed' or 'missing'."""
    require_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    parents = study_runs(client, name)
    if not parents:
        raise ReportError(f"study {name!r}: no runs in the tracking store {tracking_uri} (run `wb ablate {name}` first, "
                          "or pass --tracking-uri)")
    parent = parents[0]
    if "study.toml" not in {a.path for a in client.list_artifacts(parent.info.run_id)}:
        raise ReportError(f"study {name!r}: its parent run in {tracking_uri} has no study.toml (recorded by an older "
                          f"wb ablate); run `wb ablate {name}` once more: finished cells are skipped, the file is added")
    with tempfile.TemporaryDirectory() as folder:
        text = Path(client.download_artifacts(parent.info.run_id, "study.toml", folder)).read_text()
    study = parse_study(tomllib.loads(text), Path(f"studies/{name}.toml"))
    runs = all_runs(client, experiment.experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_cell: dict[str, list] = {}
    by_settings: dict[tuple, list] = {}
    for run in runs:
        by_cell.setdefault(run.data.tags.get("wb.config_hash"), []).append(run)
        tags = run.data.tags
        settings = tuple((name, tags.get(f"wb.axis.{name}")) for name in (axis.name for axis in study.axes))
        by_settings.setdefault((settings, tags.get("wb.seed")), []).append(run)
    rows = []
    for cell in study.cells():
        row = dict(cell.settings) | {"seed": cell.seed, "key": cell.key}
        # Runs recorded before a config field was added carry another config hash; the study file of the
        # parent run is the one they ran, so within it the settings and seed identify the cell.
        attempts = by_cell.get(cell.key) or by_settings.get((cell.settings, str(cell.seed)), [])
        finished = [run for run in attempts if run.info.status == "FINISHED"]
        if finished:
            run = max(finished, key=lambda run: run.info.end_time or 0)
            metrics = run.data.metrics
            row |= {"status": "finished", "run_id": run.info.run_id, "metric": metrics.get(study.metric, math.nan),
                    "metric_2nfe": metrics.get(study.metric.replace("_1nfe", "_2nfe"), math.nan),
                    "wall": metrics.get("wb_wall_seconds", math.nan), "end": run.info.end_time or 0,
                    "commit": run.data.tags.get("wb.git_commit", "unknown"), "metrics": dict(metrics)}
        else:
            status = "running" if any(r.info.status == "RUNNING" for r in attempts) else "failed" if attempts else "missing"
            row |= {"status": status, "run_id": None, "metric": math.nan, "metric_2nfe": math.nan, "wall": math.nan,
                    "end": 0, "commit": None, "metrics": {}}
        rows.append(row)
    return Record(study, pd.DataFrame(rows), client)


def study_runs(client: MlflowClient, name: str) -> list:
    """The parent run(s) `wb ablate` recorded for study `name` (empty if none)."""
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], "tags.`wb.role` = 'study'") if experiment else []


def all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# Tables -------------------------------------------------------------------------------------------

def axis_table(record: Record, axis_index: int) -> pd.DataFrame:
    """Per setting of one axis (over seeds, and over the other axes' settings): n, mean, std, paper,
    ranks, and a paired t-test against our best setting across matching cells."""
    axis = record.study.axes[axis_index]
    cells = record.cells
    done = cells[cells["status"] == "finished"]
    rows = []
    for label, paper in zip(axis.labels, axis.paper):
        values = done.loc[done[axis.name] == label, "metric"].dropna()
        mine = cells[cells[axis.name] == label]
        rows.append({"value": label, "n": len(values), "cells": len(mine),
                     "mean": values.mean() if len(values) else math.nan,
                     "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                     "mean_2nfe": done.loc[done[axis.name] == label, "metric_2nfe"].mean(),
                     "paper": math.nan if paper is None else float(paper),
                     "failed": int((mine["status"] == "failed").sum()), "missing": int((mine["status"] == "missing").sum()),
                     "running": int((mine["status"] == "running").sum())})
    table = pd.DataFrame(rows)
    table["rank"] = table["mean"].rank(method="min")
    table["paper_rank"] = table["paper"].rank(method="min")
    table["p_vs_best"], table["worse_on"] = math.nan, ""
    if table["mean"].notna().any():
        best = table.loc[table["mean"].idxmin(), "value"]
        tests = [paired_test(done, axis.name, best, label) for label in table["value"]]
        table["p_vs_best"] = [p for p, _ in tests]
        table["worse_on"] = [worse for _, worse in tests]
    return table


def paired_test(done: pd.DataFrame, axis_name: str, best: str, label: str) -> tuple[float, str]:
    """Against `best`, over cells that share everything else (the seed): the two-sided paired t-test's
    p-value on the log of the metric (distances vary by factors across seeds, and a diverged seed
    would otherwise swamp the test), and on how many of the pairs `label` is worse ("3/3")."""
    if label == best:
        return math.nan, ""
    others = [c for c in done.columns if c not in {axis_name, *RECORD_COLUMNS}]
    a = done[done[axis_name] == best].set_index(others)["metric"]
    b = done[done[axis_name] == label].set_index(others)["metric"]
    pairs = pd.concat([a, b], axis=1, join="inner").dropna()
    worse = f"{int((pairs.iloc[:, 1] > pairs.iloc[:, 0]).sum())}/{len(pairs)}" if len(pairs) else ""
    if len(pairs) < 2 or np.allclose(pairs.iloc[:, 0], pairs.iloc[:, 1]):
        return math.nan, worse
    if (pairs > 0).all().all():
        pairs = np.log(pairs)
    return float(stats.ttest_rel(pairs.iloc[:, 0], pairs.iloc[:, 1]).pvalue), worse


def kendall_tau(table: pd.DataFrame) -> tuple[float, int]:
    both = table.dropna(subset=["mean", "paper"])
    if len(both) < 2:
        return math.nan, len(both)
    return float(stats.kendalltau(both["mean"], both["paper"]).statistic), len(both)


def fmt(x: float, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def verdict(table: pd.DataFrame) -> str:
    """The plain sentence under a table: do we agree with the paper's best setting and its order?"""
    if table["mean"].isna().all():
        return "No finished cells yet."
    ours = table.loc[table["mean"].idxmin(), "value"]
    parts = []
    if table["paper"].notna().any():
        papers = table.loc[table["paper"].idxmin(), "value"]
        tau, n = kendall_tau(table)
        match = "matches" if ours == papers else "does not match"
        parts.append(f"Our best setting ({ours}) {match} the paper's ({papers}); Kendall tau between our means "
                     f"and the paper's FIDs = {fmt(tau, 2) or 'n/a'} over {n} settings.")
    else:
        parts.append(f"Our best setting: {ours} (no paper values for this axis).")
    others = table[(table["value"] != ours) & (table["n"] > 0)]
    tied = others[others["p_vs_best"] >= 0.05]["value"].tolist()
    untested = others[others["p_vs_best"].isna()]["value"].tolist()
    if tied:
        parts.append(f"Within seed noise of the best (paired t-test over seeds, p >= 0.05): {', '.join(tied)}; "
                     "their order against the best is not supported by these runs.")
    if untested:
        parts.append(f"Not tested against the best (fewer than 2 seeds paired with it): {', '.join(untested)}.")
    if len(others) and not tied and not untested:
        parts.append("Every other setting is worse than the best at p < 0.05 (paired t-test over seeds).")
    return " ".join(parts)


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    has_2nfe = table["mean_2nfe"].notna().any()
    header = ["value", f"{metric} mean ± std (n)"] + (["2-NFE mean"] if has_2nfe else []) + \
        ["paper FID", "our rank", "paper rank", "p vs best", "worse than best on"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best_ours, best_paper = table["mean"].min(), table["paper"].min()
    for row in table.itertuples():
        if row.n == 0:
            ours = f"{'running' if row.running else 'failed' if row.failed else 'missing'} (0/{row.cells})"
        else:
            ours = f"{fmt(row.mean)} ± {fmt(row.std, 2) or '–'} ({row.n})"
            if row.mean == best_ours:
                ours = f"**{ours}**"
            lost = [f"{k} {getattr(row, k)}" for k in ("failed", "missing", "running") if getattr(row, k)]
            if lost:
                ours += f", {', '.join(lost)}"
        paper = fmt(row.paper)
        if paper and row.paper == best_paper:
            paper = f"**{paper}**"
        cells = [row.value, ours] + ([fmt(row.mean_2nfe)] if has_2nfe else []) + \
            [paper, fmt(row.rank, 2), fmt(row.paper_rank, 2), fmt(row.p_vs_best, 2), row.worse_on]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def meets_bar(data_name: str, scores: dict) -> bool:
    spread = data_name != "gaussians" or scores.get("transport_1nfe", math.nan) <= 0.005
    return scores.get("precision_1nfe", math.nan) >= 0.9 and scores.get("modes_1nfe", 0) == 8 and spread


def quality_section(record: Record, config) -> list[str]:
    """Markdown: the 2D quality scores per setting (mean over seeds) above the same scores of reference
    samplers (data floor, exact map, uniform box, the prior), and whether the best setting meets the bar."""
    from workbench.evaluate import toy_references  # evaluation code only for 2D studies

    data_name = config.data.name
    done = record.cells[record.cells["status"] == "finished"]
    if not len(done):
        return []
    settings = [axis.name for axis in record.study.axes]
    label = done[settings].astype(str).agg(", ".join, axis=1)
    scores = pd.DataFrame(list(done["metrics"]), index=done.index)
    columns = [c for c in QUALITY if c in scores.columns]
    means = scores[columns].groupby(label, sort=False).mean()
    means[record.study.metric] = done.groupby(label, sort=False)["metric"].mean()
    means["wall s"] = done.groupby(label, sort=False)["wall"].mean()
    columns = list(dict.fromkeys([record.study.metric, *columns, "wall s"]))
    best = means[record.study.metric].idxmin()
    header = ["setting (mean over seeds)", *[f"`{c}`" for c in columns]]
    lines = ["## Quality against exact references", "",
             "Higher is better for precision (share on the support), modes (squares/modes holding at least a quarter "
             "of their share), labelprec (share in the own class's mode); lower for the rest: tv (total variation of "
             "the per-square/per-mode histogram from the data's), transport (mean squared distance of each sample from "
             "the exact flow map's image of the same noise), uerr (mean squared error of u against the exact average "
             "velocity on fixed training-like (z, r, t)), energy (energy distance to held-out points). _fm50: Euler "
             "with 50 steps on the same network.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, row in means.iterrows():
        name = f"**{setting}** (our best)" if setting == best else setting
        lines.append("| " + " | ".join([name, *[fmt(row[c], 3) for c in columns]]) + " |")
    references = toy_references(data_name, config.eval.num_samples, config.eval.seed, config.data.labels)
    for name, ref in references.items():
        values = [ref.get(c.removesuffix("_1nfe").removesuffix("_2nfe").removesuffix("_fm50"), math.nan)
                  if not c.endswith(("_2nfe", "_fm50")) else math.nan for c in columns]
        lines.append("| " + " | ".join([f"_reference: {name}_", *[fmt(v, 3) for v in values]]) + " |")
    lines += ["", "References (same sample count and noise): data = training points (the sampling floor); exact map = "
              "the exact one-step map of the evaluation noise" + (" (unguided)" if config.meanflow.cfg_omega != 1 else "")
              + "; uniform box = uniform on the data's bounding box; prior (u = 0) = the noise itself, what a "
              "one-step model that outputs zero gives" + ("; class means = every sample on its class's mean (the "
              "right modes with no spread)" if "class means" in references else "") + ".", ""]
    if data_name in BARS:
        passed = [s for s, row in means.iterrows() if meets_bar(data_name, row)]
        verdict_text = (f"{len(passed)} of {len(means)} settings meet it" + (f" ({', '.join(passed)})" if passed else "")
                        + f"; our best by `{record.study.metric}` ({best}) "
                        + ("meets it." if best in passed else "does not: this ranking is among models that have not "
                           "learned the data, so read it as a statement about early training, not about MeanFlow."))
        lines += [f"Bar for a model that has learned the data: {BARS[data_name]}. {verdict_text}", ""]
    return lines


def steps_figure(record: Record, out: Path) -> list[str]:
    """A study with train.steps on an axis: quality against steps, one line per setting of the other keys
    (network width included), each point one run's final evaluation (mean over seeds)."""
    done = record.cells[record.cells["status"] == "finished"]
    configs = {cell.key: cell.config for cell in record.study.cells()}
    step_axes = [axis.name for axis in record.study.axes if "train.steps" in axis.keys]
    others = [axis.name for axis in record.study.axes if axis.name not in step_axes]
    rows = []
    for cell in done.itertuples(index=False):
        config = configs[cell.key]
        series = ", ".join([*(str(getattr(cell, name)) for name in others), f"width {config.net.mlp.width}"])
        rows.append({"series": series, "steps": config.train.steps, **cell.metrics})
    if not rows:
        return []
    points = pd.DataFrame(rows).groupby(["series", "steps"], sort=False).mean(numeric_only=True).reset_index()
    metrics = [m for m in ("transport_1nfe", "precision_1nfe", "uerr", "transport_fm50") if m in points.columns]
    plots.against_steps(points, metrics, out / "steps.png", "final scores against training steps")
    return ["## Quality against training steps", "", "![quality against training steps](steps.png)", ""]


# Curves -------------------------------------------------------------------------------------------

def histories(record: Record, metric: str) -> pd.DataFrame:
    """(axis settings, seed, step, value) for every finished cell's metric history."""
    rows = []
    done = record.cells[record.cells["status"] == "finished"]
    settings = [axis.name for axis in record.study.axes]
    for cell in done.itertuples(index=False):
        for m in record.client.get_metric_history(cell.run_id, metric):
            rows.append({"setting": ", ".join(getattr(cell, s) for s in settings), "seed": cell.seed,
                         "step": m.step, "value": m.value})
    return pd.DataFrame(rows, columns=["setting", "seed", "step", "value"])


def sample_pictures(record: Record, folder: Path, name: str = "samples.png") -> dict[str, Path]:
    """A sample picture (by artifact name) of the lowest finished seed per setting that has it, labelled
    'setting (seed N)'."""
    pictures = {}
    done = record.cells[record.cells["status"] == "finished"].sort_values("seed", kind="stable")
    settings = [axis.name for axis in record.study.axes]
    for cell in done.itertuples(index=False):
        label = ", ".join(getattr(cell, s) for s in settings)
        if label not in {key.rsplit(" (seed", 1)[0] for key in pictures} and \
                name in {a.path for a in record.client.list_artifacts(cell.run_id)}:
            pictures[f"{label} (seed {cell.seed})"] = Path(
                record.client.download_artifacts(cell.run_id, name, str(folder / cell.key)))
    return pictures


# The page -----------------------------------------------------------------------------------------

def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render(name: str, tracking_uri: str, out_root: Path = Path("reports")) -> Path:
    """Writes out_root/<study>/README.md and its PNGs; returns the markdown's path."""
    record = load_record(name, tracking_uri)
    study, cells = record.study, record.cells
    out = out_root / study.name
    out.mkdir(parents=True, exist_ok=True)
    config = study.cells()[0].config
    net = config.net.arch
    finished = cells[cells["status"] == "finished"]
    commits = sorted(set(finished["commit"].dropna()))
    last = pd.Timestamp(int(finished["end"].max()), unit="ms").strftime("%Y-%m-%d %H:%M UTC") if len(finished) else "–"
    lines = [
        f"# {study.name}",
        "",
        study.description.strip(),
        "",
        f"- data: `{config.data.name}`; network: `{net}` "
        f"({', '.join(f'{k}={v}' for k, v in getattr(config.net, net).model_dump().items())}); "
        f"{config.train.steps} steps, batch {config.train.batch_size}, EMA {config.train.ema_decay}",
        f"- seeds: {', '.join(map(str, study.seeds))}; metric: `{study.metric}` (lower is better), "
        f"{config.eval.num_samples} samples",
        f"- cells: {len(finished)}/{len(cells)} finished"
        + "".join(f", {int((cells['status'] == s).sum())} {s}" for s in ("failed", "missing", "running")
                  if (cells["status"] == s).any()),
        f"- commit: {', '.join(commits) or '–'}; last cell finished {last}; "
        f"total compute {finished['wall'].sum() / 60:.1f} min (sum of cell wall times)",
        f"- reproduce: `wb ablate {study.name}` then `wb report {study.name}`",
        "",
    ]
    for i, axis in enumerate(study.axes):
        table = axis_table(record, i)
        lines += [f"## {axis.name} ({', '.join(axis.keys)})", "", markdown_table(table, study.metric), "",
                  verdict(table), ""]
        figure = f"{slug(axis.name)}.png"
        plots.axis_errorbars(table, study.metric, axis.name, out / figure)
        lines += [f"![{study.metric} per {axis.name}]({figure})", ""]
    if config.data.name in EXACT_REFERENCES:
        lines += quality_section(record, config)
    if any("train.steps" in axis.keys for axis in study.axes):
        lines += steps_figure(record, out)
    curves = [(study.metric, "evaluation", "eval.png"), ("mse", "training MSE (unweighted)", "loss.png")]
    for metric, title, figure in curves:
        history = histories(record, metric)
        if history.groupby(["setting", "seed"]).size().gt(1).any():  # a curve needs more than the final point
            plots.curves(history, metric, title, out / figure, log_y=True)
            lines += [f"![{title}]({figure})", ""]
    pictures = [("samples.png", f"{config.sample.steps}-NFE")] + \
        [(f"samples_{k}nfe.png", f"{k}-NFE") for k in sorted(set(config.eval.nfe) - {config.sample.steps})]
    with tempfile.TemporaryDirectory() as folder:
        for i, (name, nfe) in enumerate(pictures):
            found = sample_pictures(record, Path(folder) / str(i), name)
            if found:
                plots.picture_grid(found, out / name, f"{nfe} samples, lowest finished seed per setting")
                lines += [f"## {nfe} samples", "", f"![{nfe} samples per setting]({name})", ""]
    lines += ["---", f"Generated by `wb report {study.name}` from the MLflow store. p vs best: two-sided paired "
              "t-test of log(metric) over seeds against our best setting (blank: the best itself, or too few pairs); worse than "
              "best on: seeds where this setting scored worse than the best did with the same seed.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def render_suite(names: tuple[str, ...], tracking_uri: str, out_root: Path = Path("reports"),
                 title: str = "table1") -> Path:
    """One page laid out like the paper's Table 1: each sub-table with the paper's FID beside ours."""
    summary = ["| study | axis | metric | our best | its precision_1nfe | learned (bar) | paper's best | match "
               "| Kendall tau |", "|---|---|---|---|---|---|---|---|---|"]
    sections, matches, taus, learned = [], [], [], []
    for name in names:
        try:
            record = load_record(name, tracking_uri)
        except ReportError:
            summary.append(f"| {name} | not run yet (`wb ablate {name}`) | | | | | | | |")
            continue
        link = f"[{name}](../{name}/README.md)"
        data_name = record.study.cells()[0].config.data.name
        for i, axis in enumerate(record.study.axes):
            table = axis_table(record, i)
            tau, _ = kendall_tau(table)
            ours = table.loc[table["mean"].idxmin(), "value"] if table["mean"].notna().any() else "–"
            papers = table.loc[table["paper"].idxmin(), "value"] if table["paper"].notna().any() else "–"
            done = record.cells[(record.cells["status"] == "finished") & (record.cells[axis.name] == ours)]
            scores = pd.DataFrame(list(done["metrics"])).mean() if len(done) else pd.Series(dtype=float)
            bar = meets_bar(data_name, scores) if data_name in BARS and len(done) else None
            matches.append(ours == papers)
            taus.append(tau)
            learned.append(bar)
            summary.append(f"| {link} | {axis.name} | `{record.study.metric}` | {ours} "
                           f"| {fmt(scores.get('precision_1nfe', math.nan), 3)} "
                           f"| {'–' if bar is None else 'yes' if bar else '**no**'} | {papers} "
                           f"| {'yes' if ours == papers else 'no'} | {fmt(tau, 2)} |")
            sections += [f"## {name}: {axis.name}", "", markdown_table(table, record.study.metric), "",
                         verdict(table), ""]
    agree = [f"{sum(matches)} of {len(matches)} sub-tables have the paper's best setting as ours",
             f"{sum(1 for t in taus if t >= 0.5)} order their settings like the paper (Kendall tau >= 0.5), "
             f"{sum(1 for t in taus if t < 0)} against it (tau < 0)"]
    if any(b is not None for b in learned):
        agree.append(f"in {sum(1 for b in learned if b)} of {sum(1 for b in learned if b is not None)} our best "
                     "setting's 1-NFE samples meet the bar of a model that has learned the data")
    summary += ["", "Agreement: " + "; ".join(agree) + "."]
    lines = ["# Table 1 and Table 5 at CPU scale, beside the paper", "",
             "Paper: ImageNet 256, DiT-B/4, 80 epochs, 1-NFE FID-50K. Ours: the CPU proxy each study describes "
             "(its metric; lower is better), mean ± std over seeds. Bold: best in the column. Only the orders "
             "compare; the scales do not. learned (bar): " + "; ".join(f"{k}: {v}" for k, v in BARS.items()) + ".",
             "", "## Summary", "", *summary, "", *sections,
             "---", f"Generated by `wb report --suite` from the MLflow store.", ""]
    path = out_root / title / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path

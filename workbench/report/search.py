"""reports/<study>/search.md: a `wb search` as recorded, from the MLflow store (the study file, the child
runs, their pictures) and the Optuna storage (trials, params, intermediate values).

The page: the space and the trial counts, the time pruning saved, the best trials beside the base config
and the references of the metric, the best trial's samples, Optuna's optimization history, parameter
importances (optuna.importance), slice and contour plots (optuna.visualization.matplotlib), and the
confirmation ablation `<study>-confirm` (best against base on fresh seeds, paired test) once it has run.
"""
from __future__ import annotations

import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from workbench.config import RunConfig, flatten, with_overrides
from workbench.evaluate.names import family
from workbench.report import markdown
from workbench.report.record import ReportError, axis_table, fmt, load_record, logged_references
from workbench.report.verdicts import verdict
from workbench.stores import layout, queries, urls
from workbench.stores.trials import best_trial, counted, search_name
from workbench.study.derived import confirmation_path
from workbench.study.space import dimensions, objectives, overrides
from workbench.study.study import Study, parse_study


def render_search(name: str, tracking_uri: str, storage_url: str, out: Path) -> Path:
    """Writes out/<name>/search.md and its figures under out/<name>/search/; returns the page's path."""
    from mlflow import MlflowClient

    urls.require_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    parent = layout.find_parent(client, name, role="search")
    if parent is None:
        raise ReportError(f"search {name!r}: no search in the tracking store {tracking_uri} (run `wb search {name}` "
                          "first, or pass --tracking-uri)")
    study = parse_study(tomllib.loads(queries.study_text(client, parent)), Path(f"studies/{name}.toml"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trials_study = optuna.load_study(study_name=search_name(study.name), storage=storage_url)
    except KeyError:
        raise ReportError(f"search {name!r}: no Optuna study {search_name(study.name)!r} in {storage_url} (pass the "
                          "--storage the search ran with)") from None
    trials = counted(trials_study.get_trials(deepcopy=False))
    runs = layout.child_runs(client, parent.info.run_id)
    folder = out / name / "search"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {name}: search", "", study.description.strip(), ""]
    lines += facts(study, trials, parent)
    lines += best_section(study, trials_study, trials, runs, queries.references(client, parent))
    lines += pictures(study, trials_study, runs, client, folder)
    lines += figures(trials_study, folder)
    lines += confirmation_section(study, tracking_uri, parent.data.tags.get(layout.CONFIRMATION_FILE))
    page = out / name / "search.md"
    page.write_text("\n".join(lines).rstrip() + "\n")
    return page


def facts(study: Study, trials: list[FrozenTrial], parent) -> list[str]:
    search = study.search
    by = {state: [t for t in trials if t.state == state] for state in TrialState}
    goals = ", ".join(f"{direction} `{metric}`" for metric, direction in objectives(search, study.metric))
    wall = ((parent.info.end_time or parent.info.start_time) - parent.info.start_time) / 60_000
    lines = [f"- objective: {goals}, mean over seeds {study.search_seeds}; sampler `{search.sampler}`, pruner "
             f"`{search.prune}` on the scores every {with_overrides(RunConfig(), study.base).eval.every} steps",
             f"- trials: {len(trials)} ({len(by[TrialState.COMPLETE])} complete, {len(by[TrialState.PRUNED])} pruned, "
             f"{len(by[TrialState.FAIL])} failed, {len(by[TrialState.RUNNING]) + len(by[TrialState.WAITING])} "
             f"running or queued) of {max(search.trials, len(trials))}",
             f"- commit: {parent.data.tags.get(layout.COMMIT, 'unknown')}; wall time of the search (first start to "
             f"last end) {wall:.1f} min",
             f"- reproduce: `wb search {study.name}` then `wb report {study.name}`", ""]
    lines += pruning_savings(by[TrialState.COMPLETE], by[TrialState.PRUNED])
    lines += ["## Search space", "", *markdown.header(["dimension", "kind", "range or choices"])]
    for dim, param in dimensions(search).items():
        span = ", ".join(map(str, param.choices)) if param.kind == "categorical" else (
            f"{param.low:g} .. {param.high:g}" + (" (log)" if param.log else "") + (f", step {param.step:g}"
                                                                                  if param.step else ""))
        lines.append(markdown.row([f"`{dim}`", param.kind, span]))
    templates = [f"`{key}` = `{p.template}`" for key, p in search.space.items() if p.kind == "template"]
    if templates:
        lines += ["", "Templates: " + "; ".join(templates) + "."]
    return lines + [""]


def pruning_savings(complete: list[FrozenTrial], pruned: list[FrozenTrial]) -> list[str]:
    """Worker time the pruned trials took against running them to the end (at the complete trials' mean)."""
    full = [t.duration.total_seconds() for t in complete if t.duration]
    spent = sum(t.duration.total_seconds() for t in pruned if t.duration)
    if not full:
        return []
    mean = sum(full) / len(full)
    would = len(pruned) * mean
    total_ran, total_all = sum(full) + spent, sum(full) + would
    saved = 1 - total_ran / total_all if total_all else math.nan
    return [f"- pruning: {len(pruned)} trials stopped early took {spent / 60:.1f} worker-min; run to the end at "
            f"the complete trials' mean ({mean:.0f} s) they would have taken {would / 60:.1f}: the search used "
            f"{total_ran / 60:.1f} worker-min instead of {total_all / 60:.1f} ({saved:.0%} saved)", ""]


def trial_scores(runs: list, number: int) -> dict[str, float]:
    """Mean over a trial's finished seed runs of every final metric."""
    finished = [r for r in runs if r.data.tags.get(layout.TRIAL) == str(number) and r.info.status == "FINISHED"]
    return pd.DataFrame([r.data.metrics for r in finished]).mean().to_dict() if finished else {}


def best_section(study: Study, trials_study: optuna.Study, trials: list[FrozenTrial], runs: list,
                 references: dict | None) -> list[str]:
    search = study.search
    goals = objectives(search, study.metric)
    metric, direction = goals[0]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return ["No trial has completed yet.", ""]
    sign = 1 if direction == "minimize" else -1
    ranked = sorted(complete, key=lambda t: sign * t.values[0])
    base = flatten(with_overrides(RunConfig(), study.base))
    keys = list(search.space)
    header = ["rank", "trial", *[f"`{m}`" for m, _ in goals], "per seed", *[f"`{k}`" for k in keys], "s"]
    lines = [f"## Best trials (of {len(complete)} complete)", "", *markdown.header(header)]
    for rank, trial in enumerate(ranked[:10], 1):
        values = overrides(search, trial.params)
        per_seed = ", ".join(fmt(v, 3) for v in trial.user_attrs.get("seed_values", []))
        lines.append(markdown.row([str(rank), str(trial.number), *[fmt(v) for v in trial.values], per_seed,
                                        *[_show(values[k]) for k in keys],
                                        f"{trial.duration.total_seconds():.0f}" if trial.duration else ""]))
    lines.append(markdown.row(["base config", "", *[""] * len(goals), "", *[_show(base[k]) for k in keys], ""]))
    if len(goals) > 1:
        front = {t.number for t in trials_study.best_trials}
        lines += ["", f"Pareto front over {', '.join(m for m, _ in goals)}: trials {sorted(front)}."]
    best = best_trial(trials_study, objectives(study.search, study.metric)[0][1])
    bounds = at_bounds(search, best.params)
    lines += ["", (f"At a bound of the space (within {BOUND_MARGIN:.0%} of its range; the best value may lie outside "
                   f"it, widen the space before trusting it): {'; '.join(bounds)}." if bounds else
                   f"No parameter of the best trial (#{best.number}) lies within {BOUND_MARGIN:.0%} of a bound of "
                   "its range.")]
    scores = trial_scores(runs, best.number)
    lines += ["", f"The best trial (#{best.number}) on the other scores, mean over its seeds:", ""]
    shown = [m for m in ("transport_1nfe", "precision_1nfe", "modes_1nfe", "uerr", "energy_1nfe", "fid_1nfe")
             if m in scores]
    lines += [*markdown.table([f"`{m}`" for m in shown], [[fmt(scores[m], 3) for m in shown]]), ""]
    lines += reference_lines(study, scores, references)
    return lines


BOUND_MARGIN = 0.02  # a value this close to a bound (share of the range; of its log for a log dimension) sits on it


def at_bounds(search, params: dict) -> list[str]:
    """The numeric params that lie on a bound of their range: where the optimum may be outside the space."""
    flagged = []
    for name, p in dimensions(search).items():
        if p.kind not in ("float", "int") or name not in params:
            continue
        scale = math.log if p.log else float
        low, high, value = scale(p.low), scale(p.high), scale(params[name])
        side = "low" if value - low <= BOUND_MARGIN * (high - low) else (
            "high" if high - value <= BOUND_MARGIN * (high - low) else None)
        if side:
            flagged.append(f"`{name}` = {params[name]:.4g} at its {side} bound ({p.low:g} .. {p.high:g})")
    return flagged


def reference_lines(study: Study, scores: dict, logged: dict | None) -> list[str]:
    """The metric's reference values on toy data (the data's floor, the exact map, trivial samplers) and
    whether the best trial meets the bar of a model that has learned its data."""
    from workbench.data import EXACT_REFERENCES
    from workbench.report.quality import BARS, meets_bar

    config = with_overrides(RunConfig(), study.base)
    if config.data.name not in EXACT_REFERENCES:
        return []
    metric = objectives(study.search, study.metric)[0][0]
    stem = family(metric)
    refs = logged_references(logged, config)
    shown = [f"{name} {fmt(ref[stem], 3)}" for name, ref in refs.items() if stem in ref]
    lines = [f"References for `{metric}` (same sample count and noise): " + "; ".join(shown) + "."] if shown else []
    if config.data.name in BARS:
        verdict = "meets it" if meets_bar(config.data.name, scores) else (
            "does not meet it: read the ranking as one among models that have not learned the data")
        lines.append(f"Bar for a model that has learned the data: {BARS[config.data.name]}. The best trial {verdict}.")
    return lines + [""]


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pictures(study: Study, trials_study: optuna.Study, runs: list, client, folder: Path) -> list[str]:
    """The best trial's sample picture (its lowest seed), copied next to the page."""
    best = best_trial(trials_study, objectives(study.search, study.metric)[0][1])
    if best is None:
        return []
    mine = sorted((r for r in runs if r.data.tags.get(layout.TRIAL) == str(best.number)
                   and r.info.status == "FINISHED"), key=lambda r: int(r.data.tags.get(layout.SEED, 0)))
    for run in mine:
        picture = queries.download(client, run.info.run_id, "samples.png", folder / f"trial{best.number}")
        if picture is not None:
            target = folder / "best_samples.png"
            target.write_bytes(picture.read_bytes())
            return [f"## Samples of the best trial (#{best.number}, seed {run.data.tags.get(layout.SEED)})", "",
                    "![1-NFE samples of the best trial](search/best_samples.png)", ""]
    return []


def figures(trials_study: optuna.Study, folder: Path) -> list[str]:
    """Optuna's own plots (optuna.visualization.matplotlib) and importances (optuna.importance), in their own
    matplotlib style: Optuna's views switch the global style to ggplot, which rc_context puts back afterwards
    so that no later figure of the process (the confirmation's page) comes out grey."""
    import matplotlib

    with matplotlib.rc_context():
        return _optuna_figures(trials_study, folder)


def _optuna_figures(trials_study: optuna.Study, folder: Path) -> list[str]:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the matplotlib views
    complete = trials_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(trials_study.directions) > 1 or len(complete) < 2:
        return []
    lines = []

    def save(axes, name: str, title: str) -> None:
        figure = np.atleast_1d(axes).flat[0].figure
        figure.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        lines.extend([f"![{title}](search/{name})", ""])

    lines += ["## Optimization history", ""]
    save(views.plot_optimization_history(trials_study), "history.png", "optimization history")
    lines += ["## Intermediate values (what the pruner saw)", ""]
    save(views.plot_intermediate_values(trials_study), "intermediate.png", "intermediate values per trial")
    importances = optuna.importance.get_param_importances(trials_study)
    lines += ["## Parameter importances", "",
              f"fANOVA importances over the {len(complete)} complete trials (optuna.importance; with few trials "
              "they are rough):", "", *markdown.table(["parameter", "importance"], [
                  [f"`{name}`", f"{value:.3f}"] for name, value in importances.items()]), ""]
    save(views.plot_param_importances(trials_study), "importances.png", "parameter importances")
    lines += ["## Slices", ""]
    save(views.plot_slice(trials_study), "slice.png", "objective against each parameter")
    top = list(importances)[:2]
    if len(top) == 2:
        lines += [f"## Contour of the two most important parameters ({top[0]}, {top[1]})", "",
                  f"Interpolated by Optuna between {len(complete)} complete trials of a {len(complete[0].distributions)}-"
                  "dimensional space: the dots are the measurements; the colours between them are not.", ""]
        save(views.plot_contour(trials_study, params=top), "contour.png", "contour")
    return lines


def confirmation_section(study: Study, tracking_uri: str, written: str | None) -> list[str]:
    """The confirmation ablation's result (best against base on fresh seeds), or how to run it (`written`:
    the file the search wrote it to, as its parent run names it)."""
    name = f"{study.name}-confirm"
    try:
        record = load_record(name, tracking_uri)
    except ReportError:
        return ["## Confirmation", "", f"Not run yet: `wb ablate {written or confirmation_path(study)}` re-runs the best trial "
                "against the base config on fresh seeds; this page then shows the result.", ""]
    table = axis_table(record, 0)
    lines = ["## Confirmation on fresh seeds", "",
             f"`{name}`: seeds {list(record.study.seeds)}, ranked by `{record.study.metric}` "
             f"(report: [../{name}/README.md](../{name}/README.md)).", "",
             *markdown.header(["setting", f"`{record.study.metric}` mean ± std (n)", "per seed", "p vs best (Holm)",
                               "worse than best on"])]
    done = record.finished()
    for row in table.itertuples(index=False):
        per_seed = ", ".join(fmt(v, 3) for v in done.loc[done["setting"] == row.value, "metric"])
        lines.append(markdown.row([row.value, f"{fmt(row.mean)} ± {fmt(row.std, 2)} ({row.n})", per_seed,
                                   fmt(row.p_holm, 2), row.worse_on]))
    lines += ["", "p: two-sided paired t-test over seeds on log(metric) against the best setting, Holm-corrected over "
              "the comparisons of this table.", "", verdict(table), ""]
    return lines

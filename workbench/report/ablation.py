"""`wb report`: a study's MLflow runs -> reports/<study>/README.md with tables beside the paper and figures.

Everything comes from the tracking store (the parent run's study.toml, the child runs' tags, metrics
and sample pictures), never from the process that ran the study, so a report renders later and on
another machine. The same store gives the same markdown: no clock, no absolute paths.
"""
from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pandas as pd

from workbench.data import EXACT_REFERENCES, TOY_SETS
from workbench.evaluate.names import family
from workbench.report import figures, markdown
from workbench.report.quality import image_quality_section, quality_section, steps_figure
from workbench.report.record import Record, axis_table, combinations, fmt, load_record
from workbench.report.stats import BLOWN_UP, MIN_PAIRS
from workbench.report.verdicts import other_metrics, other_metrics_lines, verdict
from workbench.stores import queries

# Tables -------------------------------------------------------------------------------------------

def _spread(mean: float, std: float) -> str:
    return f"{fmt(mean)} ± {fmt(std, 2) or '–'}" if fmt(mean) else ""


def base_label(study, axis) -> str | None:
    """The setting of `axis` that is the study's base configuration (the row several sub-tables share), if any."""
    from workbench.config import RunConfig, with_overrides

    base = with_overrides(RunConfig(), study.base)
    for label, values in zip(axis.labels, axis.values):
        if with_overrides(base, dict(zip(axis.keys, values))) == base:
            return label
    return None


def markdown_table(table: pd.DataFrame, metric: str, base: str | None = None) -> str:
    """The axis table as markdown; `base` (a setting's label) is marked as the study's base configuration."""
    has_2nfe, has_fm = table["mean_2nfe"].notna().any(), table["mean_fm"].notna().any()
    fm_name = next((n for n in table["fm_name"] if n), "")
    header = ["value", f"{metric} mean ± std (n)"] + (["2-NFE mean ± std"] if has_2nfe else []) + \
        ([f"Flow Matching Euler baseline ({fm_name}) mean ± std"] if has_fm else []) + \
        ["paper FID", "our rank", "paper rank", "p vs best (Holm)", "worse than best on"]
    lines = markdown.header(header)
    best_ours, best_paper = table["mean"].min(), table["paper"].min()
    for row in table.itertuples():
        if row.n == 0:
            ours = (f"{'running' if row.running else 'diverged' if row.diverged else 'failed' if row.failed else 'missing'}"
                    f" (0/{row.cells})")
        else:
            ours = f"{fmt(row.mean)} ± {fmt(row.std, 2) or '–'} ({row.n})"
            if row.mean == best_ours:
                ours = f"**{ours}**"
            lost = [f"{k} {getattr(row, k)}" for k in ("diverged", "failed", "missing", "running") if getattr(row, k)]
            if lost:
                ours += f", {', '.join(lost)}"
        paper = fmt(row.paper)
        if paper and row.paper == best_paper:
            paper = f"**{paper}**"
        p = fmt(row.p_holm, 2) or ("n too small" if row.n and row.worse_on and row.mean != best_ours else "")
        value = f"{row.value} (base)" if row.value == base and "base" not in row.value.lower() else row.value
        cells = [value, ours] + ([_spread(row.mean_2nfe, row.std_2nfe)] if has_2nfe else []) + \
            ([_spread(row.mean_fm, row.std_fm)] if has_fm else []) + \
            [paper, fmt(row.rank, 2), fmt(row.paper_rank, 2), p, row.worse_on]
        lines.append(markdown.row(cells))
    return "\n".join(lines)


def ema_section(record: Record, config, metric: str) -> list[str]:
    """Which weights each number comes from: the metric of every kept EMA (and the raw weights) per setting of
    the first axis, mean ± std (n) over its finished cells. Empty when the runs kept one EMA."""
    finished = record.finished()
    suffixes = sorted({key.removeprefix(f"{metric}_") for m in finished["metrics"] for key in m
                       if key.startswith(f"{metric}_ema") or key == f"{metric}_raw"})
    if not len(finished) or not suffixes:
        return []
    columns = [(f"EMA {config.train.ema_decay} (`{metric}`, ranked above)", metric)] + \
        [(f"{'raw weights' if s == 'raw' else 'EMA ' + s.removeprefix('ema')} (`{metric}_{s}`)", f"{metric}_{s}")
         for s in suffixes]
    axis = record.study.axes[0].name
    lines = [f"## {metric} per kept EMA", "", *markdown.header([axis, *(title for title, _ in columns)])]
    lowest = []
    for label in record.study.axes[0].labels:
        rows = finished[finished[axis] == label]["metrics"]
        means = {key: pd.Series([m.get(key, math.nan) for m in rows], dtype=float) for _, key in columns}
        best = min(means, key=lambda key: means[key].mean() if means[key].notna().any() else math.inf)
        lowest.append(f"{label}: {dict((k, t) for t, k in columns)[best].split(' (')[0]}")
        cells = [f"**{_spread(v.mean(), v.std())} ({v.notna().sum()})**" if key == best else
                 f"{_spread(v.mean(), v.std())} ({v.notna().sum()})" for key, v in means.items()]
        lines.append(markdown.row([label, *cells]))
    lines += ["", f"Lowest mean per {axis} (bold): {'; '.join(lowest)}. The EMAs of one run are not independent "
              "replicates, so no test separates them; the tables above rank by the first column.", ""]
    return lines


# Curves -------------------------------------------------------------------------------------------

def histories(record: Record, metric: str) -> pd.DataFrame:
    """(axis settings, seed, step, value) for every finished cell's metric history."""
    rows = []
    done = record.finished()
    settings = [axis.name for axis in record.study.axes]
    for cell in done.to_dict("records"):  # records, not itertuples: an axis may be named 'lambda'
        for step, value in queries.metric_history(record.client, cell["run_id"], metric):
            rows.append({"setting": ", ".join(cell[s] for s in settings), "seed": cell["seed"],
                         "step": step, "value": value})
    return pd.DataFrame(rows, columns=["setting", "seed", "step", "value"])


PICTURES_PER_FIGURE = 6  # rows of one figure: more would shrink each under the figure's pixel cap


def sample_pictures(record: Record, folder: Path, name: str = "samples.png") -> list[tuple[str, str, dict]]:
    """A sample picture (by artifact name) of the lowest finished seed per setting that has it, labelled
    'setting (seed N)', in figures of at most PICTURES_PER_FIGURE (split_figures)."""
    pictures, groups = {}, {}
    done = record.finished().sort_values("seed", kind="stable")
    settings = [axis.name for axis in record.study.axes]
    for cell in done.to_dict("records"):
        label = ", ".join(cell[s] for s in settings)
        if label in {key.rsplit(" (seed", 1)[0] for key in pictures}:
            continue
        picture = queries.download(record.client, cell["run_id"], name, folder / cell["key"])
        if picture is not None:
            pictures[f"{label} (seed {cell['seed']})"] = picture
            groups[f"{label} (seed {cell['seed']})"] = f"{settings[0]} = {cell[settings[0]]}" if settings else ""
    return split_figures(name, pictures, groups if len(settings) > 1 else None)


def split_figures(name: str, pictures: dict, groups: dict | None) -> list[tuple[str, str, dict]]:
    """(file name, caption, {label: picture}) per figure: one figure when there are at most PICTURES_PER_FIGURE
    pictures, else one per group (label -> caption, the first axis's value where there are several axes), each in
    consecutive parts of at most PICTURES_PER_FIGURE."""
    if len(pictures) <= PICTURES_PER_FIGURE:
        return [(name, "", pictures)] if pictures else []
    groups = groups or dict.fromkeys(pictures, "")
    figures = []
    for group in dict.fromkeys(groups.values()):
        items = [(k, v) for k, v in pictures.items() if groups[k] == group]
        parts = range(0, len(items), PICTURES_PER_FIGURE)
        for i in parts:
            part = f"part {i // PICTURES_PER_FIGURE + 1}" if len(parts) > 1 else ""
            caption = ", ".join(c for c in (group, part) if c)
            stem = "-".join(c for c in (name.removesuffix(".png"), slug(group.split(" = ", 1)[-1]), slug(part)) if c)
            figures.append((f"{stem}.png", caption, dict(items[i:i + PICTURES_PER_FIGURE])))
    return figures


# The page -----------------------------------------------------------------------------------------

def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def study_argument(name: str) -> str:
    """What `wb ablate` takes to run the study again: its name, or for a calibration candidate (written by
    `wb calibrate` to studies/calibration/) that file's path."""
    from workbench.study.study import SHIPPED

    derived = SHIPPED / "calibration" / f"{name}.toml"
    return f"studies/calibration/{name}.toml" if derived.is_file() else name


def render(name: str, tracking_uri: str, out_root: Path = Path("reports")) -> Path:
    """Writes out_root/<study>/README.md and its PNGs; returns the markdown's path."""
    record = load_record(name, tracking_uri)
    study, cells = record.study, record.cells
    out = out_root / study.name
    out.mkdir(parents=True, exist_ok=True)
    config = study.cells()[0].config
    net = config.net.arch
    finished = record.finished()
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
        + "".join(f", {int((cells['status'] == s).sum())} {s}" for s in ("diverged", "failed", "missing", "running")
                  if (cells["status"] == s).any()),
        f"- commit: {', '.join(commits) or '–'}; last cell finished {last}; "
        f"total compute {finished['wall'].sum() / 60:.1f} min (sum of cell wall times)",
        "- base config (over `wb config`'s defaults): "
        + (", ".join(f"`{k}={v}`" for k, v in study.base.items()) or "the defaults"),
        f"- reproduce: `wb ablate {study_argument(study.name)}` then `wb report {study.name}`",
        "",
    ]
    for i, axis in enumerate(study.axes):
        lines += [f"## {axis.name} ({', '.join(axis.keys)})", ""]
        if len(study.axes) > 1:
            lines += [f"One table per setting of the other axes: the statistics run over seeds (the only replicates) "
                      f"at one setting of {', '.join(a.name for a in study.axes if a is not axis)}.", ""]
        for within in combinations(record, i):
            table = axis_table(record, i, within)
            title = ", ".join(f"{k} = {v}" for k, v in within.items())
            lines += [*([f"### at {title}", ""] if title else []),
                      markdown_table(table, study.metric, base_label(study, axis)), "",
                      verdict(table), *other_metrics_lines(other_metrics(record, i, within)), ""]
        if len(study.axes) == 1:  # one figure over seeds; a study of several axes shows its curves instead
            figure = f"{slug(axis.name)}.png"
            figures.axis_errorbars(axis_table(record, i), study.metric, axis.name, out / figure, over="seeds")
            lines += [f"![{study.metric} per {axis.name}]({figure})", ""]
    lines += ema_section(record, config, study.metric)
    if config.data.name in EXACT_REFERENCES:
        lines += quality_section(record, config)
    elif family(study.metric) in ("fid", "kid") and config.data.name not in TOY_SETS:
        lines += image_quality_section(record, config)
    if any("train.steps" in axis.keys for axis in study.axes):
        lines += steps_figure(record, out)
    curves = [(study.metric, "evaluation", "eval.png"), ("mse", "training MSE (unweighted)", "loss.png")]
    for metric, title, figure in curves:
        history = histories(record, metric)
        if history.groupby(["setting", "seed"]).size().gt(1).any():  # a curve needs more than the final point
            figures.curves(history, metric, title, out / figure, log_y=True)
            lines += [f"![{title}]({figure})", ""]
    pictures = [("samples.png", f"{config.sample.steps}-NFE")] + \
        [(f"samples_{k}nfe.png", f"{k}-NFE") for k in sorted(set(config.eval.nfe) - {config.sample.steps})]
    with tempfile.TemporaryDirectory() as folder:
        for i, (name, nfe) in enumerate(pictures):
            found = sample_pictures(record, Path(folder) / str(i), name)
            lines += [f"## {nfe} samples", ""] if found else []
            for figure, caption, group in found:
                title = f"{nfe} samples, lowest finished seed per setting" + (f" ({caption})" if caption else "")
                figures.picture_grid(group, out / figure, title)
                lines += [f"![{title}]({figure})", ""]
    lines += ["---", f"Generated by `wb report {study.name}` from the MLflow store. p vs best (Holm): two-sided "
              "paired t-test of log(metric) over seeds against our best setting, Holm-corrected over the comparisons of "
              f"its table (blank: the best itself; n too small: fewer than {MIN_PAIRS} seed pairs); worse than best on: "
              "seeds where this setting scored worse than the best did with the same seed. diverged: the loss turned NaN "
              f"or infinite, or the run finished with a score that is not finite or above {BLOWN_UP:g}x the prior's "
              "(u = 0, logged with the study); such runs are kept out of every mean, rank, test and tau.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    page = path.read_text()
    for stale in out.glob("*.png"):  # figures of an earlier rendering this page no longer shows
        if f"]({stale.name})" not in page:
            stale.unlink()
    return path

"""The 2D quality section of a report: scores beside exact references, the bar of a learned model,
and quality against training steps."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from workbench.evaluate.names import family
from workbench.report import figures, markdown, stats
from workbench.report.record import Record, fmt, logged_references

# The 2D quality scores shown beside the exact references (workbench/evaluate/evaluators.py point_scores).
QUALITY = ("precision_1nfe", "tv_1nfe", "modes_1nfe", "labelprec_1nfe", "transport_1nfe", "spread_1nfe", "uerr",
           "uerrown", "energy_1nfe", "energy_exact", "precision_2nfe", "transport_2nfe", "precision_fm50",
           "transport_fm50")
SPREAD_BAND = (0.8, 1.25)  # spread_1nfe: within 20% of the target's per-class spread (log-symmetric)
SPREAD_BAR = (f"spread_1nfe within [{SPREAD_BAND[0]}, {SPREAD_BAND[1]}] (the per-class spread of the 1-NFE samples "
              "against that of their exact target, the map of the same noise: a copy of the map pulled halfway to its "
              "class means scores 0.5 here, where transport alone would pass it; where logged)")
BARS = {"checkerboard": "precision_1nfe >= 0.9 (share of 1-NFE samples on the 8 squares), modes_1nfe = 8 "
                        "(Flow Matching sampled in one step puts 0.95 of its samples on 2 squares) and " + SPREAD_BAR,
        "gaussians": "precision_1nfe >= 0.9 (share within 3 std of a mode), modes_1nfe = 8, transport_1nfe <= "
                     "0.005 (about a quarter of the 0.019 that samples all sitting on their class's mean score, "
                     "which precision and modes cannot tell from a learned mixture) and " + SPREAD_BAR}
SHRINKS = (1.0, 0.9, 0.85, 0.75, 0.5, 0.0)  # the shrunken copies of the exact map the bar is calibrated on


def meets_bar(data_name: str, scores: dict) -> bool:
    """Whether mean scores of a setting pass BARS[data_name] (the spread check only where it was logged)."""
    transport = data_name != "gaussians" or scores.get("transport_1nfe", math.nan) <= 0.005
    spread = scores.get("spread_1nfe", math.nan)
    spread_ok = math.isnan(spread) or SPREAD_BAND[0] <= spread <= SPREAD_BAND[1]
    return scores.get("precision_1nfe", math.nan) >= 0.9 and scores.get("modes_1nfe", 0) == 8 and transport and spread_ok


def bar_calibration(data_name: str, num_samples: int, seed: int, conditional: bool) -> list[dict]:
    """The bar against the exact map of the evaluation noise and copies of it pulled towards their class means
    (one group without labels) by each factor in SHRINKS: their 1-NFE scores and whether they pass."""
    import torch

    from workbench.data import load_data
    from workbench.evaluate.toy import exact_targets, index_labels, point_scores

    reference = load_data(data_name, "test").x[:num_samples]
    exact = exact_targets(data_name, num_samples, seed, conditional=conditional)["map"]
    labels = index_labels(num_samples, load_data(data_name, "test").num_classes if conditional else 0)
    groups = torch.zeros(num_samples, dtype=torch.long) if labels is None else labels
    rows = []
    for s in SHRINKS:
        shrunk = exact.clone()
        for c in groups.unique() if s != 1 else ():
            mine = groups == c
            shrunk[mine] = exact[mine].mean(0) + s * (exact[mine] - exact[mine].mean(0))
        scores = {f"{k}_1nfe": v for k, v in point_scores(shrunk, reference, data_name, labels, exact, seed).items()}
        rows.append({"shrink": s, **scores, "bar": meets_bar(data_name, scores)})
    return rows


def calibration_lines(data_name: str, num_samples: int, seed: int, conditional: bool) -> list[str]:
    """Markdown: the bar's calibration table (bar_calibration)."""
    rows = bar_calibration(data_name, num_samples, seed, conditional)
    columns = [c for c in ("transport_1nfe", "spread_1nfe", "precision_1nfe", "modes_1nfe", "energy_1nfe") if c in rows[0]]
    return [f"Calibration of the bar on `{data_name}` ({num_samples} samples, evaluation seed {seed}): the exact map of "
            "the evaluation noise, and copies of it with every class pulled towards its mean by a factor (1: the map "
            "itself, 0: every sample on its class's mean).", "",
            *markdown.table(["copy of the exact map", *[f"`{c}`" for c in columns], "meets the bar"],
                            [[f"shrunk to {r['shrink']:g}", *[fmt(r[c], 3) for c in columns],
                              "yes" if r["bar"] else "no"] for r in rows]), ""]


def quality_section(record: Record, config) -> list[str]:
    """Markdown: the 2D quality scores per setting (mean over seeds) above the same scores of reference
    samplers (data floor, exact map, uniform box, the prior), and whether the best setting meets the bar."""
    data_name = config.data.name
    done = record.finished()
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
    best = stats.best(means[record.study.metric])
    header = ["setting (mean over seeds)", *[f"`{c}`" for c in columns]]
    lines = ["## Quality against exact references", "",
             "Higher is better for precision (share on the support), modes (squares/modes holding at least a quarter "
             "of their share), labelprec (share in the own class's mode); lower for the rest: tv (total variation of "
             "the per-square/per-mode histogram from the data's), transport (mean squared distance of each sample from "
             "the exact flow map's image of the same noise, the cell's own target, guided where the cell is), spread "
             "(per-class spread of the samples over that target's, 1 is right), uerr and uerrown (mean squared error "
             "of u against the exact average velocity on fixed (z, r, t) drawn from the paper's (t, r) sampler, and "
             "from the cell's own), energy (energy distance to held-out points); energy_exact is the energy of the "
             "cell's own exact target (the floor a perfect model of it reaches; above the data's where guided). "
             "_fm50: Euler with 50 steps on the same network.", "",
             *markdown.header(header)]
    for setting, row in means.iterrows():
        name = f"**{setting}** (our best)" if setting == best else setting
        lines.append(markdown.row([name, *[fmt(row[c], 3) for c in columns]]))
    references = logged_references(record.references, config)
    for name, ref in references.items():
        values = [ref.get(family(c), math.nan) if c.endswith("_1nfe") or c == "uerr" else math.nan for c in columns]
        lines.append(markdown.row([f"_reference: {name}_", *[fmt(v, 3) for v in values]]))
    lines += ["", "References (same sample count and noise): data = training points (the sampling floor); exact map = "
              "the exact one-step map of the evaluation noise" + (" (unguided)" if config.sampled_guidance()[0] != 1 else "")
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
    done = record.finished()
    configs = {cell.key: cell.config for cell in record.study.cells()}
    step_axes = [axis.name for axis in record.study.axes if "train.steps" in axis.keys]
    others = [axis.name for axis in record.study.axes if axis.name not in step_axes]
    rows = []
    for cell in done.to_dict("records"):  # records, not itertuples: an axis may be named 'lambda'
        config = configs[cell["key"]]
        series = ", ".join([*(str(cell[name]) for name in others), f"width {config.net.mlp.width}"])
        rows.append({"series": series, "steps": config.train.steps, **cell["metrics"]})
    if not rows:
        return []
    points = pd.DataFrame(rows).groupby(["series", "steps"], sort=False).mean(numeric_only=True).reset_index()
    metrics = [m for m in ("transport_1nfe", "spread_1nfe", "precision_1nfe", "uerr", "transport_fm50") if m in points.columns]
    figures.against_steps(points, metrics, out / "steps.png", "final scores against training steps (grey: the bar's "
                          "spread band)", bands={"spread_1nfe": SPREAD_BAND})
    return ["## Quality against training steps", "", "![quality against training steps](steps.png)", ""]


def best_quality(record: Record, axis_name: str, best: str | None) -> dict:
    """The best setting's mean 1-NFE precision and transport error over seeds, and whether it meets the
    bar of a model that has learned the data (workbench.report.quality.BARS); NaN / None for other data."""
    data_name = record.study.cells()[0].config.data.name
    finished = record.finished()
    done = finished[finished[axis_name] == best]
    if best is None or data_name not in BARS or not len(done):
        return {"best_precision": math.nan, "best_transport": math.nan, "bar": None}
    scores = pd.DataFrame(list(done["metrics"])).mean()
    return {"best_precision": scores.get("precision_1nfe", math.nan),
            "best_transport": scores.get("transport_1nfe", math.nan), "bar": meets_bar(data_name, scores)}


IMAGE_SCORES = ("fid_1nfe", "kid_1nfe", "fid_2nfe", "kid_2nfe", "fid_fm50", "kid_fm50")


def image_quality_section(record: Record, config) -> list[str]:
    """Markdown: FID and KID per setting (mean over seeds) above the same scores of reference image sets
    (workbench/evaluate/evaluators.py image_references: held-out images, class means, the prior), computed here
    from the study's settings (deterministic); nothing where the features cannot be built here."""
    from workbench.evaluate.classifier import FeatureError
    from workbench.evaluate.evaluators import image_references

    done = record.finished()
    if not len(done):
        return []
    try:
        references = image_references(config)
    except (FeatureError, FileNotFoundError, ValueError) as err:
        return ["## Scores against reference image sets", "", f"Not computed here: {err}", ""]
    settings = [axis.name for axis in record.study.axes]
    label = done[settings].astype(str).agg(", ".join, axis=1)
    scores = pd.DataFrame(list(done["metrics"]), index=done.index)
    columns = [c for c in IMAGE_SCORES if c in scores.columns]
    means = scores[columns].groupby(label, sort=False).mean()
    best = stats.best(done.groupby(label, sort=False)["metric"].mean())
    lines = ["## Scores against reference image sets", "",
             f"FID and KID (clean-fid's kernel distance, unscaled) of {config.eval.num_samples} samples in the features "
             f"of the classifier trained on the {config.data.name} labels (workbench/evaluate/classifier.py), lower is "
             "better, beside reference sets scored the same way. "
             "FID is biased upwards at fewer samples, KID is not: the held-out row is measured on the "
             f"{references['held-out images']['n']} images of the test split.", "",
             *markdown.header(["setting (mean over seeds)", *[f"`{c}`" for c in columns]])]
    for setting, row in means.iterrows():
        name = f"**{setting}** (our best)" if setting == best else setting
        lines.append(markdown.row([name, *[fmt(row[c], 3) for c in columns]]))
    for name, ref in references.items():
        values = [ref.get(family(c), math.nan) if c.endswith("_1nfe") else math.nan for c in columns]
        lines.append(markdown.row([f"_reference: {name}_ (n = {ref['n']})", *[fmt(v, 3) for v in values]]))
    lines += ["", "References: held-out images = the test split (the sampling floor); class means = sample i the mean "
              "training image of class i mod classes (the right modes with no spread); prior (u = 0) = the evaluation "
              "noise itself, clipped to the pixel range: what a one-step model that outputs zero gives.", ""]
    return lines

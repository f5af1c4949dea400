"""The report figures: small PNGs readable at page width (sample pictures: workbench/evaluate/pictures.py)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker


def axis_errorbars(table, metric: str, axis_name: str, path: Path, over: str = "seeds") -> None:
    """Per setting, our mean +/- std over `over` (seeds, and the other axes' settings of a study with
    several) in the left panel and, in a panel of its own, the paper's FID: two scales never share an
    axis, and settings are categories, so no line joins them."""
    has_paper = table["paper"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(10 if has_paper else 6, 3.6), squeeze=False)
    x, labels = list(range(len(table))), list(table["value"])
    rotation = 20 if max(map(len, labels)) > 6 else 0
    ours = axes[0][0]
    ours.errorbar(x, table["mean"], yerr=table["std"].fillna(0), fmt="o", markersize=7, capsize=6, elinewidth=2,
                  color="C0")
    for xi, (mean, n) in enumerate(zip(table["mean"], table["n"])):
        if not math.isnan(mean):
            ours.annotate(f"n={n}", (xi, mean), textcoords="offset points", xytext=(9, 0), fontsize=8, va="center")
    ours.set_xticks(x, labels, rotation=rotation)
    ours.set_xlim(-0.5, len(x) - 0.5)
    ours.set_xlabel(axis_name)
    ours.set_ylabel(f"{metric} (lower is better)")
    ours.set_title(f"ours: {metric}, mean ± std over {over}", fontsize=10)
    ours.grid(axis="y", alpha=0.3)
    if has_paper:
        paper = axes[0][1]
        paper.bar(x, table["paper"], color="C3", alpha=0.7, width=0.5)
        paper.set_xticks(x, labels, rotation=rotation)
        paper.set_xlabel(axis_name)
        paper.set_ylabel("FID (lower is better)")
        paper.set_title("the paper's ImageNet FID (its own scale)", fontsize=10)
        paper.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves(history, metric: str, title: str, path: Path, log_y: bool = False) -> None:
    """Per setting: mean over seeds vs step, with a band from the lowest to the highest seed."""
    groups = list(history.groupby("setting", sort=False))
    many = len(groups) > 6  # the legend goes beside the plot, and colours come from a 20-colour map
    fig, ax = plt.subplots(figsize=(9 if many else 8, 3.6))
    colours = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    for i, (setting, rows) in enumerate(groups):
        by_step = rows.groupby("step")["value"]
        mean, low, high = by_step.mean(), by_step.min(), by_step.max()
        ax.plot(mean.index, mean.values, color=colours(i % colours.N), label=setting)
        ax.fill_between(mean.index, low.values, high.values, color=colours(i % colours.N), alpha=0.15, linewidth=0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: mean over seeds, band = min to max")
    ax.title.set_fontsize(10)
    # beside the plot, never over the curves
    ax.legend(fontsize=7 if many else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(groups) // 16)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def picture_grid(pictures: dict, path: Path, title: str) -> None:
    """Saved sample pictures (label -> PNG path) stacked at their own resolution: one per row when they
    are wide (2D scatters beside the data and the exact map), else two per row."""
    images = {label: plt.imread(file) for label, file in pictures.items()}
    height, width = next(iter(images.values())).shape[:2]
    columns = 1 if width > 2 * height else min(2, len(images))
    rows = math.ceil(len(images) / columns)
    scale = 1 / 100  # inches per pixel of the saved pictures (they are drawn at 100 dpi)
    fig, axes = plt.subplots(rows, columns, figsize=(width * scale * columns, (height * scale + 0.35) * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image) in zip(axes.flat, images.items()):
        ax.imshow(image)
        ax.set_title(label, fontsize=11)
    top = 1 - 0.45 / fig.get_figheight()  # the title's own band, 0.45 inch, whatever the figure's height
    fig.suptitle(title, fontsize=12, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig.tight_layout(rect=(0, 0, 1, top))
    # at most about 2 megapixels (a page of many settings stays under 2 MB): a lower dpi for large grids
    pixels = fig.get_figwidth() * fig.get_figheight() * 100 ** 2
    fig.savefig(path, dpi=min(100, int(100 * math.sqrt(2e6 / pixels))))
    plt.close(fig)


def against_steps(points, metrics: list[str], path: Path, title: str, bands: dict | None = None) -> None:
    """One panel per metric: value against training steps (log x), one line per series. `points` has
    columns series, steps, and the metrics (means over seeds); bands: metric -> (low, high) shaded (a bar)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (series, rows) in enumerate(points.groupby("series", sort=False)):
            rows = rows.sort_values("steps")
            ax.plot(rows["steps"], rows[metric], "o-", color=f"C{i}", label=series)
        ax.set_xscale("log")
        steps = sorted(points["steps"].unique())  # the budgets run, as plain numbers: no crowded log minor labels
        ax.set_xticks(steps, [f"{int(s)}" for s in steps], rotation=45 if len(steps) > 4 else 0)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training steps (one run each)")
        ax.set_ylabel(metric)
        if metric.startswith(("transport", "uerr", "energy", "tv")):
            ax.set_yscale("log")
        if metric in (bands or {}):
            ax.axhspan(*bands[metric], color="0.85", zorder=0)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the plots, not over them
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

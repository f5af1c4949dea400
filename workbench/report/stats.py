"""The statistics reports and calibration share: best setting, paired test over seeds, Kendall tau,
seed noise against the spread between settings. Pure functions of pandas tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def best(values: pd.Series):
    """The index of the lowest value (every study metric is lower-is-better), None if all are NaN."""
    return values.idxmin() if values.notna().any() else None


MIN_PAIRS = 3  # a paired t-test on 2 pairs has 1 degree of freedom: its p-value says next to nothing
MIN_SETTINGS = 3  # Kendall tau over 2 settings is +1 or -1 by construction


def paired_test(done: pd.DataFrame, axis_name: str, best_label: str, label: str, keys: list[str]) -> tuple[float, str]:
    """Against `best_label`, over cells that share every column in `keys` (the seed, the other axes): the
    two-sided paired t-test's p-value on the log of the metric (distances vary by factors across seeds,
    and a diverged seed would otherwise swamp the test), NaN with fewer than MIN_PAIRS pairs, and on how
    many of the pairs `label` is worse ("3/3")."""
    if label == best_label:
        return math.nan, ""
    a = done[done[axis_name] == best_label].set_index(keys)["metric"]
    b = done[done[axis_name] == label].set_index(keys)["metric"]
    pairs = pd.concat([a, b], axis=1, join="inner").dropna()
    worse = f"{int((pairs.iloc[:, 1] > pairs.iloc[:, 0]).sum())}/{len(pairs)}" if len(pairs) else ""
    if len(pairs) < MIN_PAIRS or np.allclose(pairs.iloc[:, 0], pairs.iloc[:, 1]):
        return math.nan, worse
    if (pairs > 0).all().all():
        pairs = np.log(pairs)
    return float(stats.ttest_rel(pairs.iloc[:, 0], pairs.iloc[:, 1]).pvalue), worse


def kendall_tau(table: pd.DataFrame) -> tuple[float, int, float]:
    """Kendall tau between our means and the paper's values over the settings that have both (NaN with
    fewer than MIN_SETTINGS), their count, and the two-sided p-value of tau = 0 (scipy's exact test for
    small n: tau = 1 over 4 settings has p = 0.083, so it does not tell an order from a random one)."""
    both = table.dropna(subset=["mean", "paper"])
    if len(both) < MIN_SETTINGS:
        return math.nan, len(both), math.nan
    result = stats.kendalltau(both["mean"], both["paper"])
    return float(result.statistic), len(both), float(result.pvalue)


ALPHA = 0.05  # the family-wise error rate of the comparisons on one table
BLOWN_UP = 10.0  # a finished run scoring above this multiple of the prior's score (u = 0) blew up


def blown_up(value: float, prior: float | None) -> bool:
    """Whether a finished run's score is no result to average or rank: not finite, or above BLOWN_UP times
    what the prior itself scores (a model that outputs u = 0; None where no reference was logged)."""
    return not math.isfinite(value) or (prior is not None and prior > 0 and value > BLOWN_UP * prior)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of the p-values of the comparisons on one table (NaN: not tested, left
    out of the family and returned as NaN): the i-th smallest of m times (m - i + 1), kept monotone, at most 1.
    An adjusted p below ALPHA keeps the chance of any false claim on the table below ALPHA."""
    values = [float(p) for p in pvalues]
    tested = sorted((p, i) for i, p in enumerate(values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def agreement(ours: str | None, papers: str | None, separated: bool, papers_worse: bool) -> str:
    """Whether our study agrees with the paper's best setting: 'agree' (the same best, every other setting
    worse at the corrected level), 'disagree' (another best that way, or the paper's best worse than ours at
    that level), else 'unresolved' (the paper's best within noise of ours)."""
    if ours is None or papers is None:
        return "unresolved"
    if ours == papers:
        return "agree" if separated else "unresolved"
    return "disagree" if papers_worse else "unresolved"


def log_noise(done: pd.DataFrame, axis_name: str) -> dict[str, float]:
    """On log(metric) of finished cells grouped by one axis's settings:
    seed_sd  pooled within-setting standard deviation over seeds;
    spread   standard deviation of the per-setting means;
    ratio    seed_sd / spread (below about 0.5 the settings' order stands out of the seed noise);
    gap      (runner-up's mean - best's mean) / seed_sd (whether the best itself is resolved)."""
    done = done[done["metric"] > 0]
    logs = done.assign(log=np.log(done["metric"])).groupby(axis_name)["log"]
    variances, means = logs.var(ddof=1).dropna(), logs.mean()
    seed_sd = math.sqrt(variances.mean()) if len(variances) else math.nan
    spread = float(means.std(ddof=1)) if len(means) > 1 else math.nan
    ordered = means.sort_values()
    gap = (ordered.iloc[1] - ordered.iloc[0]) / seed_sd if len(ordered) > 1 and seed_sd else math.nan
    return {"seed_sd": seed_sd, "spread": spread, "ratio": seed_sd / spread if spread else math.nan, "gap": gap}

"""The report statistics (workbench/report/stats.py) against hand computations of their formulas."""
import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from workbench.report import stats


def test_best_is_the_lowest_value_and_none_when_nothing_finished():
    assert stats.best(pd.Series([0.3, math.nan, 0.1, 0.2], index=["a", "b", "c", "d"])) == "c"
    assert stats.best(pd.Series([math.nan, math.nan], index=["a", "b"])) is None


def cells(values: dict[str, list[float]], axis="lr") -> pd.DataFrame:
    return pd.DataFrame([{axis: label, "seed": seed, "metric": m}
                         for label, metrics in values.items() for seed, m in enumerate(metrics)])


def t_test_p(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sided paired t-test written out: t = mean(d) / (sd(d) / sqrt(n)) on n - 1 degrees of freedom."""
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return 2 * scipy_stats.t.sf(abs(t), len(d) - 1)


def test_paired_test_is_the_t_test_on_the_log_of_each_seeds_pair():
    best, other = [0.10, 0.20, 0.15, 0.12], [0.30, 0.25, 0.60, 0.11]
    done = cells({"best": best, "other": other})
    p, worse = stats.paired_test(done, "lr", "best", "other", ["seed"])
    assert p == pytest.approx(t_test_p(np.log(best), np.log(other)), rel=1e-12)
    assert worse == "3/4"  # the last seed's 0.11 beats the best setting's 0.12


def test_paired_test_pairs_cells_by_their_keys_not_by_their_order():
    best, other = [0.10, 0.20, 0.15], [0.30, 0.25, 0.60]
    done = cells({"best": best, "other": other}).iloc[[5, 0, 3, 1, 4, 2]]
    p, _ = stats.paired_test(done, "lr", "best", "other", ["seed"])
    assert p == pytest.approx(t_test_p(np.log(best), np.log(other)), rel=1e-12)
    shuffled, _ = stats.paired_test(cells({"best": best, "other": [0.60, 0.25, 0.30]}), "lr", "best", "other", ["seed"])
    assert shuffled != pytest.approx(p)


def test_paired_test_stays_on_the_metric_when_a_value_is_not_positive():
    best, other = [-0.10, 0.20, 0.15], [0.30, 0.25, 0.60]
    p, _ = stats.paired_test(cells({"best": best, "other": other}), "lr", "best", "other", ["seed"])
    assert p == pytest.approx(t_test_p(np.array(best), np.array(other)), rel=1e-12)


def test_paired_test_needs_three_pairs_that_differ():
    two = cells({"best": [0.1, 0.2], "other": [0.3, 0.4]})
    assert math.isnan(stats.paired_test(two, "lr", "best", "other", ["seed"])[0])
    assert stats.paired_test(two, "lr", "best", "other", ["seed"])[1] == "2/2"
    three = cells({"best": [0.1, 0.2, 0.3], "other": [0.3, 0.4, 0.35]})
    assert not math.isnan(stats.paired_test(three, "lr", "best", "other", ["seed"])[0])
    same = cells({"best": [0.1, 0.2, 0.3], "other": [0.1, 0.2, 0.3]})
    assert stats.paired_test(same, "lr", "best", "other", ["seed"]) == (pytest.approx(math.nan, nan_ok=True), "0/3")
    assert stats.paired_test(three, "lr", "best", "best", ["seed"]) == (pytest.approx(math.nan, nan_ok=True), "")
    missing = cells({"best": [0.1, math.nan, 0.3, 0.2], "other": [0.3, 0.4, 0.35, math.nan]})
    assert stats.paired_test(missing, "lr", "best", "other", ["seed"])[1] == "2/2"  # pairs with a NaN are dropped


def concordance_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau without ties: (concordant - discordant pairs) / all pairs."""
    signs = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in combinations(range(len(x)), 2)]
    return float(sum(signs) / len(signs))


def test_kendall_tau_over_the_settings_with_both_numbers():
    ours, paper = [0.3, 0.1, 0.4, 0.2, 0.5, math.nan], [2.0, 1.0, 4.0, 3.0, math.nan, 7.0]
    tau, n, p = stats.kendall_tau(pd.DataFrame({"mean": ours, "paper": paper}))
    assert n == 4 and p == pytest.approx(scipy_stats.kendalltau(ours[:4], paper[:4]).pvalue, abs=1e-12)
    assert tau == pytest.approx(concordance_tau(ours[:4], paper[:4]), abs=1e-12)
    assert tau == pytest.approx(2 / 3)  # one discordant pair of six
    tau, n, p = stats.kendall_tau(pd.DataFrame({"mean": [0.1, 0.2, math.nan], "paper": [1.0, 2.0, 3.0]}))
    assert math.isnan(tau) and n == 2 and math.isnan(p)
    tau, n, p = stats.kendall_tau(pd.DataFrame({"mean": [0.1, 0.2, 0.3], "paper": [1.0, 2.0, 3.0]}))
    assert tau == pytest.approx(1.0) and n == 3 and p == pytest.approx(2 / 6)  # 1 of the 3! = 6 orders is as concordant
    tau, n, p = stats.kendall_tau(pd.DataFrame({"mean": [0.1, 0.2, 0.3, 0.4], "paper": [1.0, 2.0, 3.0, 4.0]}))
    assert tau == pytest.approx(1.0) and p == pytest.approx(2 / 24)  # a perfect order of 4 settings: p = 0.083


def test_log_noise_against_its_formulas():
    values = {"a": [0.10, 0.12, 0.11], "b": [0.30, 0.20, 0.25, 0.35], "c": [0.05, 0.09, 0.07]}
    done = cells({**values, "d": [-1.0, 0.0, math.nan]})  # not positive: left out
    noise = stats.log_noise(done, "lr")
    logs = {k: np.log(v) for k, v in values.items()}
    seed_sd = math.sqrt(np.mean([v.var(ddof=1) for v in logs.values()]))
    means = sorted(v.mean() for v in logs.values())
    spread = float(np.std(means, ddof=1))
    assert noise["seed_sd"] == pytest.approx(seed_sd, rel=1e-12)
    assert noise["spread"] == pytest.approx(spread, rel=1e-12)
    assert noise["ratio"] == pytest.approx(seed_sd / spread, rel=1e-12)
    assert noise["gap"] == pytest.approx((means[1] - means[0]) / seed_sd, rel=1e-12)


def test_log_noise_of_one_setting_or_one_seed_each():
    one = stats.log_noise(cells({"a": [0.1, 0.2, 0.3]}), "lr")
    assert one["seed_sd"] == pytest.approx(np.log([0.1, 0.2, 0.3]).std(ddof=1))
    assert math.isnan(one["spread"]) and math.isnan(one["ratio"]) and math.isnan(one["gap"])
    single = stats.log_noise(cells({"a": [0.1], "b": [0.2]}), "lr")
    assert math.isnan(single["seed_sd"]) and single["spread"] == pytest.approx(np.log(2) / math.sqrt(2))


def test_paired_test_without_shared_keys_has_no_pairs():
    done = pd.concat([cells({"best": [0.1, 0.2, 0.3]}), cells({"other": [0.3, 0.4, 0.5]}).assign(seed=[7, 8, 9])])
    assert stats.paired_test(done, "lr", "best", "other", ["seed"]) == (pytest.approx(math.nan, nan_ok=True), "")


def test_paired_test_takes_logs_only_when_every_value_is_positive():
    best, other = [0.0, 0.20, 0.15], [0.30, 0.25, 0.60]  # a zero: log would be -inf
    p, _ = stats.paired_test(cells({"best": best, "other": other}), "lr", "best", "other", ["seed"])
    assert p == pytest.approx(t_test_p(np.array(best), np.array(other)), rel=1e-12)


def test_kendall_tau_ignores_other_columns():
    table = pd.DataFrame({"mean": [0.1, 0.2, 0.3], "paper": [1.0, 2.0, 3.0], "std": [math.nan, 0.1, math.nan]})
    assert stats.kendall_tau(table)[:2] == (pytest.approx(1.0), 3)


def test_log_noise_of_two_settings_and_of_settings_with_one_mean():
    two = stats.log_noise(cells({"a": [0.1, 0.2], "b": [0.4, 0.3]}), "lr")
    gap = (np.log([0.4, 0.3]).mean() - np.log([0.1, 0.2]).mean()) / two["seed_sd"]
    assert two["gap"] == pytest.approx(gap, rel=1e-12)
    same = stats.log_noise(cells({"a": [0.1, 0.2], "b": [0.2, 0.1]}), "lr")  # equal means: no spread
    assert same["spread"] == 0 and math.isnan(same["ratio"])


def test_holm_adjusts_each_p_by_its_rank_and_keeps_the_order():
    """m = 4: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, made monotone (0.06)."""
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, math.nan, 0.2])[1] != stats.holm([0.5, math.nan, 0.2])[1]  # untested stays NaN
    assert stats.holm([0.5, math.nan, 0.2])[::2] == pytest.approx([0.5, 0.4])  # a family of two
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # never above 1
    assert stats.holm([]) == []


@pytest.mark.parametrize("ours, papers, separated, papers_worse, expected", [
    ("a", "a", True, False, "agree"), ("a", "a", False, False, "unresolved"), ("a", "b", True, True, "disagree"),
    ("a", "b", False, True, "disagree"), ("a", "b", False, False, "unresolved"), (None, "b", False, False, "unresolved")])
def test_agreement_with_the_papers_best_counts_ties_as_unresolved(ours, papers, separated, papers_worse, expected):
    assert stats.agreement(ours, papers, separated, papers_worse) == expected


def test_two_raw_wins_become_ties_under_holm_and_leave_the_agreement_unresolved():
    """Three settings on 4 seeds: b and c are each worse than a on every seed by a small margin, raw p 0.033 and
    0.038, each a "win" on its own. Holm over the table's two comparisons makes both ties (0.033 x 2 = 0.066), so
    the paper's best b leaves the agreement unresolved, where the raw tests would have called it a disagreement."""
    from workbench.report.verdicts import outcome

    values = {"a": [0.100, 0.120, 0.090, 0.110], "b": [0.105, 0.123, 0.097, 0.113], "c": [0.107, 0.124, 0.097, 0.112]}
    done = pd.DataFrame([{"lr": lr, "seed": s, "metric": v} for lr, vs in values.items() for s, v in enumerate(vs)])
    raw = {label: stats.paired_test(done, "lr", "a", label, ["seed"])[0] for label in ("b", "c")}
    assert raw["b"] == pytest.approx(0.0332, abs=1e-4) and raw["c"] == pytest.approx(0.0384, abs=1e-4)
    table = pd.DataFrame({"value": list(values), "n": [4, 4, 4], "mean": [np.mean(v) for v in values.values()],
                          "paper": [2.0, 1.0, 3.0], "p_vs_best": [math.nan, raw["b"], raw["c"]]})
    table["p_holm"] = stats.holm(table["p_vs_best"])
    assert table["p_holm"].tolist()[1:] == pytest.approx([2 * raw["b"], 2 * raw["b"]])  # monotone: c's 0.038 -> 0.066
    result = outcome(table)
    assert result["ours"] == "a" and result["papers"] == "b" and result["worse"] == []
    assert result["tied"] == ["b", "c"] and result["agreement"] == "unresolved"
    raw_table = table.assign(p_holm=table["p_vs_best"])  # without the correction: b "worse", a disagreement
    assert outcome(raw_table)["agreement"] == "disagree"

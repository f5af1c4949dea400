"""A table's verdict under each metric its runs logged (workbench/report/verdicts.py), the base row marked, and
the bar of a learned model against the exact map and shrunken copies of it (workbench/report/quality.py)."""
import math

import pandas as pd
import pytest

from workbench.report.ablation import base_label, markdown_table
from workbench.report.quality import SPREAD_BAND, bar_calibration, meets_bar
from workbench.report.record import Record, axis_table
from workbench.report.verdicts import flips_summary, other_metrics, other_metrics_lines
from workbench.study.study import parse_study

STUDY = {"name": "toy", "description": "d", "metric": "transport_1nfe", "seeds": [0, 1, 2],
         "base": {"data.name": "gaussians", "meanflow.ratio": 1.0},
         "axes": [{"key": "meanflow.ratio", "values": [0.0, 0.5, 1.0], "labels": ["a", "b", "c"],
                   "paper": [1.0, 2.0, 3.0]}]}


def record(metrics: dict[str, dict[str, list[float]]]) -> Record:
    """A recorded study whose cells scored metrics[name][label][seed]; the study ranks by transport_1nfe."""
    from pathlib import Path

    study = parse_study(STUDY, Path("studies/toy.toml"))
    rows = []
    axis = study.axes[0].name
    for cell in study.cells():
        label = dict(cell.settings)[axis]
        scores = {name: values[label][cell.seed] for name, values in metrics.items()}
        rows.append({axis: label, "seed": cell.seed, "key": cell.key, "status": "finished", "run_id": "r",
                     "metric": scores["transport_1nfe"], "metric_2nfe": math.nan, "metric_fm": math.nan, "fm_name": "",
                     "wall": 1.0, "end": 1, "commit": "c", "metrics": scores})
    return Record(study, pd.DataFrame(rows), client=None)


def test_a_metric_that_reverses_the_order_flips_the_verdict():
    # transport: a far below b and c on every seed (the paper's best too: agree); uerr: the reverse order
    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    uerr = {label: list(reversed(values)) for label, values in zip("abc", reversed(list(transport.values())))}
    same = {label: [2 * v for v in values] for label, values in transport.items()}
    rows = other_metrics(record({"transport_1nfe": transport, "uerr": uerr, "energy_1nfe": same}), 0)
    assert [r["metric"] for r in rows] == ["transport_1nfe", "uerr", "energy_1nfe"]  # the study's first, in order
    assert [(r["ours"], r["agreement"]) for r in rows] == [("a", "agree"), ("c", "disagree"), ("a", "agree")]
    assert [r["flips"] for r in rows] == [False, True, False]
    assert rows[0]["tau"] == pytest.approx(1.0) and rows[1]["tau"] == pytest.approx(-1.0)
    assert flips_summary(rows) == "`uerr`: disagree"
    text = "\n".join(other_metrics_lines(rows))
    assert "| `uerr` | c | – | disagree | -1 (0.33) | **flips** |" in text
    assert "the verdict flips under `uerr` (disagree)" in text


def test_a_metric_no_run_logged_is_left_out_and_one_metric_shows_nothing():
    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    rows = other_metrics(record({"transport_1nfe": transport}), 0)
    assert [r["metric"] for r in rows] == ["transport_1nfe"]
    assert other_metrics_lines(rows) == [] and flips_summary(rows) == "–"


def test_the_base_setting_is_marked_in_its_table():
    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    rec = record({"transport_1nfe": transport})
    axis = rec.study.axes[0]
    assert base_label(rec.study, axis) == "c"  # ratio 1.0 is the base's
    text = markdown_table(axis_table(rec, 0), "transport_1nfe", base_label(rec.study, axis))
    assert "| c (base) |" in text and "| a |" in text


def test_the_bar_passes_the_exact_map_and_fails_its_shrunken_copies():
    rows = {r["shrink"]: r for r in bar_calibration("gaussians", 2000, 0, conditional=True)}
    assert rows[1.0]["bar"] and rows[1.0]["transport_1nfe"] == 0.0 and rows[1.0]["spread_1nfe"] == pytest.approx(1.0)
    assert rows[0.9]["bar"] and rows[0.85]["bar"] and rows[0.75]["spread_1nfe"] == pytest.approx(0.75)
    # pulled halfway to the class means: transport alone (0.0048 <= 0.005) would pass it, the spread does not
    assert rows[0.5]["transport_1nfe"] == pytest.approx(0.25 * rows[0.0]["transport_1nfe"])
    assert rows[0.5]["transport_1nfe"] <= 0.005 and not rows[0.5]["bar"]
    assert not rows[0.75]["bar"] and not rows[0.0]["bar"]
    assert SPREAD_BAND[0] < 1 < SPREAD_BAND[1]


def test_the_bar_without_a_logged_spread_checks_the_rest():
    scores = {"precision_1nfe": 0.99, "modes_1nfe": 8, "transport_1nfe": 0.004}
    assert meets_bar("gaussians", scores)
    assert not meets_bar("gaussians", scores | {"spread_1nfe": 0.6})
    assert not meets_bar("gaussians", scores | {"spread_1nfe": 1.3})
    assert meets_bar("gaussians", scores | {"spread_1nfe": 0.95})
    assert not meets_bar("gaussians", scores | {"transport_1nfe": 0.006, "spread_1nfe": 1.0})


def test_optuna_figures_leave_the_matplotlib_style_as_they_found_it(tmp_path):
    import matplotlib.pyplot as plt
    import optuna

    from workbench.report.search import figures

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2 + t.suggest_float("y", 0, 1), n_trials=6)
    before = dict(plt.rcParams)
    lines = figures(study, tmp_path)
    assert "![optimization history](search/history.png)" in lines and (tmp_path / "history.png").exists()
    assert {k for k in before if before[k] != plt.rcParams[k]} == set()  # Optuna's ggplot style did not leak


def test_the_suite_runs_every_table1_subtable_at_both_operating_points_and_table5_at_one():
    from workbench.report.suite import suite_names
    from workbench.study.plan import load_plan

    names = dict(suite_names())
    assert names["table1a"] == "wb ablate table1a" and names["table1e-paper"] == "wb calibrate --budget paper"
    assert names["table1f-paper"] == "wb calibrate --budget paper" and "table5-paper" not in names
    paper = load_plan("studies/calibration.toml").budget("paper")
    assert {f"{s}-paper" for s in paper.studies} == {n for n in names if n.endswith("-paper")}


def test_a_calibration_candidates_page_says_to_run_its_file():
    from workbench.report.ablation import study_argument

    assert study_argument("table1a") == "table1a"
    assert study_argument("table1d-paper") == "studies/calibration/table1d-paper.toml"


def test_a_recorded_study_without_finished_cells_gets_no_verdict_on_the_suite_page(tmp_path, monkeypatch):
    import workbench.report.suite as suite

    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    learned, failed = record({"transport_1nfe": transport}), record({"transport_1nfe": transport})
    failed.cells["status"] = "failed"
    monkeypatch.setattr(suite, "load_record", lambda name, uri: {"good": learned, "bad": failed}[name])
    text = suite.render_suite(("good", "bad"), "unused", tmp_path).read_text()
    assert "| [bad](../bad/README.md) | CPU (100%, uniform(0,1), p = 0.5) | ratio | no finished cells |" in text
    assert "- bad (CPU (100%, uniform(0,1), p = 0.5)): no finished cells yet." in text
    assert "Of 1 tables: 1 agree with the paper's best setting, 0 disagree, 0 are unresolved" in text


def test_the_verdict_states_the_best_settings_lead_in_seed_sds():
    """a: mean 0.001, sd 0.0001; b: mean 0.011, sd 0.001: lead (0.011 - 0.001) / sqrt((1e-8 + 1e-6) / 2) = 14.07."""
    from workbench.report.verdicts import lead, verdict

    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    table = axis_table(record({"transport_1nfe": transport}), 0)
    runner_up, sds = lead(table)
    assert runner_up == "b" and sds == pytest.approx(0.01 / math.sqrt((1e-8 + 1e-6) / 2))
    assert "It leads the runner-up (b) by 14 seed SDs (the gap of their means over their pooled seed SD)" in verdict(table)
    one_seed = table.assign(std=math.nan)  # one seed: no SD, no sentence
    assert lead(one_seed)[0] == "b" and "seed SDs" not in verdict(one_seed)


def test_without_paper_values_a_metric_that_changes_our_best_flips_the_verdict(monkeypatch):
    """No paper column: the verdict is our best setting, so another metric with another best flips it."""
    monkeypatch.setitem(STUDY["axes"][0], "paper", None)
    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    uerr = {"a": [0.3, 0.31, 0.29], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    rows = other_metrics(record({"transport_1nfe": transport, "uerr": uerr, "energy_1nfe": transport}), 0)
    assert [(r["ours"], r["agreement"], r["flips"]) for r in rows] == [
        ("a", "–", False), ("b", "–", True), ("a", "–", False)]
    assert flips_summary(rows) == "`uerr`: best b"


def test_an_axis_named_like_a_python_keyword_renders(monkeypatch, tmp_path):
    """pandas' itertuples renames a column called 'lambda' (a keyword): the pages read cells as records."""
    from workbench.report import ablation

    monkeypatch.setitem(STUDY["axes"][0], "name", "lambda")
    transport = {"a": [0.001, 0.0011, 0.0009], "b": [0.01, 0.012, 0.011], "c": [0.1, 0.12, 0.09]}
    rec = record({"transport_1nfe": transport})
    monkeypatch.setattr(ablation.queries, "metric_history", lambda client, run, metric: [(10, 0.5)])
    monkeypatch.setattr(ablation.queries, "download", lambda client, run, name, folder: tmp_path / "p.png")
    assert set(ablation.histories(rec, "transport_1nfe")["setting"]) == {"a", "b", "c"}
    figures = ablation.sample_pictures(rec, tmp_path)
    assert [list(group) for _, _, group in figures] == [["a (seed 0)", "b (seed 0)", "c (seed 0)"]]

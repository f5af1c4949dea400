"""`wb calibrate`: plan validation, the noise statistics against an independent computation, and one
tiny plan run end to end from the CLI."""
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from workbench.cli import app
from workbench.report.calibration import comparisons, noise
from workbench.report.record import Record
from workbench.study.derived import write_studies
from workbench.study.plan import load_plan
from workbench.study.study import StudyError, parse_study

from conftest import tiny_study

PLAN = """
description = "test plan"
studies = ["tiny"]
chosen = "full"
[[budgets]]
name = "full"
description = "as in the study file"
[[budgets]]
name = "short"
description = "half the steps"
[budgets.set]
"train.steps" = {short_steps}
"""


def setup(folder, short_steps=3):
    (folder / "studies").mkdir()
    axis = 'values = [0.0, 0.5]\nlabels = ["FM", "half"]\npaper = [300.0, 60.0]'
    (folder / "studies" / "tiny.toml").write_text(tiny_study(6, axis))
    (folder / "studies" / "calibration.toml").write_text(PLAN.format(short_steps=short_steps))
    return folder / "studies" / "calibration.toml"


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.replace('chosen = "full"', 'chosen = "nope"'), "chosen.tiny: 'nope' is not a budget"),
    (lambda p: p.replace('chosen = "full"', 'chosen = {other = "full"}'), "chosen: must be a budget name or a table"),
    (lambda p: p.replace('name = "short"', 'name = "Short-1"'), "budgets[1].name: 'Short-1' must match"),
    (lambda p: p.replace('name = "short"', 'name = "shipped"'), "and not be 'shipped'"),
    (lambda p: "extra = 1\n" + p, "extra: unknown key"),
    (lambda p: p.replace('description = "half the steps"', 'description = "x"\nstudies = ["other"]'),
     "budgets[1].studies: must list studies of the plan"),
])
def test_bad_plans_name_the_key(tmp_path, monkeypatch, edit, message):
    monkeypatch.chdir(tmp_path)
    path = setup(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_plan(path)


@pytest.mark.parametrize("edit, message", [
    # the shipped study (6 steps) does not carry the chosen budget
    (lambda p: p.replace('chosen = "full"', 'chosen = "short"'),
     "chooses budget 'short' for 'tiny', but the study file differs from it in train.steps (6 vs 3)"),
    # a candidate equal to the shipped study would repeat its runs under another name
    (lambda p: p.replace('"train.steps" = 3', '"train.steps" = 6'), "budget 'short' changes nothing in 'tiny'"),
])
def test_a_plan_that_contradicts_the_study_files_writes_nothing(tmp_path, monkeypatch, edit, message):
    monkeypatch.chdir(tmp_path)
    path = setup(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_studies(load_plan(path))
    assert not (tmp_path / "studies" / "calibration").exists()


def test_a_budget_with_a_bad_config_value_writes_nothing_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path, short_steps=0)  # train.steps must be >= 1
    result = CliRunner().invoke(app, ["calibrate", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 2
    assert "budget 'short' on study 'tiny'" in result.output and "train.steps" in result.output
    assert not (tmp_path / "studies" / "calibration").exists() and not (tmp_path / "m.db").exists()


def test_derived_study_is_the_study_with_the_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = load_plan(setup(tmp_path))
    assert plan.chosen == {"tiny": "full"}
    shipped, short = write_studies(plan)
    assert shipped.name == "tiny.toml" and short.name == "tiny-short.toml"
    import tomllib
    a, b = (parse_study(tomllib.loads(p.read_text()), p) for p in (shipped, short))
    assert b.name == "tiny-short" and b.base == {**a.base, "train.steps": 3}
    assert [c.config.train.steps for c in b.cells()] == [3] * len(a.cells())
    assert [c.settings for c in b.cells()] == [c.settings for c in a.cells()]


def fake_record(metrics: dict[str, list[float]]) -> Record:
    """A recorded one-axis study whose cells scored `metrics` (label -> one value per seed)."""
    labels = list(metrics)
    text = tiny_study(6, f"values = {[i / 10 for i in range(len(labels))]}\nlabels = {labels}\n"
                         f"paper = {[float(10 + i) for i in range(len(labels))]}")
    import tomllib
    from pathlib import Path
    study = parse_study(tomllib.loads(text), Path("tiny.toml"))
    rows = [{"ratio": label, "seed": seed, "status": "finished", "metric": value, "metric_2nfe": math.nan,
             "wall": 60.0, "key": f"{label}{seed}", "run_id": "r", "end": 0, "commit": "c"}
            for label, values in metrics.items() for seed, value in enumerate(values)]
    return Record(study, pd.DataFrame(rows), client=None)


def test_noise_statistics_equal_an_independent_computation():
    metrics = {"a": [0.10, 0.12], "b": [0.30, 0.20], "c": [0.05, 0.09]}
    out = noise(fake_record(metrics))
    logs = {k: np.log(v) for k, v in metrics.items()}
    seed_sd = math.sqrt(np.mean([np.var(v, ddof=1) for v in logs.values()]))
    spread = np.std([np.mean(v) for v in logs.values()], ddof=1)
    assert out["seed_sd"] == pytest.approx(seed_sd, rel=1e-12)
    assert out["spread"] == pytest.approx(spread, rel=1e-12)
    assert out["ratio"] == pytest.approx(seed_sd / spread, rel=1e-12)
    means = sorted(np.mean(v) for v in logs.values())
    assert out["gap"] == pytest.approx((means[1] - means[0]) / seed_sd, rel=1e-12)
    # Our order c < a < b; the paper's (10, 11, 12) is a < b < c: best differs, tau = -1/3.
    assert out["best"] == "c" and out["paper_best"] == "a" and not out["match"]
    assert out["tau"] == pytest.approx(stats.kendalltau([0.11, 0.25, 0.07], [10, 11, 12]).statistic)
    assert (out["finished"], out["cells"], out["others"]) == (6, 6, 2)


def test_a_setting_worse_on_every_seed_by_a_steady_factor_is_separated():
    out = noise(fake_record({"a": [0.1, 0.2, 0.4, 0.8], "b": [1.0, 2.0, 4.1, 7.9]}))
    assert out["separated"] == 1 and out["best"] == "a"


def test_comparison_counts_only_the_studies_both_budgets_ran():
    row = lambda budget, study, chosen, ratio, gap, match, tau, sep: {  # noqa: E731
        "budget": budget, "study": study, "chosen": chosen, "ratio": ratio, "gap": gap, "match": match, "tau": tau,
        "separated": sep, "others": 3}
    # s1 and s2 ship with budget a, s3 with b; b's s3 row is the shipped run itself, not a candidate.
    table = pd.DataFrame([row("a", "s1", True, 0.2, 3.0, True, 1.0, 3), row("a", "s2", True, 0.5, 0.5, False, 0.0, 1),
                          row("b", "s1", False, 0.4, 1.0, False, 0.2, 1), row("b", "s3", True, 0.1, 9.0, True, 1.0, 3),
                          row("a", "s3", False, 0.3, 2.0, False, 0.5, 2)])
    lines = comparisons(table)
    assert lines == [
        "- shipped against b, on the 1 studies where b is a candidate not chosen: lower noise on 1 (median 0.2 vs 0.4), "
        "larger gap on 1 (median 3 vs 1), best = paper's on 1 vs 0, mean tau 1 vs 0.2, settings separated 3 vs 1 of 3.",
        "- shipped against a, on the 1 studies where a is a candidate not chosen: lower noise on 1 (median 0.1 vs 0.3), "
        "larger gap on 1 (median 9 vs 2), best = paper's on 1 vs 0, mean tau 1 vs 0.5, settings separated 3 vs 2 of 3."]


@pytest.mark.slow
def test_calibrate_runs_each_budget_and_reports_from_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = ["calibrate", "--workers", "1", "--tracking-uri", uri, "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    for name, steps in (("tiny", 6), ("tiny-short", 3)):
        runs = mlflow.search_runs(experiment_names=[name])
        cells = runs[runs["tags.wb.role"] != "study"]
        assert len(cells) == 4 and set(cells["params.train.steps"]) == {str(steps)}
    report = (tmp_path / "reports" / "calibration" / "README.md").read_text()
    assert "| full | none (as in the study files) | tiny | as in the study file |" in report
    assert "| short | `train.steps=3` | – | half the steps |" in report
    assert "| **shipped** | 1 | 4/4 |" in report and "| full | 1 | 4/4 |" in report
    assert "- shipped against short, on the 1 studies where short is a candidate not chosen: lower noise on" in report
    # The per-study row of each budget holds the statistics of its runs.
    for name, budget in (("tiny", "**full**"), ("tiny-short", "short")):
        runs = mlflow.search_runs(experiment_names=[name])
        cells = runs[runs["tags.wb.role"] != "study"].assign(log=lambda d: np.log(d["metrics.energy_1nfe"]))
        by = cells.groupby("params.meanflow.ratio")["log"]
        seed_sd = math.sqrt(by.var(ddof=1).mean())
        spread = by.mean().std(ddof=1)
        row = next(line for line in report.splitlines() if f"| {budget} | 4/4 |" in line)
        gap = (np.sort(by.mean().values)[1] - by.mean().min()) / seed_sd
        assert f"| {seed_sd:.2g} | {spread:.2g} | {seed_sd / spread:.2g} | {gap:.2g} |" in row
    again = CliRunner().invoke(app, args)  # everything finished: nothing runs again
    assert again.exit_code == 0 and len(mlflow.search_runs(experiment_names=["tiny-short"])) == 5
    assert "/tmp" not in report and str(tmp_path) not in report

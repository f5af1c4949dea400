"""wb report: every table cell equals the mean/std computed directly from the recorded MLflow runs."""
import math
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from workbench.cli import app
from workbench.report.ablation import render
from workbench.report.suite import render_suite
from workbench.schedule.ablation import AblationQueue
from workbench.schedule.launcher import launch
from workbench.stores.urls import default_stores
from workbench.study.study import load_study

from conftest import tiny_study

STUDY = tiny_study(40, 'values = [0.0, 0.5, 1.0]\nlabels = ["FM", "half", "all"]\npaper = [328.91, 63.14, 67.32]',
                   '"eval.every" = 20\n"eval.num_samples_during" = 100')


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A recorded study: value 'all' failed on both seeds, one 'half' run deleted (missing)."""
    root = tmp_path_factory.mktemp("store")
    (root / "tiny.toml").write_text(STUDY)
    stores = default_stores(f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}")
    stores = type(stores)(stores.storage, stores.tracking_uri, (root / "mlartifacts").as_uri())
    launch(AblationQueue(load_study(root / "tiny.toml"), stores), workers=1, progress=lambda line: None)
    client = MlflowClient(stores.tracking_uri)
    mlflow.set_tracking_uri(stores.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    runs = runs[runs["tags.wb.role"] != "study"]
    for run_id in runs.loc[runs["tags.wb.axis.ratio"] == "all", "run_id"]:
        client.set_terminated(run_id, "FAILED")
    half = runs[runs["tags.wb.axis.ratio"] == "half"].sort_values("tags.wb.seed")
    client.delete_run(half["run_id"].iloc[1])
    return root, stores.tracking_uri


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.replace("**", "").strip() for c in cells] for cells in rows[1:]}


def test_table_cells_equal_the_runs_statistics(store, tmp_path):
    root, uri = store
    path = render("tiny", uri, tmp_path)
    text = path.read_text()
    rows = table_rows(text)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    done = runs[(runs["tags.wb.role"] != "study") & (runs["status"] == "FINISHED")]
    fm = done.loc[done["tags.wb.axis.ratio"] == "FM", "metrics.energy_1nfe"]
    assert len(fm) == 2
    mean, std, n = re.fullmatch(r"(\S+) ± (\S+) \((\d)\)", rows["FM"][1]).groups()
    assert math.isclose(float(mean), fm.mean(), rel_tol=1e-3) and math.isclose(float(std), fm.std(), rel_tol=1e-2)
    assert n == "2"
    half = done.loc[done["tags.wb.axis.ratio"] == "half", "metrics.energy_1nfe"]
    assert len(half) == 1
    assert re.fullmatch(r"(\S+) ± – \(1\), missing 1", rows["half"][1])
    assert math.isclose(float(rows["half"][1].split()[0]), half.iloc[0], rel_tol=1e-3)
    assert rows["all"][1] == "failed (0/2)" and rows["all"][4] == "" and rows["all"][3] == "67.32"
    assert "cells: 3/6 finished, 2 failed, 1 missing" in text
    assert "Not tested against the best (n too small: fewer than 3 seeds paired with it" in text  # 'half': 1 seed left
    # paper ranks: 328.91 > 67.32 > 63.14
    assert [rows[v][5] for v in ("FM", "half", "all")] == ["3", "1", "2"]
    for figure in ("ratio.png", "eval.png", "loss.png", "samples.png", "samples_2nfe.png"):
        assert f"]({figure})" in text and (tmp_path / "tiny" / figure).stat().st_size > 1000
    assert str(root) not in text and str(tmp_path) not in text  # relative links only


def test_rerendering_gives_the_same_markdown(store, tmp_path):
    _, uri = store
    first = render("tiny", uri, tmp_path / "a").read_text()
    (tmp_path / "b" / "tiny").mkdir(parents=True)
    (tmp_path / "b" / "tiny" / "samples-old.png").write_bytes(b"a figure an earlier rendering drew")
    assert render("tiny", uri, tmp_path / "b").read_text() == first
    assert sorted(p.name for p in (tmp_path / "a" / "tiny").glob("*.png")) == \
        sorted(p.name for p in (tmp_path / "b" / "tiny").glob("*.png"))  # the stale figure is gone
    assert all(f"]({p.name})" in first for p in (tmp_path / "a" / "tiny").glob("*.png"))


def test_suite_page_links_each_study(store, tmp_path):
    _, uri = store
    text = render_suite(("tiny", "notrun"), uri, tmp_path).read_text()
    assert "[tiny](../tiny/README.md)" in text and "failed (0/2)" in text
    assert "| notrun | CPU (100%, uniform(0,1), p = 0.5) | not run yet (`wb ablate notrun`)" in text
    assert "tiny-paper" not in text  # a study outside the paper budget has no paper-point row
    # the paper's best is "half" (63.14), which kept one finished seed: no test can separate it from ours or ours
    # from it, so the sub-table is unresolved whichever setting has the lowest mean
    assert "Of 1 tables: 0 agree with the paper's best setting, 0 disagree, 1 are unresolved" in text
    assert "| unresolved |" in text
    assert "- tiny (CPU (100%, uniform(0,1), p = 0.5)): **unresolved** with the paper's best (half) by `energy_1nfe`" in text


def test_wb_report_unknown_study_exits_2(store, tmp_path):
    _, uri = store
    result = CliRunner().invoke(app, ["report", "nosuch", "--tracking-uri", uri, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nosuch" in result.output and not (tmp_path / "nosuch").exists()


PLAN = str(Path(__file__).parent.parent / "studies" / "calibration.toml")


@pytest.mark.parametrize("command", [["report", "tiny"], ["calibrate", "--report-only", "--plan", PLAN]])
def test_reading_a_store_that_is_not_there_exits_2_and_creates_nothing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*command, "--tracking-uri", "sqlite:///missing.db"])
    assert result.exit_code == 2 and f"no MLflow store at {tmp_path / 'missing.db'}" in result.output
    assert not list(tmp_path.iterdir())


def test_a_store_without_study_file_says_how_to_add_it(store, tmp_path):
    """Parent runs recorded before study.toml existed: exit 2 with the command that adds it."""
    _, uri = store
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("old"), tags={"wb.role": "study"}).info.run_id
    client.set_terminated(parent)
    result = CliRunner().invoke(app, ["report", "old", "--tracking-uri", uri, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no study.toml" in result.output and "wb ablate old" in result.output


def test_quality_section_shows_the_runs_scores_beside_the_exact_references(tmp_path):
    """A checkerboard study: per setting the mean of the runs' precision and transport, then the reference rows."""
    (tmp_path / "board.toml").write_text(tiny_study(30, 'values = [0.0, 0.5]\nlabels = ["FM", "half"]',
                                                    data="checkerboard", name="board"))
    stores = default_stores(f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    stores = type(stores)(stores.storage, stores.tracking_uri, (tmp_path / "mlartifacts").as_uri())
    launch(AblationQueue(load_study(tmp_path / "board.toml"), stores), workers=1, progress=lambda line: None)
    text = render("board", stores.tracking_uri, tmp_path / "out").read_text()
    section = text[text.index("## Quality against exact references"):]
    rows = table_rows(section)
    header_line = next(line for line in section.splitlines() if line.startswith("| setting"))
    header = [c.strip().strip("`") for c in header_line.split("|")[1:-1]]
    mlflow.set_tracking_uri(stores.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["board"])
    runs = runs[runs["tags.wb.role"] != "study"]
    for label in ("FM", "half"):
        row = next(v for k, v in rows.items() if k.replace("**", "").startswith(label))
        mine = runs[runs["tags.wb.axis.ratio"] == label]
        for metric in ("precision_1nfe", "transport_1nfe", "uerr"):
            assert math.isclose(float(row[header.index(metric)]), mine[f"metrics.{metric}"].mean(), rel_tol=2e-3)
    exact = rows["_reference: exact map_"]
    assert float(exact[header.index("precision_1nfe")]) == 1.0 and float(exact[header.index("transport_1nfe")]) == 0.0
    assert "Bar for a model that has learned the data: precision_1nfe >= 0.9" in section
    assert "precision_1nfe >= 0.9" in section and "0 of 2 settings meet it" in section  # 30 steps learn nothing


def test_runs_recorded_under_another_config_hash_are_matched_by_settings_and_seed(store, tmp_path):
    """A config field added after a study ran changes every config hash; the parent run's study file is
    the one the runs ran, so their axis labels and seed still name their cells."""
    _, uri = store
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    fm = runs[(runs["tags.wb.axis.ratio"] == "FM") & (runs["status"] == "FINISHED")]["run_id"].tolist()
    old = {run_id: client.get_run(run_id).data.tags["wb.config_hash"] for run_id in fm}
    try:
        for run_id in fm:
            client.set_tag(run_id, "wb.config_hash", "recorded-by-an-older-schema")
        rows = table_rows(render("tiny", uri, tmp_path).read_text())
        assert rows["FM"][1].endswith("(2)")
    finally:
        for run_id, key in old.items():
            client.set_tag(run_id, "wb.config_hash", key)


def test_a_two_axis_one_seed_study_never_prints_a_seed_spread_or_a_paired_test():
    """The other axis is no replicate: each table is one setting of it, over seeds (here one), so every std is
    blank and no setting is tested, tied or separated; the settings' means are the cells' own values."""
    import tomllib

    from workbench.report.ablation import markdown_table
    from workbench.report.record import Record, axis_table, combinations
    from workbench.report.verdicts import verdict
    from workbench.study.study import parse_study

    text = tiny_study(6, "values = [0.0, 0.5]\nname = \"ratio\"").replace("seeds = [0, 1]", "seeds = [0]") + \
        '[[axes]]\nkey = "train.steps"\nvalues = [6, 12]\nname = "steps"\n'
    study = parse_study(tomllib.loads(text), Path("two.toml"))
    values = {("0.0", "6"): 0.30, ("0.0", "12"): 0.20, ("0.5", "6"): 0.25, ("0.5", "12"): 0.10}
    rows = [{"ratio": r, "steps": s, "seed": 0, "status": "finished", "metric": v, "metric_2nfe": math.nan,
             "metric_fm": math.nan, "fm_name": "", "wall": 1.0, "key": r + s, "run_id": "x", "end": 0, "commit": "c"}
            for (r, s), v in values.items()]
    record = Record(study, pd.DataFrame(rows), client=None)
    assert combinations(record, 0) == [{"steps": "6"}, {"steps": "12"}]
    for axis_index, axis in enumerate(study.axes):
        for within in combinations(record, axis_index):
            table = axis_table(record, axis_index, within)
            assert table["n"].tolist() == [1, 1] and table["std"].isna().all() and table["p_holm"].isna().all()
            key = {**within}
            assert table["mean"].tolist() == [values[(key.get("ratio", label), key.get("steps", label))]
                                              for label in axis.labels]
            text = markdown_table(table, study.metric) + verdict(table)
            assert "± – (1)" in text and "Tied" not in text and "worse than the best at p" not in text
            assert "Not tested against the best (n too small" in text
    pooled = axis_table(record, 0)  # what the report no longer prints for a study of several axes
    assert pooled["n"].tolist() == [2, 2]


def test_a_run_that_finished_blown_up_is_shown_as_diverged_and_left_out_of_the_statistics(store, monkeypatch):
    """A finished run scoring above 10x the prior's logged score is no result: its cell counts as diverged and
    its setting's mean, n and test leave it out. The store's worst finished run is put just above the line."""
    from workbench.report import record as record_module
    from workbench.report import stats
    from workbench.report.record import axis_table, load_record

    _, uri = store
    before = load_record("tiny", uri)
    done = before.finished()
    worst = done.loc[done["metric"].idxmax()]
    prior = worst["metric"] / stats.BLOWN_UP * 0.999
    assert not (done["metric"].drop(worst.name) > stats.BLOWN_UP * prior).any(), "the store has a tie at its worst"
    monkeypatch.setattr(record_module.queries, "references",
                        lambda client, parent: {"prior (u = 0)": {"energy": prior}})
    after = load_record("tiny", uri)
    assert after.cells.loc[worst.name, "status"] == "diverged" and len(after.finished()) == len(done) - 1
    row = axis_table(after, 0).set_index("value").loc[worst["ratio"]]
    assert row["diverged"] == 1 and row["n"] == (done["ratio"] == worst["ratio"]).sum() - 1
    assert stats.blown_up(math.nan, None) and stats.blown_up(math.inf, 1.0) and not stats.blown_up(5.0, None)
    assert stats.blown_up(10.5, 1.0) and not stats.blown_up(10.0, 1.0) and not stats.blown_up(3.0, 0.0)


def test_many_sample_pictures_go_into_figures_of_at_most_six_one_per_first_axis_value():
    from workbench.report.ablation import split_figures

    few = {f"{w} (seed 0)": Path(f"{w}.png") for w in range(6)}
    assert split_figures("samples.png", few, None) == [("samples.png", "", few)]
    labels = [f"{m}, {s} (seed 0)" for m in ("FM", "MF paper") for s in (250, 500, 1000, 2000, 4000)]
    pictures = {label: Path(f"{i}.png") for i, label in enumerate(labels)}
    figures = split_figures("samples.png", pictures, {k: f"method = {k.split(',')[0]}" for k in labels})
    assert [(f, c, len(p)) for f, c, p in figures] == [
        ("samples-fm.png", "method = FM", 5), ("samples-mf-paper.png", "method = MF paper", 5)]
    one_axis = {f"{w} (seed 0)": Path(f"{w}.png") for w in range(14)}
    figures = split_figures("samples_2nfe.png", one_axis, None)
    assert [(f, c, len(p)) for f, c, p in figures] == [
        ("samples_2nfe-part-1.png", "part 1", 6), ("samples_2nfe-part-2.png", "part 2", 6),
        ("samples_2nfe-part-3.png", "part 3", 2)]
    assert [label for _, _, p in figures for label in p] == list(one_axis)  # every picture once, in order


def test_a_pipe_inside_a_table_cell_is_escaped():
    from workbench.report import markdown

    assert markdown.row(["u(z, t, t | c)", 0.5]) == "| u(z, t, t \\| c) | 0.5 |"

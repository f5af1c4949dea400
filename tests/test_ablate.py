"""wb ablate end to end: MLflow child runs under one parent, resumable, new values only."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.schedule.ablation import trials_name
from workbench.study.study import load_study

from conftest import tiny_study


def write(path, values="[0.0, 0.5]", steps=30):
    path.write_text(tiny_study(steps, f"values = {values}"))
    return path


def children(tracking_uri=None):
    mlflow.set_tracking_uri(tracking_uri or f"sqlite:///{os.path.abspath('mlflow.db')}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    return runs[runs["tags.wb.role"] != "study"], runs[runs["tags.wb.role"] == "study"]


def test_two_workers_one_finished_child_per_cell_then_only_new_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write(tmp_path / "tiny.toml")
    result = CliRunner().invoke(app, ["ablate", str(study), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "4/4 cells finished" in result.output and " ui --tracking-uri " in result.output
    report = (tmp_path / "reports/tiny/README.md").read_text()
    assert "Report: reports/tiny/README.md" in result.output and "4/4 finished" in report
    runs, parents = children()
    assert len(parents) == 1 and len(runs) == 4
    assert set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    assert sorted(runs["tags.mlflow.runName"]) == ["ratio=0.0 seed=0", "ratio=0.0 seed=1", "ratio=0.5 seed=0",
                                                   "ratio=0.5 seed=1"]
    assert runs["metrics.energy_1nfe"].notna().all() and (runs["params.meanflow.ratio"].isin(["0.0", "0.5"])).all()
    assert runs["tags.wb.config_hash"].nunique() == 4
    # The MLflow UI opens the experiment in its model-training view; the parent row shows each setting's mean.
    client = mlflow.MlflowClient()
    assert client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"] == "custom_model_development"
    parent_metrics = client.get_run(parents["run_id"].iloc[0]).data.metrics
    for value in ("0.0", "0.5"):
        mine = runs[runs["params.meanflow.ratio"] == value]["metrics.energy_1nfe"]
        assert parent_metrics[f"energy_1nfe/{value}"] == pytest.approx(mine.mean())
    # Optuna holds each cell's settings as params (what optuna-dashboard's importance and slice views read).
    spec = load_study(study)
    trials = optuna.load_study(study_name=trials_name(spec), storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert sorted((t.params["ratio"], t.params["seed"]) for t in trials) == [("0.0", 0), ("0.0", 1), ("0.5", 0),
                                                                            ("0.5", 1)]
    assert {t.values[0] for t in trials} == set(runs["metrics.energy_1nfe"])
    assert set(optuna.importance.get_param_importances(optuna.load_study(
        study_name=trials_name(spec), storage=f"sqlite:///{tmp_path / 'optuna.db'}"))) == {"ratio", "seed"}

    again = CliRunner().invoke(app, ["ablate", str(study), "--workers", "2"])  # nothing left to run
    assert again.exit_code == 0 and len(children()[0]) == 4
    # The parent run keeps its end time (the study's wall time), and its status.
    assert children()[1][["end_time", "status"]].equals(parents[["end_time", "status"]])

    write(study, values="[0.0, 0.5, 1.0]")
    more = CliRunner().invoke(app, ["ablate", str(study), "--workers", "2"])
    assert more.exit_code == 0, more.output
    runs, parents = children()
    assert len(parents) == 1 and len(runs) == 6
    assert runs.groupby("tags.wb.config_hash").size().max() == 1
    # A new value is a new Optuna parameter space: a new Optuna study holding all 6 cells, 4 recorded from MLflow.
    trials = optuna.load_study(study_name=trials_name(load_study(study)), storage=f"sqlite:///{tmp_path / 'optuna.db'}"
                               ).trials
    assert sorted(t.params["ratio"] for t in trials) == ["0.0", "0.0", "0.5", "0.5", "1.0", "1.0"]


def test_killed_launcher_resumes_with_every_cell_exactly_once(tmp_path):
    study = write(tmp_path / "tiny.toml", values="[0.0, 0.5]", steps=150)
    env = {**os.environ, "WB_HEARTBEAT_S": "1", "WB_GRACE_S": "4"}
    command = [sys.executable, "-m", "workbench.cli", "ablate", str(study), "--workers", "1"]
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=log, stderr=log)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        # Read the stores only once the launcher has created them (its first status line):
        # opening a half-created MLflow SQLite schema from here would race its creation.
        if "[tiny]" in (tmp_path / "launcher.log").read_text():
            runs, _ = children(f"sqlite:///{tmp_path / 'mlflow.db'}")
            if len(runs) and (runs["status"] == "FINISHED").sum() >= 1 and (runs["status"] == "RUNNING").sum() >= 1:
                break
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its worker, mid-cell
    launcher.wait()
    runs, _ = children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert 1 <= (runs["status"] == "FINISHED").sum() < 4, "the kill did not land mid-study"
    time.sleep(5)  # past the heartbeat grace period: the killed trial is stale
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs, _ = children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) == 4 and finished["tags.wb.config_hash"].nunique() == 4
    assert set(runs["status"]) <= {"FINISHED", "KILLED"}


def test_bad_study_exits_2(tmp_path):
    (tmp_path / "bad.toml").write_text(
        'name = "bad"\nmetric = "x"\nseeds = [0]\n[[axes]]\nkey = "meanflow.ratio"\nvalues = [3.0]\n')
    result = CliRunner().invoke(app, ["ablate", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2 and "bad.toml" in result.output and "meanflow.ratio=3.0" in result.output
    assert not (tmp_path / "mlflow.db").exists()



def test_a_repeated_axis_value_exits_2_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rep.toml").write_text(
        'name = "rep"\nmetric = "transport_1nfe"\nseeds = [0]\n[[axes]]\nkey = "meanflow.ratio"\nvalues = [0.25, 0.25]\n')
    result = CliRunner().invoke(app, ["ablate", "rep.toml"])
    assert result.exit_code == 2
    assert result.output == ("error: rep.toml: axes[0].values: every value must be distinct (each is one setting), 0.25 "
                             "is repeated in [0.25, 0.25]\n")
    assert [p.name for p in tmp_path.iterdir()] == ["rep.toml"]

def test_dry_run_lists_cells_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["ablate", str(write(tmp_path / "tiny.toml")), "--dry-run"])
    assert result.exit_code == 0 and result.output.count("seed=") == 4
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_cells_enqueued_by_a_launcher_that_died_before_its_workers_still_run(tmp_path, monkeypatch):
    from workbench.schedule.ablation import AblationQueue
    from workbench.schedule.launcher import launch
    from workbench.schedule.queue import prepare
    from workbench.stores.urls import default_stores
    from workbench.study.study import load_study

    monkeypatch.chdir(tmp_path)
    queue = AblationQueue(load_study(write(tmp_path / "tiny.toml", values="[0.5]")), default_stores(None, None))
    prepare(queue)  # enqueued, then "killed" before any worker started
    summary = launch(queue, workers=1, progress=lambda line: None)
    assert summary.progress.complete == summary.progress.total == 2
    runs, _ = children()
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}


def test_launcher_waits_for_a_cell_another_launcher_still_runs(tmp_path, monkeypatch):
    """Two machines, one study: the launcher whose workers run out of cells first waits for the
    other's running cell, then exits with the whole study done (it exited 1, "7/8 finished")."""
    import threading

    import optuna

    from workbench.schedule.ablation import AblationQueue
    from workbench.schedule.launcher import launch
    from workbench.schedule.queue import prepare
    from workbench.stores.urls import default_stores
    from workbench.study.study import load_study

    monkeypatch.chdir(tmp_path)
    queue = AblationQueue(load_study(write(tmp_path / "tiny.toml", values="[0.5]")), default_stores(None, None))
    _, trials_study = prepare(queue)
    elsewhere = trials_study.ask()  # the other machine's worker takes one cell
    trials_study._storage.record_heartbeat(elsewhere._trial_id)
    told = []

    def other_machine():  # finishes its cell 4 s after this launcher's worker finished the other one
        while not trials_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            time.sleep(0.2)
        time.sleep(4)
        trials_study.tell(elsewhere, 0.1)
        told.append(time.time())
    thread = threading.Thread(target=other_machine)
    thread.start()
    summary = launch(queue, workers=1, progress=lambda line: None)
    returned = time.time()
    thread.join()
    assert told and returned >= told[0]
    assert summary.progress.complete == summary.progress.total == 2 and summary.progress.running == ()
    assert mlflow.get_run(summary.parent.run_id).info.status == "FINISHED"


def test_cell_whose_run_finished_before_its_trial_was_recorded_is_not_run_again(tmp_path, monkeypatch):
    """The kill can land between the MLflow run's FINISHED and Optuna's tell(): the cell is done."""
    from mlflow import MlflowClient

    from workbench.schedule.ablation import AblationQueue
    from workbench.schedule.cell import run_cell
    from workbench.schedule.launcher import launch
    from workbench.schedule.queue import prepare
    from workbench.stores.urls import default_stores
    from workbench.study.study import load_study

    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path / "tiny.toml", values="[0.5]"))
    queue = AblationQueue(study, default_stores(None, None, grace_s=1))
    parent, trials_study = prepare(queue)
    trial = trials_study.ask()  # pops the first enqueued cell, as a worker does
    trials_study._storage.record_heartbeat(trial._trial_id)
    cell = {c.key: c for c in study.cells()}[trial.user_attrs["cell"]]
    run_cell(study, cell, MlflowClient(queue.stores.tracking_uri), parent.experiment_id, parent.run_id)  # ...then killed
    time.sleep(2)  # the trial's heartbeat is now stale
    summary = launch(queue, workers=1, progress=lambda line: None)
    assert summary.progress.complete == summary.progress.total == 2 and summary.progress.failed == 0
    runs, _ = children()
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and runs["tags.wb.config_hash"].nunique() == 2


def test_a_failed_cell_queued_again_is_not_counted_failed(tmp_path):
    import optuna
    from optuna.trial import TrialState, create_trial

    from workbench.schedule.ablation import AblationQueue
    from workbench.stores.urls import default_stores
    from workbench.study.study import load_study

    study = load_study(write(tmp_path / "tiny.toml", values="[0.5]"))
    first, second = (cell.key for cell in study.cells())
    trials = optuna.create_study()
    for key in (first, second):
        trials.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"cell": key}))
    trials.enqueue_trial({}, user_attrs={"cell": first})  # re-queued by the next launch
    progress = AblationQueue(study, default_stores(f"sqlite:///{tmp_path}/o.db", f"sqlite:///{tmp_path}/m.db")).progress(trials)
    assert (progress.complete, progress.running, progress.failed, progress.diverged, progress.waiting) == (0, (), 1, 0, 1)


def test_diverged_cells_fail_with_their_reason_show_as_diverged_and_are_not_run_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(30, "values = [0.5]").replace("[[axes]]\nkey = \"meanflow.ratio\"\nvalues = [0.5]",
                                                              '[[axes]]\nkey = "optim.lr"\nvalues = [1e-3, 1e12]'))
    result = CliRunner().invoke(app, ["ablate", str(study), "--workers", "2"])
    assert result.exit_code == 1, result.output  # not every cell finished
    assert "2/4 cells finished, 2 failed (2 diverged: NaN/inf loss, not run again)" in result.output
    runs, _ = children()
    bad = runs[runs["params.optim.lr"] == "1000000000000.0"]
    assert len(bad) == 2 and set(bad["status"]) == {"FAILED"}
    assert all(reason.startswith("Diverged: loss is NaN or infinite at step ") for reason in bad["tags.wb.fail_reason"])
    page = (tmp_path / "reports/tiny/README.md").read_text()
    assert "| 1000000000000.0 | diverged (0/2) |" in page and "2/4 finished, 2 diverged" in page
    again = CliRunner().invoke(app, ["ablate", str(study), "--workers", "2", "--no-report"])
    assert again.exit_code == 1 and len(children()[0]) == 4  # the diverged cells are a result: not run again


def test_time_left_costs_each_cell_by_its_setting_and_schedules_the_rest_on_the_free_workers(tmp_path):
    import datetime

    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial, TrialState

    from workbench.schedule.ablation import time_left

    study = load_study(write(tmp_path / "tiny.toml", values="[0.0, 0.5, 1.0]"))
    cells = study.cells()  # (0.0, seed 0), (0.0, 1), (0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)
    trials_study = optuna.create_study()
    now = datetime.datetime.now()

    def add(cell, state, started_s_ago, took_s=None):
        start = now - datetime.timedelta(seconds=started_s_ago)
        trials_study.add_trial(FrozenTrial(
            number=0, trial_id=0, state=state, value=1.0 if state == TrialState.COMPLETE else None, values=None,
            datetime_start=start, datetime_complete=start + datetime.timedelta(seconds=took_s) if took_s else None,
            params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)}, user_attrs={"cell": cell.key},
            system_attrs={}, intermediate_values={}))

    add(cells[0], TrialState.WAITING, 0)
    assert time_left(study, trials_study, 2) is None  # nothing finished: no estimate
    add(cells[0], TrialState.COMPLETE, 100, 10)
    add(cells[2], TrialState.COMPLETE, 100, 30)
    add(cells[1], TrialState.RUNNING, 4)
    for cell in cells[3:]:
        add(cell, TrialState.WAITING, 0)
    add(cells[5], TrialState.FAIL, 100, 5)  # a failed trial of a queued cell costs nothing by itself
    # Setting 0.0 costs 10 s, 0.5 costs 30 s, 1.0 (none finished) the mean of all, 20 s. Two workers free
    # after 0 and 6 s (the running 0.0 cell needs 10 - 4 more); (0.5, 1) goes to the first: 30; (1.0, 0)
    # to the one free at 6: 26; (1.0, 1) to the one free at 26: 46.
    assert time_left(study, trials_study, 2, now) == pytest.approx(46, abs=1e-9)
    assert time_left(study, trials_study, 1, now) == pytest.approx(6 + 30 + 20 + 20, abs=1e-9)
    # A cell that failed and is not queued again (diverged) is not waited for.
    finished = optuna.create_study()
    for trial in trials_study.get_trials():
        if trial.user_attrs["cell"] != cells[4].key or trial.state != TrialState.WAITING:
            finished.add_trial(trial)
    assert time_left(study, finished, 1, now) == pytest.approx(6 + 30 + 20, abs=1e-9)

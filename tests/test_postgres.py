"""One study on a PostgreSQL server, from two launchers, and from a launcher and `wb worker`s through
an MLflow tracking server: what `wb ablate --storage postgresql://...` on several machines relies on.
The module starts a throwaway server (workbench/stores/servers.py: initdb + pg_ctl, 127.0.0.1, a free port,
trust authentication) and stops it at the end; it is skipped where the PostgreSQL server binaries are
not installed (Debian: apt-get install postgresql; .ci/run installs them)."""
import subprocess
import sys
import time

import optuna
import pytest
import torch

from workbench.schedule.ablation import trials_name
from workbench.stores.servers import MlflowServer, Postgres, postgres_binaries
from workbench.study.study import load_study

from conftest import needs, tiny_study


@pytest.fixture(scope="module")
def postgres():
    """A function: database name -> SQLAlchemy URL of a new, empty database on the test server."""
    needs(postgres_binaries() is not None,
          "PostgreSQL server binaries (initdb, pg_ctl) not found; Debian: apt-get install postgresql")
    server = Postgres()
    yield server.database
    server.stop()


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """An `mlflow server` on 127.0.0.1 backed by a new database on the test server, proxying artifacts
    into a folder of its own (the README's recipe for a team); yields (URL, artifacts folder)."""
    server = MlflowServer(postgres("mlflow_server"), tmp_path / "server-artifacts", tmp_path / "mlflow-server.log")
    yield server.url, server.artifacts
    server.stop()


@pytest.mark.slow
def test_two_launchers_and_a_wb_worker_run_one_study_through_an_mlflow_server(tmp_path, postgres, mlflow_server):
    """Three worker processes on one PostgreSQL storage and one MLflow server reached over HTTP, each in a
    folder of its own as on separate machines: two launchers' (`wb ablate --workers 1`; the second joins
    once the first has prepared the study) and a launcher-less `wb worker`. Every launcher waits for the
    whole study, so all three exit 0 only once every cell has finished."""
    from mlflow import MlflowClient

    storage, (tracking, server_artifacts) = postgres("optuna_server"), mlflow_server
    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(1500, "values = [0.0, 0.25, 0.5, 1.0]"))  # 8 cells of ~5 s
    stores = ["--threads", "1", "--storage", storage, "--tracking-uri", tracking]
    machines = [tmp_path / name for name in ("launcher1", "launcher2", "worker")]
    for folder in machines:
        folder.mkdir()
    logs = [(folder / "out.log").open("w") for folder in machines]
    cli = [sys.executable, "-m", "workbench.cli"]
    launcher = subprocess.Popen([*cli, "ablate", str(study), "--workers", "1", "--no-report", *stores],
                                cwd=machines[0], stdout=logs[0], stderr=logs[0])
    deadline = time.time() + 120
    while "[tiny]" not in (machines[0] / "out.log").read_text():  # prepared: the queue and the parent run exist
        assert launcher.poll() is None and time.time() < deadline, (machines[0] / "out.log").read_text()
        time.sleep(0.5)
    others = [subprocess.Popen([*cli, *command, str(study), *stores], cwd=folder, stdout=log, stderr=log)
              for command, folder, log in zip((["ablate", "--workers", "1", "--no-report"], ["worker"]), machines[1:],
                                              logs[1:])]
    codes = [p.wait(timeout=600) for p in (launcher, *others)]
    output = "".join((folder / "out.log").read_text() for folder in machines)
    assert codes == [0, 0, 0], output
    assert "View run" not in output  # MLflow's per-run URL lines are switched off

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("wb.role") == "study"]
    cells = [r for r in runs if r.data.tags.get("wb.role") != "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # Every cell finished exactly once (no second run of any config), all under the one parent.
    assert len(cells) == 8 and {r.info.status for r in cells} == {"FINISHED"}
    assert len({r.data.tags["wb.config_hash"] for r in cells}) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in cells} == {parents[0].info.run_id}
    trials = optuna.load_study(study_name=trials_name(load_study(study)), storage=storage).get_trials()
    complete = [t.user_attrs["cell"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(complete) == sorted(r.data.tags["wb.config_hash"] for r in cells)
    # All three trained (each worker process tags its runs with its host and pid).
    per_worker = {w: sum(r.data.tags["wb.worker"] == w for r in cells) for w in {r.data.tags["wb.worker"] for r in cells}}
    print("cells per worker:", sorted(per_worker.values()))
    assert len(per_worker) == 3, per_worker
    # Nothing lost: every curve has all its rows; the artifacts went through the server into its folder.
    for run in cells:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(10, 1501, 10))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert {"config.json", "ema.pt", "eval.json", "samples.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    weights = torch.load(client.download_artifacts(cells[0].info.run_id, "ema.pt", str(tmp_path)), weights_only=True)
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert len(list(server_artifacts.rglob("ema.pt"))) == 8
    assert not any((folder / "mlartifacts").exists() for folder in machines)


def test_a_postgres_url_without_its_driver_exits_2_naming_the_extra(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed: importing it fails
    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(5, "values = [0.5]"))
    result = CliRunner().invoke(app, ["ablate", str(study), "--storage", "postgresql://db-host/optuna"])
    assert result.exit_code == 2
    assert "--storage postgresql://db-host/optuna: its database driver 'psycopg' is not installed" in result.output
    assert ".[postgres]" in result.output
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlartifacts").exists()


@pytest.mark.slow
def test_two_launchers_share_one_search_and_run_n_trials_in_all(tmp_path, postgres):
    from mlflow import MlflowClient

    storage, tracking = postgres("optuna_search"), postgres("mlflow_search")
    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(1000, "values = [0.5]").split("[[axes]]")[0] + (
        '"eval.every" = 500\n[search]\ntrials = 5\nsampler = "random"\npruner = "none"\nseeds = [0]\n[search.space]\n'
        '"meanflow.ratio" = {low = 0.0, high = 1.0}\n'))
    command = [sys.executable, "-m", "workbench.cli", "search", str(study), "--workers", "1", "--threads", "1",
               "--storage", storage, "--tracking-uri", tracking, "--no-report"]
    logs = [(tmp_path / f"machine{i}.log").open("w") for i in (1, 2)]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=logs[0], stderr=logs[0])
    deadline = time.time() + 120
    while "[tiny search]" not in (tmp_path / "machine1.log").read_text():
        assert first.poll() is None and time.time() < deadline, (tmp_path / "machine1.log").read_text()
        time.sleep(0.5)
    second = subprocess.Popen(command, cwd=tmp_path, stdout=logs[1], stderr=logs[1])
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0, \
        (tmp_path / "machine1.log").read_text() + (tmp_path / "machine2.log").read_text()

    trials = optuna.load_study(study_name="tiny.search", storage=storage).get_trials()
    mine = [t for t in trials if t.user_attrs.get("queued")]
    assert len(mine) == 5 and {t.state for t in mine} == {optuna.trial.TrialState.COMPLETE}
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`wb.trial` != ''")
    assert sorted(int(r.data.tags["wb.trial"]) for r in runs) == sorted(t.number for t in mine)
    assert len({r.data.tags["wb.worker"] for r in runs}) == 2  # both machines trained

"""Faults a cluster inflicts on a study, injected one at a time: two workers racing for one queued cell,
a launcher told to stop (SIGTERM, SIGINT), a tracking store that drops out mid-run, a full disk, an
artifact upload that fails; and workers without a launcher (a job array). Each ends with every cell
finished exactly once and nothing recorded lost."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from optuna.storages import RDBStorage

from workbench.ablate import ClaimingStorage, trials_name

from conftest import tiny_study, torch_threads


def _claim_all(url: str, storage_class, workers: int = 4) -> list[str]:
    """Every worker asks for trials until none is queued; returns the cells claimed (one entry per claim)."""
    claimed, lock = [], threading.Lock()

    def work():
        study = optuna.load_study(study_name="race", storage=storage_class(url))
        while "cell" in (trial := study.ask()).user_attrs:
            with lock:
                claimed.append(trial.user_attrs["cell"])

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claimed


@pytest.mark.parametrize("storage_class", [RDBStorage, ClaimingStorage])
def test_a_queued_cell_is_claimed_by_one_worker_only_on_sqlite(tmp_path, monkeypatch, storage_class):
    """SQLite ignores SELECT ... FOR UPDATE: with the window between a claim's read and its write widened,
    Optuna's own storage hands one queued trial to several workers (the control), the workbench's never."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="race", storage=ClaimingStorage(url))
    for i in range(6):
        study.enqueue_trial({}, user_attrs={"cell": f"c{i}"})
    read_then_write = RDBStorage.check_trial_is_updatable  # called between the claim's read and its write

    def slow(self, trial_id, state):
        time.sleep(0.05)
        return read_then_write(self, trial_id, state)

    monkeypatch.setattr(RDBStorage, "check_trial_is_updatable", slow)
    claimed = _claim_all(url, storage_class)
    if storage_class is RDBStorage:
        assert len(claimed) > len(set(claimed)), "the race did not show: the test cannot see the fix"
    else:
        assert sorted(claimed) == [f"c{i}" for i in range(6)]  # each cell once


def _launch(tmp_path, study, workers=2, extra_env=None):
    env = {**os.environ, "WB_HEARTBEAT_S": "1", "WB_GRACE_S": "4", **(extra_env or {})}
    command = [sys.executable, "-m", "workbench.cli", "ablate", str(study), "--workers", str(workers), "--no-report"]
    log = (tmp_path / "launcher.log").open("w")
    return command, env, subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=log,
                                          stderr=log)


def _checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=False)["step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _runs(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    return runs[runs["tags.wb.role"] != "study"], runs[runs["tags.wb.role"] == "study"]


@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the launcher", "SIGINT to its process group (Ctrl-C)"])
def test_a_stopped_launcher_checkpoints_its_cells_and_a_rerun_continues_them(tmp_path, signum, to_group):
    from mlflow import MlflowClient

    from workbench.studies import load_study
    from workbench.train import train

    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(1500, "values = [0.5]", '"train.checkpoint_every" = 100'))
    cells = load_study(study).cells()
    folders = [tmp_path / "wb-cells" / cell.key / "run" for cell in cells]
    command, env, launcher = _launch(tmp_path, study)
    deadline = time.time() + 120
    while time.time() < deadline and not all(_checkpoint_step(f / "checkpoint.pt") >= 100 for f in folders):
        time.sleep(0.2)
    asked = time.time()
    (os.killpg if to_group else os.kill)(launcher.pid, signum)
    assert launcher.wait(timeout=60) == 128 + signum
    took = time.time() - asked
    output = (tmp_path / "launcher.log").read_text()
    assert "Traceback" not in output and f"stopped ({signal.Signals(signum).name})" in output, output
    # the rerun command as this launcher was started (python -m workbench.cli here; wb or .venv/bin/wb from a shell)
    assert f"run `{Path(sys.executable).name} -m workbench.cli ablate {study}` again to continue" in output, output

    runs, parents = _runs(tmp_path)
    assert parents["status"].tolist() == ["KILLED"] and set(runs["status"]) == {"KILLED"} and len(runs) == 2, output
    saved = {}
    for cell, folder in zip(cells, folders):
        run = runs[runs["tags.wb.config_hash"] == cell.key].iloc[0]
        step = _checkpoint_step(folder / "checkpoint.pt")
        assert 100 <= step < 1500, "the stop did not land mid-cell"
        # The checkpoint is of the step the stop landed in: no step is lost.
        assert run["tags.wb.fail_reason"] == f"Interrupted: stopped on request at step {step}, checkpoint saved; " \
                                             "a rerun continues from it"
        saved[cell.key] = step
    print(f"stopped within {took:.1f} s at steps {sorted(saved.values())}")
    if signum == signal.SIGTERM:
        return  # what a rerun does with the checkpoints does not depend on the signal: the Ctrl-C case checks it

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs, parents = _runs(tmp_path)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and set(runs["tags.wb.attempts"]) == {"2"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in runs["run_id"]:
        steps = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert sorted(steps) == list(range(10, 1501, 10))  # no gap, no duplicated step
    first = runs[runs["tags.wb.config_hash"] == cells[0].key]["run_id"].iloc[0]
    ema = torch.load(client.download_artifacts(first, "ema.pt", str(tmp_path)), weights_only=False)
    with torch_threads(max(1, (os.cpu_count() or 1) // 2)):  # as each of the two workers trained
        reference = train(cells[0].config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)  # bit for bit, as if never stopped


class FlakyClient:
    """An MlflowClient whose store drops out: from the `first`-th log_batch call on, for `calls` calls
    (None: for good), every call into the store raises ConnectionError."""

    def __init__(self, client, first: int, calls: int | None):
        self.client, self.first, self.calls, self.batches, self.refused = client, first, calls, 0, 0

    def _down(self) -> bool:
        return self.batches >= self.first and (self.calls is None or self.batches < self.first + self.calls)

    def log_batch(self, *args, **kwargs):
        self.batches += 1
        if self._down():
            self.refused += 1
            raise ConnectionError("connection refused (injected)")
        return self.client.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        call = getattr(self.client, name)
        if not callable(call):
            return call

        def guarded(*args, **kwargs):
            if self.calls is None and self._down():
                raise ConnectionError("connection refused (injected)")
            return call(*args, **kwargs)
        return guarded


def _cell_setup(tmp_path, steps=300):
    from mlflow import MlflowClient

    from workbench import tracking
    from workbench.studies import load_study

    path = tmp_path / "tiny.toml"
    path.write_text(tiny_study(steps, "values = [0.5]", '"train.checkpoint_every" = 50').replace(
        "seeds = [0, 1]", "seeds = [0]"))
    study = load_study(path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracking.experiment_id(client, study.name, (tmp_path / "mlartifacts").as_uri())
    parent = tracking.parent_run(client, experiment, study.name, "", path.read_text())
    return study, study.cells()[0], client, experiment, parent


def _loss_steps(client, run_id):
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_a_store_that_drops_out_for_a_while_is_retried_with_backoff_and_loses_no_value(tmp_path, monkeypatch):
    from workbench import tracking
    from workbench.runs import run_cell

    pauses = []
    monkeypatch.setattr(tracking, "_sleep", pauses.append)
    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    flaky = FlakyClient(client, first=3, calls=4)
    run_cell(study, cell, flaky, experiment, parent, cells_dir=str(tmp_path / "wb-cells"))
    assert flaky.refused == 4 and pauses == [1.0, 2.0, 4.0, 8.0]  # each refusal waited for, doubling
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FINISHED" and _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    assert len(client.get_metric_history(run.info.run_id, study.metric)) == 1


def test_a_store_that_stays_away_fails_the_cell_keeps_its_checkpoint_and_a_rerun_logs_the_rest(tmp_path, monkeypatch):
    from workbench import tracking
    from workbench.runs import run_cell
    from workbench.train import CHECKPOINT, train

    pauses = []
    monkeypatch.setattr(tracking, "_sleep", pauses.append)
    monkeypatch.setenv("WB_TRACKING_RETRY_S", "20")
    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    cells = tmp_path / "wb-cells"
    with pytest.raises(tracking.TrackingLost, match="did not take .* metric values .* for 20 s .*ConnectionError"):
        run_cell(study, cell, FlakyClient(client, first=4, calls=None), experiment, parent, cells_dir=str(cells))
    assert sum(pauses) == 20  # bounded: 1 + 2 + 4 + 8 + 5 s, then the cell fails
    kept = torch.load(cells / cell.key / "run" / CHECKPOINT, weights_only=False)["step"]
    (run,) = tracking.child_runs(client, parent)
    logged = _loss_steps(client, run.info.run_id)
    assert 0 < kept < 300 and logged[-1] >= kept  # every value up to the checkpoint is in the store
    assert run.info.status == "RUNNING"  # the store was away: the next launch marks it (its trial failed)

    run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))  # the store is back
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.ATTEMPTS] == "2"
    assert _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))  # no gap, no duplicated step
    ema = torch.load(client.download_artifacts(run.info.run_id, "ema.pt", str(tmp_path)), weights_only=False)
    reference = train(cell.config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_at_a_checkpoint_fails_the_cell_keeps_the_last_checkpoint_and_a_rerun_completes(tmp_path,
                                                                                                   monkeypatch):
    from workbench import tracking
    from workbench.runs import run_cell
    from workbench.train import CHECKPOINT, train

    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    cells = tmp_path / "wb-cells"
    save, saves = torch.save, []

    def fills_the_disk(state, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:  # the third checkpoint (step 150): half written, then the disk is full
            Path(path).write_bytes(b"\0" * 1000)
            _disk_full()
        return save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(OSError, match="No space left"):
        run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))
    monkeypatch.setattr(torch, "save", save)
    folder = cells / cell.key / "run"
    assert torch.load(folder / CHECKPOINT, weights_only=False)["step"] == 100  # intact, the last good one
    assert not (folder / "checkpoint.tmp").exists()
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAIL_REASON] == "OSError: [Errno 28] No space left on device"

    run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))  # space freed: the rerun completes
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FINISHED" and _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    ema = torch.load(client.download_artifacts(run.info.run_id, "ema.pt", str(tmp_path)), weights_only=False)
    reference = train(cell.config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)


def test_a_failed_artifact_upload_fails_the_cell_and_a_rerun_uploads_without_training_again(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from workbench import tracking
    from workbench.runs import run_cell

    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    cells = tmp_path / "wb-cells"
    monkeypatch.setattr(MlflowClient, "log_artifact", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))
    monkeypatch.undo()
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags[tracking.FAIL_REASON]
    assert (cells / cell.key / "run" / "checkpoint.pt").is_file()  # trained to the end; kept

    metrics = run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.ATTEMPTS] == "2"
    assert {"ema.pt", "eval.json", "config.json", "samples.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    scores = client.get_metric_history(run.info.run_id, study.metric)
    assert [(m.step, m.value) for m in scores] == [(300, metrics[study.metric])]  # logged once, same value


def test_a_killed_worker_is_found_by_heartbeat_and_its_cell_continues_from_its_checkpoint(tmp_path):
    """SIGKILL to one worker mid-cell (an OOM kill, a lost node): the launcher's other worker, or a
    replacement it starts, continues the cell in its MLflow run; the study ends with every cell finished
    once and no run left RUNNING."""
    from mlflow import MlflowClient

    from workbench.studies import load_study

    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(1500, "values = [0.5]", '"train.checkpoint_every" = 100'))
    cells = load_study(study).cells()
    command, env, launcher = _launch(tmp_path, study)
    client, victim, deadline = None, None, time.time() + 120
    while time.time() < deadline and victim is None:
        time.sleep(0.2)
        for cell in cells:
            if _checkpoint_step(tmp_path / "wb-cells" / cell.key / "run" / "checkpoint.pt") >= 200:
                victim = cell
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    (run,) = [r for r in client.search_runs([experiment]) if r.data.tags.get("wb.config_hash") == victim.key]
    os.kill(int(run.data.tags["wb.worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    killed_at = max(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    kept = _checkpoint_step(tmp_path / "wb-cells" / victim.key / "run" / "checkpoint.pt")
    assert launcher.wait(timeout=300) == 0, (tmp_path / "launcher.log").read_text()
    print(f"killed at step >= {killed_at}, continued from the checkpoint of step {kept}")

    runs, parents = _runs(tmp_path)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and parents["status"].tolist() == ["FINISHED"]
    resumed = runs[runs["tags.wb.config_hash"] == victim.key].iloc[0]
    assert resumed["run_id"] == run.info.run_id and resumed["tags.wb.attempts"] == "2"
    for run_id in runs["run_id"]:
        assert _loss_steps(client, run_id) == list(range(10, 1501, 10))  # no gap, no duplicated step
    trials = optuna.load_study(study_name=trials_name(load_study(study)), storage=f"sqlite:///{tmp_path / 'optuna.db'}"
                               ).get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]  # the dead attempt, failed


def test_a_cell_whose_machine_is_lost_continues_on_another_from_its_uploaded_checkpoint(tmp_path, monkeypatch):
    """--share-checkpoints: the first machine's disk fills at the third checkpoint and its cell folder is
    then gone with the machine; another machine (another cells folder) continues from the checkpoint the
    first uploaded, in the same MLflow run, ending as if never stopped."""
    import shutil

    from workbench import tracking
    from workbench import train as train_module
    from workbench.runs import run_cell
    from workbench.train import train

    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    save, saves, restore = torch.save, [], train_module._restore

    def fills_the_disk(state, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:
            _disk_full()
        return save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(OSError):
        run_cell(study, cell, client, experiment, parent, cells_dir=str(tmp_path / "machine-a"), share_checkpoints=True)
    monkeypatch.setattr(torch, "save", save)
    shutil.rmtree(tmp_path / "machine-a")

    restored = []
    monkeypatch.setattr(train_module, "_restore", lambda *a: restored.append(restore(*a)) or restored[-1])
    run_cell(study, cell, client, experiment, parent, cells_dir=str(tmp_path / "machine-b"), share_checkpoints=True)
    assert restored == [100]  # the first machine's last checkpoint before the fault
    (run,) = tracking.child_runs(client, parent)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.ATTEMPTS] == "2"
    assert _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    ema = torch.load(client.download_artifacts(run.info.run_id, "ema.pt", str(tmp_path)), weights_only=False)
    reference = train(cell.config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)
    assert torch.load(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", str(tmp_path / "c")),
                      weights_only=False)["step"] == 300  # the run keeps its last checkpoint



def test_launcherless_workers_share_a_prepared_study_each_cell_once(tmp_path):
    """A job array: `wb ablate --prepare-only` once, then `wb worker` processes that take cells until none is
    left and exit 0; the last one out ends the parent run."""
    study = tmp_path / "tiny.toml"
    study.write_text(tiny_study(60, "values = [0.0, 0.5]"))
    env = {**os.environ, "WB_HEARTBEAT_S": "1", "WB_GRACE_S": "4"}
    wb = [sys.executable, "-m", "workbench.cli"]
    missing = subprocess.run(wb + ["worker", str(study)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "is not prepared" in missing.stderr and "--prepare-only" in missing.stderr
    prepared = subprocess.run(wb + ["ablate", str(study), "--prepare-only"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    assert prepared.returncode == 0 and "prepared: 4 cells queued, 0 finished" in prepared.stdout, prepared.stderr
    workers = [subprocess.Popen(wb + ["worker", str(study), "--threads", "1"], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all("nothing left to take" in out for out, _ in outputs)
    runs, parents = _runs(tmp_path)
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"} and runs["tags.wb.config_hash"].nunique() == 4
    assert parents["status"].tolist() == ["FINISHED"]

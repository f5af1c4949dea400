"""Faults of the stores a study runs on, injected one at a time: two workers racing for one queued cell, a
tracking store that drops out mid-run, a full disk, an artifact upload that fails, a lost machine. Each ends
with every cell finished exactly once and nothing recorded lost. Stopped and killed launchers and workers,
for ablations and searches alike: tests/test_queues.py."""
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RDBStorage

from workbench.stores.trials import ClaimingStorage

from conftest import tiny_study


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

    from workbench.stores import layout
    from workbench.study.study import load_study

    path = tmp_path / "tiny.toml"
    path.write_text(tiny_study(steps, "values = [0.5]", '"train.checkpoint_every" = 50').replace(
        "seeds = [0, 1]", "seeds = [0]"))
    study = load_study(path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = layout.experiment_id(client, study.name, (tmp_path / "mlartifacts").as_uri())
    parent = layout.parent_run(client, experiment, study.name, "", path.read_text())
    return study, study.cells()[0], client, experiment, parent


def _loss_steps(client, run_id):
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_a_store_that_drops_out_for_a_while_is_retried_with_backoff_and_loses_no_value(tmp_path, monkeypatch):
    from workbench.schedule.cell import run_cell
    from workbench.stores import layout, tracker

    pauses = []
    monkeypatch.setattr(tracker, "_sleep", pauses.append)
    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    flaky = FlakyClient(client, first=3, calls=4)
    run_cell(study, cell, flaky, experiment, parent, cells_dir=str(tmp_path / "wb-cells"))
    assert flaky.refused == 4 and pauses == [1.0, 2.0, 4.0, 8.0]  # each refusal waited for, doubling
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FINISHED" and _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    assert len(client.get_metric_history(run.info.run_id, study.metric)) == 1


def test_a_store_that_stays_away_fails_the_cell_keeps_its_checkpoint_and_a_rerun_logs_the_rest(tmp_path, monkeypatch):
    from workbench.run.checkpoint import CHECKPOINT
    from workbench.run.train import train
    from workbench.schedule.cell import run_cell
    from workbench.stores import layout, tracker

    pauses = []
    monkeypatch.setattr(tracker, "_sleep", pauses.append)
    monkeypatch.setenv("WB_TRACKING_RETRY_S", "20")
    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    cells = tmp_path / "wb-cells"
    with pytest.raises(tracker.TrackingLost, match="did not take .* metric values .* for 20 s .*ConnectionError"):
        run_cell(study, cell, FlakyClient(client, first=4, calls=None), experiment, parent, cells_dir=str(cells))
    assert sum(pauses) == 20  # bounded: 1 + 2 + 4 + 8 + 5 s, then the cell fails
    kept = torch.load(cells / cell.key / "run" / CHECKPOINT, weights_only=False)["step"]
    (run,) = layout.child_runs(client, parent)
    logged = _loss_steps(client, run.info.run_id)
    assert 0 < kept < 300 and logged[-1] >= kept  # every value up to the checkpoint is in the store
    assert run.info.status == "RUNNING"  # the store was away: the next launch marks it (its trial failed)

    run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))  # the store is back
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FINISHED" and run.data.tags[layout.ATTEMPTS] == "2"
    assert _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))  # no gap, no duplicated step
    ema = torch.load(client.download_artifacts(run.info.run_id, "ema.pt", str(tmp_path)), weights_only=False)
    reference = train(cell.config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_at_a_checkpoint_fails_the_cell_keeps_the_last_checkpoint_and_a_rerun_completes(tmp_path,
                                                                                                   monkeypatch):
    from workbench.run.checkpoint import CHECKPOINT
    from workbench.run.train import train
    from workbench.schedule.cell import run_cell
    from workbench.stores import layout

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
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FAILED" and run.data.tags[layout.FAIL_REASON] == "OSError: [Errno 28] No space left on device"

    run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))  # space freed: the rerun completes
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FINISHED" and _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    ema = torch.load(client.download_artifacts(run.info.run_id, "ema.pt", str(tmp_path)), weights_only=False)
    reference = train(cell.config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)


def test_a_failed_artifact_upload_fails_the_cell_and_a_rerun_uploads_without_training_again(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from workbench.schedule.cell import run_cell
    from workbench.stores import layout

    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    cells = tmp_path / "wb-cells"
    monkeypatch.setattr(MlflowClient, "log_artifact", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))
    monkeypatch.undo()
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags[layout.FAIL_REASON]
    assert (cells / cell.key / "run" / "checkpoint.pt").is_file()  # trained to the end; kept

    metrics = run_cell(study, cell, client, experiment, parent, cells_dir=str(cells))
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FINISHED" and run.data.tags[layout.ATTEMPTS] == "2"
    assert {"ema.pt", "eval.json", "config.json", "samples.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    scores = client.get_metric_history(run.info.run_id, study.metric)
    assert [(m.step, m.value) for m in scores] == [(300, metrics[study.metric])]  # logged once, same value


def test_a_cell_whose_machine_is_lost_continues_on_another_from_its_uploaded_checkpoint(tmp_path, monkeypatch):
    """--share-checkpoints: the first machine's disk fills at the third checkpoint and its cell folder is
    then gone with the machine; another machine (another cells folder) continues from the checkpoint the
    first uploaded, in the same MLflow run, ending as if never stopped."""
    import shutil

    from workbench.run import checkpoint
    from workbench.run.train import train
    from workbench.schedule.cell import run_cell
    from workbench.stores import layout

    study, cell, client, experiment, parent = _cell_setup(tmp_path)
    save, saves, restore = torch.save, [], checkpoint.restore

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
    monkeypatch.setattr(checkpoint, "restore", lambda *a: restored.append(restore(*a)) or restored[-1])
    run_cell(study, cell, client, experiment, parent, cells_dir=str(tmp_path / "machine-b"), share_checkpoints=True)
    assert restored == [100]  # the first machine's last checkpoint before the fault
    (run,) = layout.child_runs(client, parent)
    assert run.info.status == "FINISHED" and run.data.tags[layout.ATTEMPTS] == "2"
    assert _loss_steps(client, run.info.run_id) == list(range(10, 301, 10))
    ema = torch.load(client.download_artifacts(run.info.run_id, "ema.pt", str(tmp_path)), weights_only=False)
    reference = train(cell.config, tmp_path / "uninterrupted", progress=False).ema.state_dict()
    assert all(torch.equal(ema[k], reference[k]) for k in reference)
    assert torch.load(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", str(tmp_path / "c")),
                      weights_only=False)["step"] == 300  # the run keeps its last checkpoint

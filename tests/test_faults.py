"""Faults a cluster inflicts on a study, injected one at a time: two workers racing for one queued cell,
a launcher told to stop (SIGTERM, SIGINT), a tracking store that drops out mid-run, a full disk, an
artifact upload that fails. Each ends with every cell finished exactly once and nothing recorded lost."""
import threading
import time

import optuna
import pytest
from optuna.storages import RDBStorage

from workbench.ablate import ClaimingStorage


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

"""Faults a cluster inflicts on a study, for both queues (an ablation's cells, a search's trials) over the one
worker loop: a launcher stopped by SIGTERM or Ctrl-C, a launcher SIGKILLed with its worker, one worker
SIGKILLed, workers without a launcher (a job array), a run its dead worker left RUNNING. Each ends with every
cell and every trial finished once, no run left RUNNING, and a continued run equal, bit for bit, to one never
stopped."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow import MlflowClient

from workbench.config import RunConfig
from workbench.run.train import train

from conftest import tiny_study, torch_threads

KINDS = ["ablate", "search"]
SEARCH = '[search]\ntrials = {trials}\nsampler = "random"\npruner = "none"\n[search.space]\n' \
         '"meanflow.ratio" = {{low = 0.1, high = 1.0}}\n'


def write(tmp_path: Path, kind: str, steps: int, units: int, seeds=(0, 1), extra: str = "") -> Path:
    """A tiny study of `units` cells (an ablation: units / len(seeds) settings of meanflow.ratio) or `units`
    trials (a search), each run on `seeds`, checkpointed every 50 steps."""
    extra = '"train.checkpoint_every" = 50\n' + extra
    if kind == "ablate":
        values = [0.25 * (i + 1) for i in range(units // len(seeds))]
        text = tiny_study(steps, f"values = {values}", extra)
    else:
        text = tiny_study(steps, "", extra).split("[[axes]]")[0] + SEARCH.format(trials=units)
    path = tmp_path / "tiny.toml"
    path.write_text(text.replace("seeds = [0, 1]", f"seeds = {list(seeds)}"))
    return path


def command(kind: str, study: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", kind, str(study), "--no-report", *extra]


ENV = {**os.environ, "WB_HEARTBEAT_S": "1", "WB_GRACE_S": "4"}


def start(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    log = (tmp_path / "launcher.log").open("w")
    return subprocess.Popen(args, cwd=tmp_path, env=ENV, start_new_session=True, stdout=log, stderr=log)


def checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=False)["step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def wait_for_checkpoints(tmp_path: Path, count: int, step: int, timeout: float = 180) -> list[Path]:
    """The cell folders once `count` of them hold a checkpoint of at least `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        folders = [f for f in (tmp_path / "wb-cells").glob("*/run") if checkpoint_step(f / "checkpoint.pt") >= step]
        if len(folders) >= count:
            return folders
        time.sleep(0.2)
    raise AssertionError(f"no {count} checkpoints of step {step}: " + (tmp_path / "launcher.log").read_text())


def recorded(tmp_path: Path):
    """(child runs, parent runs) of the study, as DataFrames."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    parent = runs["tags.wb.role"].isin(["study", "search"])
    return runs[~parent], runs[parent]


def trials(tmp_path: Path, kind: str) -> list[optuna.trial.FrozenTrial]:
    from workbench.schedule.ablation import trials_name
    from workbench.study.study import load_study

    name = trials_name(load_study(tmp_path / "tiny.toml")) if kind == "ablate" else "tiny.search"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()


def assert_continued_bit_for_bit(tmp_path: Path, runs, steps: int, threads: int) -> None:
    """Each run finished once, on its second attempt, its curve without gap or repeated step, and its EMA the
    one of an uninterrupted run of its config (trained with the worker's thread count)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in runs["run_id"]:
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(10, steps + 1, 10))
        config = RunConfig.model_validate_json(Path(client.download_artifacts(run_id, "config.json", str(
            tmp_path / run_id))).read_text())
        ema = torch.load(client.download_artifacts(run_id, "ema.pt", str(tmp_path / run_id)), weights_only=False)
        with torch_threads(threads):
            reference = train(config, tmp_path / "uninterrupted" / run_id, progress=False).ema.state_dict()
        assert all(torch.equal(ema[k], reference[k]) for k in reference), run_id
    assert set(runs["tags.wb.attempts"]) == {"2"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the launcher", "SIGINT to its process group (Ctrl-C)"])
def test_a_stopped_launcher_checkpoints_its_runs_and_a_rerun_continues_them(tmp_path, kind, signum, to_group):
    """Two cells, or two search trials, on two workers, stopped mid-run: each run checkpoints at the step the
    stop landed in and ends KILLED; the rerun continues both in their MLflow runs."""
    study = write(tmp_path, kind, 1500, 2, seeds=(0, 1) if kind == "ablate" else (0,))
    launcher = start(tmp_path, command(kind, study, "--workers", "2"))
    wait_for_checkpoints(tmp_path, 2, 100)
    asked = time.time()
    (os.killpg if to_group else os.kill)(launcher.pid, signum)
    assert launcher.wait(timeout=60) == 128 + signum
    took = time.time() - asked
    output = (tmp_path / "launcher.log").read_text()
    assert "Traceback" not in output and f"stopped ({signal.Signals(signum).name})" in output, output
    # the rerun command as this launcher was started (python -m workbench.cli here; wb or .venv/bin/wb from a shell)
    assert f"run `{Path(sys.executable).name} -m workbench.cli {kind} {study}` again to continue" in output, output

    runs, parents = recorded(tmp_path)
    assert parents["status"].tolist() == ["KILLED"] and set(runs["status"]) == {"KILLED"} and len(runs) == 2, output
    for run_id, reason in zip(runs["run_id"], runs["tags.wb.fail_reason"]):
        folder = [f for f in (tmp_path / "wb-cells").glob("*/run") if (f.parent / "mlflow_run_id").read_text() == run_id]
        step = checkpoint_step(folder[0] / "checkpoint.pt")
        assert 100 <= step < 1500, "the stop did not land mid-run"
        # The checkpoint is of the step the stop landed in: no step is lost.
        assert reason == f"Interrupted: stopped on request at step {step}, checkpoint saved; a rerun continues from it"
    print(f"stopped within {took:.1f} s")
    if signum == signal.SIGTERM:
        return  # what a rerun does with the checkpoints does not depend on the signal: the Ctrl-C case checks it

    done = subprocess.run(command(kind, study, "--workers", "2"), cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after, parents = recorded(tmp_path)
    assert sorted(after["run_id"]) == sorted(runs["run_id"]) and set(after["status"]) == {"FINISHED"}
    assert parents["status"].tolist() == ["FINISHED"]
    assert_continued_bit_for_bit(tmp_path, after, 1500, max(1, (os.cpu_count() or 1) // 2))
    states = sorted(t.state.name for t in trials(tmp_path, kind))
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]  # the stopped attempts, and their copies


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_launcher_and_worker_are_continued_from_their_checkpoints_by_the_rerun(tmp_path, kind):
    """SIGKILL to the launcher and its worker (a lost job) mid-run, after a checkpoint: the rerun finds the trial
    stale, and continues it, both seeds of a search trial side by side, in the same MLflow runs, bit for bit; a
    search trial's pruner reports are kept."""
    study = write(tmp_path, kind, 600, 2 if kind == "ablate" else 1, extra='"eval.every" = 100')
    args = command(kind, study, "--workers", "1")
    launcher = start(tmp_path, args)
    wait_for_checkpoints(tmp_path, 1 if kind == "ablate" else 2, 200)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    before, _ = recorded(tmp_path)
    killed = [t for t in trials(tmp_path, kind) if t.state == optuna.trial.TrialState.RUNNING]
    time.sleep(5)  # past the heartbeat grace period: the killed trial is stale
    done = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    runs, parents = recorded(tmp_path)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and parents["status"].tolist() == ["FINISHED"]
    continued = runs[runs["run_id"].isin(before[before["status"] == "RUNNING"]["run_id"])]
    assert len(continued) >= 1 and not (tmp_path / "wb-cells").exists()
    assert_continued_bit_for_bit(tmp_path, continued, 600, os.cpu_count() or 1)
    if kind == "search":
        (copy,) = [t for t in trials(tmp_path, kind) if t.state == optuna.trial.TrialState.COMPLETE]
        assert copy.params == killed[0].params and killed[0].intermediate_values
        assert killed[0].intermediate_values.items() <= copy.intermediate_values.items()  # its pruner reports kept


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_worker_is_found_by_heartbeat_and_its_run_continues_from_its_checkpoint(tmp_path, kind):
    """SIGKILL to one worker mid-run (an OOM kill, a lost node): the launcher's other worker, or a replacement
    it starts, continues the run in its MLflow run; the study ends with every run finished once."""
    study = write(tmp_path, kind, 1500, 2, seeds=(0, 1) if kind == "ablate" else (0,))
    launcher = start(tmp_path, command(kind, study, "--workers", "2"))
    (folder,) = wait_for_checkpoints(tmp_path, 1, 200)[:1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    victim = client.get_run((folder.parent / "mlflow_run_id").read_text())
    os.kill(int(victim.data.tags["wb.worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    assert launcher.wait(timeout=300) == 0, (tmp_path / "launcher.log").read_text()

    runs, parents = recorded(tmp_path)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and parents["status"].tolist() == ["FINISHED"]
    resumed = runs[runs["run_id"] == victim.info.run_id]
    assert resumed["tags.wb.attempts"].tolist() == ["2"]
    for run_id in runs["run_id"]:
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(10, 1501, 10))
    assert sorted(t.state.name for t in trials(tmp_path, kind)) == ["COMPLETE", "COMPLETE", "FAIL"]  # the dead attempt


@pytest.mark.parametrize("kind", KINDS)
def test_launcherless_workers_share_a_prepared_study_and_the_last_one_finishes_it(tmp_path, kind):
    """A job array: `wb ablate/search --prepare-only` once, then `wb worker` processes that take cells or trials
    until none is left and exit 0; the last one out ends the parent run, and for a search writes the
    confirmation study, the search and its confirmation naming each other in the store."""
    study = write(tmp_path, kind, 60, 4, seeds=(0, 1) if kind == "ablate" else (0,))
    wb = [sys.executable, "-m", "workbench.cli"]
    missing = subprocess.run(wb + ["worker", str(study)], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert missing.returncode == 2 and "is not prepared" in missing.stderr and f"wb {kind} " in missing.stderr
    prepared = subprocess.run(wb + [kind, str(study), "--prepare-only"], cwd=tmp_path, env=ENV, capture_output=True,
                              text=True, timeout=120)
    unit = "cells" if kind == "ablate" else "trials"
    assert prepared.returncode == 0 and f"prepared: 4 {unit} queued, 0 finished" in prepared.stdout, prepared.stderr
    workers = [subprocess.Popen(wb + ["worker", str(study), "--threads", "1"], cwd=tmp_path, env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all("nothing left to take" in out for out, _ in outputs)
    runs, parents = recorded(tmp_path)
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"} and runs["tags.wb.config_hash"].nunique() == 4
    assert parents["status"].tolist() == ["FINISHED"]
    if kind == "search":
        assert (tmp_path / "tiny-confirm.toml").is_file()  # written by whichever worker finished the search
        assert parents["tags.wb.confirmation"].tolist() == ["tiny-confirm"]
        assert parents["tags.wb.confirmation_file"].tolist() == [str(tmp_path / "tiny-confirm.toml")]
        report = subprocess.run(wb + ["report", "tiny"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
        assert f"`wb ablate {tmp_path / 'tiny-confirm.toml'}`" in (tmp_path / "reports/tiny/search.md").read_text(), \
            report.stderr
        confirm = subprocess.run(wb + ["ablate", str(tmp_path / "tiny-confirm.toml"), "--prepare-only"], cwd=tmp_path,
                                 env=ENV, capture_output=True, text=True, timeout=120)
        assert confirm.returncode == 0, confirm.stderr
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        (confirmation,) = client.search_runs([client.get_experiment_by_name("tiny-confirm").experiment_id],
                                             "tags.`wb.role` = 'study'")
        assert confirmation.data.tags["wb.confirms"] == "tiny"


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_left_running_by_a_dead_worker_ends_the_same_way_in_both_queues(tmp_path, kind, monkeypatch):
    """A worker died after its trial's run started (no checkpoint yet): the next launch fails the stale trial,
    queues its copy and ends the orphaned run KILLED, with the reason."""
    from workbench.schedule.ablation import AblationQueue
    from workbench.schedule.queue import prepare
    from workbench.schedule.search import SearchQueue
    from workbench.stores import layout
    from workbench.stores import trials as trial_attrs
    from workbench.stores.urls import default_stores
    from workbench.study.study import load_study

    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path, kind, 60, 2, seeds=(0, 1) if kind == "ablate" else (0,)))
    stores = default_stores(None, None, heartbeat_s=1, grace_s=1)
    queue = (AblationQueue if kind == "ablate" else SearchQueue)(study, stores)
    parent, trials_study = prepare(queue)
    trial = trials_study.ask()  # a worker takes a trial, starts its run, and dies
    trials_study._storage.record_heartbeat(trial._trial_id)
    client = MlflowClient(stores.tracking_uri)
    tags = {layout.PARENT: parent.run_id} | ({layout.TRIAL: str(trial.number)} if kind == "search" else {})
    orphan = layout.start_run(client, parent.experiment_id, "orphan", tags)
    trial.set_user_attr(trial_attrs.RUN_IDS, [orphan])
    time.sleep(2.5)  # the trial's heartbeat is stale
    prepare(queue)
    run = client.get_run(orphan)
    assert run.info.status == "KILLED"
    assert run.data.tags[layout.FAIL_REASON] == ("its worker stopped (no heartbeat); the trial was queued again with "
                                                 "the same params")
    assert run.data.tags.get(layout.TRIAL_STATE) == ("failed" if kind == "search" else None)
    copies = [t for t in trials_study.get_trials() if t.system_attrs.get("failed_trial") == trial.number]
    assert len(copies) == 1 and copies[0].state == optuna.trial.TrialState.WAITING

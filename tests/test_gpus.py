"""One local worker per GPU (wb ablate/search --gpus): each worker process gets its own
CUDA_VISIBLE_DEVICES, recorded with every run it trains (tags wb.gpus and wb.device)."""
import mlflow
import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.schedule import gpus
from workbench.schedule.gpus import GpuError

from conftest import tiny_study


def cells(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    return runs[runs["tags.wb.role"] != "study"]


def gpu_per_worker(runs) -> dict[str, set[str]]:
    return {worker: set(group["tags.wb.gpus"]) for worker, group in runs.groupby("tags.wb.worker")}


def test_gpu_ids_come_from_the_launchers_own_view(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpus.parse(None) == []  # no CUDA: CPU workers
    with pytest.raises(GpuError, match="--gpus all: no CUDA device is visible"):
        gpus.parse("all")
    assert gpus.parse("0,1") == ["0", "1"]  # passed through (the CLI warns that the workers use the CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a scheduler's allocation
    assert gpus.parse(None) == gpus.parse("all") == ["2", "3"]
    assert gpus.parse("3") == ["3"]
    with pytest.raises(GpuError, match="GPU 0 is not visible here; visible: 2,3"):
        gpus.parse("0")
    with pytest.raises(GpuError, match="distinct GPU ids"):
        gpus.parse("2,2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.parse("all") == ["0", "1"]
    assert [gpus.for_slot(slot, ["0", "1"]) for slot in range(4)] == ["0", "1", "0", "1"]
    assert gpus.for_slot(0, []) is None


@pytest.mark.slow
def test_each_worker_gets_its_own_gpu_id_and_records_it(tmp_path, monkeypatch):
    """The plumbing, on a CPU machine: two workers get CUDA_VISIBLE_DEVICES 3 and 5 (and train on the CPU)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "tiny.toml").write_text(tiny_study(100, "values = [0.0, 0.5]"))
    result = CliRunner().invoke(app, ["ablate", "tiny.toml", "--gpus", "3,5", "--threads", "1", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "warning: --gpus 3,5: no CUDA device is visible here" in result.output
    runs = cells(tmp_path)
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert sorted(map(sorted, gpu_per_worker(runs).values())) == [["3"], ["5"]]  # 2 workers, one id each
    assert set(runs["tags.wb.device"]) == {"cpu"}


@pytest.mark.parametrize("spec", ["all", "0,0", "x,"])
def test_a_bad_gpus_value_exits_2_before_anything_is_written(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "tiny.toml").write_text(tiny_study(300, "values = [0.0]"))
    result = CliRunner().invoke(app, ["ablate", "tiny.toml", "--gpus", spec])
    assert result.exit_code == 2 and result.output.count("error: --gpus") == 1, result.output
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlartifacts").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_worker_per_visible_gpu_each_on_its_own_device(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    count = torch.cuda.device_count()
    (tmp_path / "tiny.toml").write_text(tiny_study(300, "values = [0.0, 0.25, 0.5, 1.0]"))
    result = CliRunner().invoke(app, ["ablate", "tiny.toml", "--no-report"])  # default: one worker per GPU
    assert result.exit_code == 0, result.output
    runs = cells(tmp_path)
    assert set(runs["status"]) == {"FINISHED"}
    # Every worker sees exactly its GPU as cuda:0; together they cover the visible GPUs.
    assert all(d.startswith("cuda:0 (") for d in runs["tags.wb.device"])
    per_worker = gpu_per_worker(runs)
    assert all(len(ids) == 1 for ids in per_worker.values())
    # one worker per GPU: no two workers share one (a worker may find no cell left, so not every GPU need appear)
    ids = [i for worker_ids in per_worker.values() for i in worker_ids]
    assert len(ids) == len(set(ids)) and set(ids) <= set(gpus.visible()) and len(per_worker) <= count

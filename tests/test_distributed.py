"""Data-parallel training of one run (workbench/run/distributed.py): N processes with global batch B train
the model one process with batch B trains, on CPU with gloo.

Tolerance: the ranks average two half-batch gradients where one process averages the whole batch, so
the gradients differ by float32 rounding (~1e-7 relative). Adam divides each gradient by its running
RMS, so an entry whose gradient is near zero turns that rounding into a step of up to lr: after 20 steps
at lr 1e-3 (gradients clipped at norm 1) the MLP's parameters agree to 1.2e-7 and the U-Net's to 5.7e-5
at worst (measured), 99.98% of its entries within 1e-6; the logged losses and gradient norms agree to
1e-5 relative. The test allows 1e-6 (MLP) and 1e-3 = lr (U-Net) with >= 99.9% of entries within 1e-6. A rank that
trained on the wrong rows or skipped the averaging differs by ~lr in most entries."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.config import ConfigError, RunConfig, with_overrides
from workbench.run.stopping import STOP, Interrupted
from workbench.run.trackers import JsonlTracker
from workbench.run.train import train
from workbench.study.study import config_hash

SETTINGS = {  # MeanFlow loss at ratio 0.25, the default JVP path (dudt auto), grad clipping on
    "mlp": ["data.name=gaussians", "net.arch=mlp", "net.mlp.width=64", "net.mlp.depth=2", "train.batch_size=64"],
    # 16 channels: GroupNorm(8) over 2 channels each, so no bias is normalized away (one whose gradient
    # is exactly zero would take Adam's rounding-noise steps and disagree by up to lr per step)
    "unet": ["data.name=digits", "net.arch=unet", "net.unet.channels=16", "train.batch_size=16"],
}
COMMON = ["train.steps=20", "train.log_every=5", "train.checkpoint_every=10", "meanflow.ratio=0.25",
          "train.ema_decay=0.9", "train.device=cpu", "optim.grad_clip=1.0"]


def config(arch: str, nproc: int, *extra: str) -> RunConfig:
    return with_overrides(RunConfig(), [*COMMON, *SETTINGS[arch], f"train.nproc={nproc}", *extra])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["net"]


def rows(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_two_processes_with_batch_b_train_what_one_process_with_batch_b_trains(tmp_path, arch):
    one, two = tmp_path / "one", tmp_path / "two"
    train(config(arch, 1), one, progress=False)
    train(config(arch, 2), two, progress=False)
    a, b = weights(one), weights(two)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    close = sum(((a[k] - b[k]).abs() <= 1e-6).sum().item() for k in a) / sum(v.numel() for v in a.values())
    print(f"{arch}: max |param difference| {worst:.2e}, entries within 1e-6: {close:.5f}")
    assert worst < (1e-6 if arch == "mlp" else 1e-3) and close >= 0.999
    assert worst > 0 or arch == "mlp"  # the two really ran differently (two half-batch reductions)
    # The logged rows are global-batch means (loss, mse) and the averaged gradient's norm, as in one process.
    for x, y in zip(rows(one), rows(two), strict=True):
        for key in ("loss", "mse", "grad_norm", "weight_mean", "frac_r_neq_t"):
            assert y[key] == pytest.approx(x[key], rel=1e-5), (key, x["step"])
    # A rank that trains alone on its half (no averaging) ends far from both.
    half = with_overrides(config(arch, 1), ["train.batch_size=" + str(config(arch, 1).train.batch_size // 2)])
    train(half, tmp_path / "half", progress=False)
    c = weights(tmp_path / "half")
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 100 * worst


class StopAt(JsonlTracker):
    """Sets STOP (as SIGTERM does in a worker) once step `at` is logged."""

    def __init__(self, path: Path, at: int, resume_step=None):
        super().__init__(path, resume_step)
        self.at = at

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.at:
            STOP.set()


def test_a_stopped_two_process_run_resumes_bit_for_bit(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    cfg = config("mlp", 2)
    train(cfg, straight, progress=False)
    try:
        with pytest.raises(Interrupted) as stop:
            train(cfg, stopped, progress=False, tracker=StopAt(stopped / "metrics.jsonl", at=5))
    finally:
        STOP.clear()
    # Rank 0 saw STOP during step 6; the flag rode the gradient all-reduce, so both ranks stopped after it.
    assert stop.value.step == 6
    assert torch.load(stopped / "checkpoint.pt", weights_only=False)["step"] == 6
    train(cfg, stopped, resume=True, progress=False)
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in rows(stopped)] == [5, 10, 15, 20]


def test_wb_train_nproc_runs_under_torchrun_and_matches_the_in_process_ranks(tmp_path):
    cfg = config("mlp", 2)
    train(cfg, tmp_path / "ranks", progress=False)
    sets = sum((["--set", o] for o in [*COMMON, *SETTINGS["mlp"], "eval.num_samples=200", "eval.fm_steps=[]",
                                       "sample.num_points=100"]), [])
    result = subprocess.run([sys.executable, "-m", "workbench.cli", "train", "--nproc", "2", "--run-dir",
                             str(tmp_path / "torchrun"), *sets], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torchrun: 2 processes" in result.stderr and result.stdout.count("run folder:") == 1  # rank 0 reports
    recorded = RunConfig.model_validate_json((tmp_path / "torchrun" / "config.json").read_text())
    assert recorded.train.nproc == 2
    a, b = weights(tmp_path / "ranks"), weights(tmp_path / "torchrun")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same gloo reductions, in the same order


def test_nproc_must_divide_the_batch_and_does_not_change_a_cells_identity():
    with pytest.raises(ConfigError, match=r"train: batch_size=64 must be divisible by nproc=3"):
        with_overrides(RunConfig(), ["train.batch_size=64", "train.nproc=3"])
    with pytest.raises(ConfigError, match=r"train.nproc='0': Input should be greater than or equal to 1"):
        with_overrides(RunConfig(), ["train.nproc=0"])
    assert config_hash(config("mlp", 2)) == config_hash(config("mlp", 1))  # a rerun with 2 processes resumes it


@pytest.mark.slow
def test_a_study_cell_with_train_nproc_2_trains_in_two_processes(tmp_path, monkeypatch):
    import mlflow
    from typer.testing import CliRunner

    from workbench.cli import app

    from conftest import tiny_study, torch_threads

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(tiny_study(100, "values = [0.5]", extra_base='"train.nproc" = 2').replace(
        "seeds = [0, 1]", "seeds = [0]"))
    result = CliRunner().invoke(app, ["ablate", "tiny.toml", "--workers", "1", "--no-report"])
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    cells = runs[runs["tags.wb.role"] != "study"]
    assert len(cells) == 1 and set(cells["status"]) == {"FINISHED"} and set(cells["params.train.nproc"]) == {"2"}
    assert cells["metrics.loss"].notna().all()
    # It trained in two processes: its weights are those of the same config trained by two ranks here, bit for
    # bit, and not those of one process (whose sums round differently).
    from workbench.run.train import train
    from workbench.study.study import load_study

    client = mlflow.MlflowClient()
    recorded = torch.load(client.download_artifacts(cells["run_id"].iloc[0], "ema.pt", str(tmp_path)), weights_only=True)
    config = load_study(tmp_path / "tiny.toml").cells()[0].config
    with torch_threads(max(1, os.cpu_count() or 1)):  # as the one worker ran (its threads shared by the 2 ranks)
        two = train(config, tmp_path / "two", progress=False).ema.state_dict()
        one = train(with_overrides(config, {"train.nproc": 1}), tmp_path / "one", progress=False).ema.state_dict()
    assert all(torch.equal(recorded[k], two[k]) for k in two)
    assert not all(torch.equal(recorded[k], one[k]) for k in one)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpu_ranks_train_what_one_gpu_trains(tmp_path):
    """NCCL, one GPU per rank: the same comparison as on the CPU (the MLP's matmuls in float32: torch
    leaves TF32 off for them by default)."""
    train(config("mlp", 1, "train.device=cuda"), tmp_path / "one", progress=False)
    train(config("mlp", 2, "train.device=cuda"), tmp_path / "two", progress=False)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

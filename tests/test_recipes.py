"""The paper's recipes at test size: a CIFAR-shaped run of the official recipe (SongUNet at reduced width,
augmentation with labels, warmup, three EMAs) through wb ablate to an image score per EMA; wb sample's files
equal the images the evaluation scored."""
import json
import os

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import RunConfig, with_overrides
from workbench.evaluate.draw import generate
from workbench.evaluate.fid import to_uint8
from workbench.run.checkpoint import load_ema
from workbench.run.train import train


def cifar_like(path, n=96):
    """Random 32x32 RGB images with 10 labels (the labels only train the classifier features)."""
    g = np.random.default_rng(0)
    np.savez(path, images=g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


RECIPE_AT_TEST_SIZE = """
"data.name" = "npz"
"data.path" = "{path}"
"data.labels" = false
"data.hflip" = true
"data.augment_p" = 0.12
"net.arch" = "songunet"
"net.songunet.channels" = 16
"net.songunet.channel_mult" = [1, 2]
"net.songunet.blocks" = 1
"net.songunet.attn_resolutions" = [16]
"meanflow.ratio" = 0.75
"meanflow.t_dist" = "lognorm(-2,2)"
"meanflow.adaptive_p" = 0.75
"optim.lr" = 6e-4
"optim.warmup_steps" = 4
"train.steps" = 8
"train.batch_size" = 8
"train.log_every" = 4
"train.checkpoint_every" = 4
"train.ema_decay" = 0.9
"train.ema_decays" = [0.5]
"train.ema_every" = 2
"train.device" = "cpu"
"eval.features" = "classifier"
"eval.num_samples" = 40
"eval.nfe" = [1]
"eval.fm_steps" = []
"eval.raw" = true
"eval.cache_dir" = "{cache}"
"sample.num_images" = 4
"""


def test_official_cifar10_recipe_at_test_size_through_wb_ablate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # MLflow's system metrics, which every CUDA cell records, asked for here on the CPU, sampled every second
    monkeypatch.setenv("WB_SYSTEM_METRICS", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    base = RECIPE_AT_TEST_SIZE.format(path=cifar_like(tmp_path / "cifar.npz"), cache=tmp_path / "cache")
    (tmp_path / "recipe.toml").write_text(f'name = "recipe"\nmetric = "fid_1nfe"\nseeds = [0]\n[base]\n{base}\n'
                                          '[[axes]]\nkey = "meanflow.ratio"\nvalues = [0.0, 0.75]\n')
    result = CliRunner().invoke(app, ["ablate", str(tmp_path / "recipe.toml"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(f"sqlite:///{os.path.abspath('mlflow.db')}")
    runs = mlflow.search_runs(experiment_names=["recipe"])
    cells = runs[runs["tags.wb.role"] != "study"]
    assert len(cells) == 2 and set(cells["status"]) == {"FINISHED"}
    for name in ("fid_1nfe", "fid_1nfe_ema0.5", "fid_1nfe_raw", "kid_1nfe_ema0.5"):
        assert cells[f"metrics.{name}"].notna().all() and (cells[f"metrics.{name}"] > 0).all(), name
    assert not cells["metrics.fid_1nfe"].equals(cells["metrics.fid_1nfe_ema0.5"])  # three weights, three scores
    assert cells["metrics.system/cpu_utilization_percentage"].notna().all()
    assert (cells["metrics.images_per_s"] > 0).all()
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(cells["run_id"].iloc[0])}
    assert {"ema.pt", "ema_ema0.5.pt", "eval.json", "samples.png"} <= artifacts
    report = (tmp_path / "reports" / "recipe" / "README.md").read_text()  # says which EMA each number comes from
    assert "## fid_1nfe per kept EMA" in report and "| EMA 0.9 (`fid_1nfe`, ranked above) | EMA 0.5 (`fid_1nfe_ema0.5`)" \
        " | raw weights (`fid_1nfe_raw`) |" in report
    ema_part = report.split("per kept EMA")[1]
    row = next(line for line in ema_part.splitlines() if line.startswith("| 0.75 |"))
    assert row.count("(1)") == 3 and row.count("**") == 2


def test_wb_sample_writes_the_images_the_evaluation_scored(tmp_path):
    config = with_overrides(RunConfig(), {"data.name": "digits", "net.arch": "unet", "net.unet.channels": 8,
                                          "train.steps": 3, "train.batch_size": 8, "train.device": "cpu",
                                          "train.ema_decays": "0.5"})
    train(config, tmp_path / "run", progress=False)
    out = tmp_path / "samples.npz"
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--num", "30", "--out", str(out), "--batch", "7",
                                      "--ema", "ema0.5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with np.load(out) as written:
        assert written["arr_0"].dtype == np.uint8 and written["arr_0"].shape == (30, 8, 8, 3)
        assert written["labels"].tolist() == [i % 10 for i in range(30)]
        scored = to_uint8(generate(load_ema(tmp_path / "run", config, "ema0.5"), (1, 8, 8), (1,), (), 30, 0)["1nfe"])
        assert np.array_equal(written["arr_0"], scored.permute(0, 2, 3, 1).numpy())
    folder = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--num", "5", "--out", str(tmp_path / "pngs"),
                                      "--device", "cpu"])
    assert folder.exit_code == 0 and len(list((tmp_path / "pngs").glob("*.png"))) == 5
    assert json.loads((tmp_path / "pngs" / "samples.json").read_text())["num"] == 5
    for bad, message in ((["--ema", "ema0.7"], "keeps the EMAs"), (["--num", "0"], "--num")):
        refused = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--out", str(tmp_path / "x.npz"), *bad])
        assert refused.exit_code == 2 and message in refused.output
    assert not (tmp_path / "x.npz").exists()


def test_wb_sample_from_an_mlflow_run(tmp_path):
    config = with_overrides(RunConfig(), {"data.name": "digits", "net.arch": "unet", "net.unet.channels": 8,
                                          "train.steps": 2, "train.batch_size": 8, "train.device": "cpu"})
    result = train(config, tmp_path / "run", progress=False)
    torch.save(result.ema.state_dict(), tmp_path / "run" / "ema.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    for name in ("config.json", "ema.pt"):
        client.log_artifact(run.info.run_id, str(tmp_path / "run" / name))
    out = CliRunner().invoke(app, ["sample", run.info.run_id, "--tracking-uri", uri, "--num", "6",
                                   "--out", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    with np.load(tmp_path / "s.npz") as written:
        scored = to_uint8(generate(result.ema, (1, 8, 8), (1,), (), 6, 0)["1nfe"])
        assert np.array_equal(written["arr_0"], scored.permute(0, 2, 3, 1).numpy())
    missing = CliRunner().invoke(app, ["sample", run.info.run_id, "--tracking-uri", uri, "--ema", "ema0.5",
                                       "--out", str(tmp_path / "t.npz")])
    assert missing.exit_code == 2 and "ema_ema0.5.pt" in missing.output


@pytest.mark.parametrize("bad, message", [("train.ema_decays=0.9,0.9", "distinct"), ("train.ema_decays=1.5", "(0, 1)"),
                                          ("train.ema_every=0", "train.ema_every"), ("data.augment_p=2", "data.augment_p"),
                                          ("eval.inception_mode=tf", "eval.inception_mode")])
def test_malformed_recipe_values_exit_2_naming_the_key(tmp_path, bad, message):
    out = CliRunner().invoke(app, ["train", "--dry-run", "--set", bad])
    assert out.exit_code == 2 and message in out.output, out.output


def test_augmentation_needs_the_network_that_reads_its_labels(tmp_path):
    out = CliRunner().invoke(app, ["train", "--data", "digits", "--net", "unet", "--steps", "1", "--set",
                                   "data.augment_p=0.12", "--run-dir", str(tmp_path / "r")])
    assert out.exit_code == 2 and "songunet" in out.output and not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("bad", ["net.songunet.channel_mult=", "net.unet.channel_mult=0,2",
                                 "net.songunet.attn_resolutions=-4"])
def test_network_levels_must_be_positive(bad):
    out = CliRunner().invoke(app, ["train", "--dry-run", "--set", bad])
    assert out.exit_code == 2 and "needs one or more positive integers" in out.output, out.output

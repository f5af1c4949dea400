"""`wb` from the command line (typer.testing.CliRunner)."""
import json

from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()
TINY = ["--set", "net.mlp.width=16", "--set", "train.batch_size=32", "--set", "sample.num_points=50",
        "--set", "train.log_every=5", "--set", "train.device=cpu"]


def test_train_smoke_and_resume(tmp_path):
    result = runner.invoke(app, ["train", "--data", "moons", "--steps", "10", "--run-dir", str(tmp_path / "run"), *TINY])
    assert result.exit_code == 0, result.output
    assert "run folder" in result.output and (tmp_path / "run" / "samples.png").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["name"] == "moons"
    again = runner.invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert again.exit_code == 0, again.output
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    clash = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "run"), "--steps", "3"])
    assert clash.exit_code == 2 and "already holds a run" in clash.output
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before  # nothing recorded is lost


def test_bad_override_exits_2_and_writes_nothing(tmp_path):
    result = runner.invoke(app, ["train", "--run-dir", str(tmp_path / "run"), "--set", "meanflow.ratio=2"])
    assert result.exit_code == 2
    assert "meanflow.ratio='2'" in result.output and "less than or equal to 1" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_key_and_bad_data_exit_2(tmp_path):
    assert runner.invoke(app, ["train", "--set", "meanflow.nope=1"]).exit_code == 2
    result = runner.invoke(app, ["train", "--data", "mnist", "--set", f"data.data_dir={tmp_path}",
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "MNIST/raw" in result.output
    result = runner.invoke(app, ["train", "--net", "dit", "--run-dir", str(tmp_path / "run2")])
    assert result.exit_code == 2 and "needs images or latents" in result.output
    assert not (tmp_path / "run2").exists()


def test_resume_of_a_non_run_exits_2(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "config.json" in result.output


def test_wb_config_lists_every_config_key_and_train_help_points_at_it():
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    for key in ("meanflow.ratio", "meanflow.tangent", "net.time_cond", "meanflow.cfg_kappa", "train.ema_decay",
                "train.nproc"):
        assert key in result.output
    assert "wb config" in runner.invoke(app, ["train", "--help"]).output


def test_the_cli_starts_without_importing_torch_mlflow_or_optuna():
    """What keeps `wb --help` and every argument error fast: the heavy libraries load in the commands."""
    import subprocess
    import sys

    code = "import sys, workbench.cli; print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_dry_run_prints_config(tmp_path):
    result = runner.invoke(app, ["train", "--dry-run", "--set", "meanflow.ratio=0.5", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0 and json.loads(result.output)["meanflow"]["ratio"] == 0.5
    assert not (tmp_path / "r").exists()


def test_a_missing_test_dependency_skips_locally_and_fails_under_ci(monkeypatch):
    import pytest

    from conftest import needs

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        needs(False, "no PostgreSQL")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and no PostgreSQL"):
        needs(False, "no PostgreSQL")
    needs(True, "never said")

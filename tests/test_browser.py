"""The MLflow UI as a new user meets it, in a real browser: `wb ui` on a recorded study, opened in
headless Chromium (Debian's package; .ci/run installs it). Skipped, saying so, where no Chromium is
installed."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.stores.servers import free_port

from conftest import needs, tiny_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _chromium():
    needs(CHROMIUM is not None, "no Chromium to drive (Debian: apt-get install chromium; .ci/run installs it)")
# As root in a sandbox without a network: no sandbox, no GPU, no background connections that fail.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A recorded 4-cell study and `wb ui` serving its store; yields (URL, experiment id, folder)."""
    folder = tmp_path_factory.mktemp("ui")
    (folder / "tiny.toml").write_text(tiny_study(30, "values = [0.0, 0.5]"))
    here = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, ["ablate", "tiny.toml", "--workers", "2", "--no-report"])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("tiny")
    port, log = free_port(), (folder / "ui.log").open("w")
    started = time.time()
    server = subprocess.Popen([sys.executable, "-m", "workbench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                              stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert server.poll() is None and time.time() < started + 120, (folder / "ui.log").read_text()
            time.sleep(0.3)
    print(f"wb ui answered after {time.time() - started:.1f} s")
    yield url, experiment.experiment_id, folder
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def chromium(folder: Path, url: str, *extra: str) -> str:
    profile = folder / f"profile-{time.monotonic_ns()}"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", *extra, url],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_link_wb_ui_prints_opens_the_runs_with_the_metric_showing(ui):
    url, experiment_id, folder = ui
    printed = (folder / "ui.log").read_text()
    link = f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=wb"
    assert f"  tiny: {link}" in printed, printed
    dom = chromium(folder, link, "--dump-dom")
    chromium(folder, link, f"--screenshot={folder / 'experiment.png'}")
    print("screenshot:", folder / "experiment.png")
    # The model-training view (the GenAI one lists Sessions and Judges), every run flat (not folded under the
    # parent), and columns for the metric, each setting's mean on the parent run, the axis and the seed.
    assert "Sessions" not in dom and "Judges" not in dom
    for name in ("ratio=0.0 seed=0", "ratio=0.0 seed=1", "ratio=0.5 seed=0", "ratio=0.5 seed=1", ">tiny<"):
        assert name in dom, name
    for column in ("metrics.`energy_1nfe`", "metrics.`energy_1nfe/0.5`", "params.`meanflow.ratio`", "tags.`wb.seed`"):
        assert f'col-id="{column}"' in dom, column


def test_wb_ui_is_quiet(ui):
    url, _, folder = ui
    for _ in range(5):
        with urllib.request.urlopen(f"{url}/health", timeout=5):
            pass
    assert "GET /health" not in (folder / "ui.log").read_text()  # no line per request

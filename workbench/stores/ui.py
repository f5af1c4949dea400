"""The MLflow UI over a tracking store: one quiet local server, and each study's link into it."""
from __future__ import annotations

import os
import subprocess
import sys

from mlflow import MlflowClient

from workbench.stores.layout import view_url
from workbench.stores.urls import require_store


def study_links(tracking_uri: str, base: str) -> dict[str, str]:
    """Experiment name -> its runs in the UI at `base`, sorted by its metric."""
    require_store(tracking_uri)
    return {e.name: view_url(base, e.experiment_id) for e in MlflowClient(tracking_uri).search_experiments()
            if e.name != "Default"}


def serve(tracking_uri: str, port: int) -> int:
    """Runs the MLflow UI on 127.0.0.1:port until stopped (no per-request log, no background job runners: wb
    submits no MLflow jobs); its exit code."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--uvicorn-opts", "--log-level warning --no-access-log"]
    try:
        return subprocess.call(command, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    except KeyboardInterrupt:
        return 0

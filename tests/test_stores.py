"""Stores that cannot be reached fail at once, naming the URL and what failed, before anything is created."""
import socket

import pytest
from typer.testing import CliRunner

from workbench.cli import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize("option, url, message", [
    ("--storage", "sqlite:////no/such/folder/optuna.db", "the folder /no/such/folder does not exist"),
    ("--tracking-uri", "sqlite:////no/such/folder/mlflow.db", "the folder /no/such/folder does not exist"),
    ("--storage", "postgresql://wb@127.0.0.1:{port}/optuna", "cannot connect to the database"),
    ("--tracking-uri", "postgresql://wb@127.0.0.1:{port}/mlflow", "cannot connect to the database"),
    ("--tracking-uri", "http://127.0.0.1:{port}", "no MLflow tracking server answers there"),
    ("--storage", "nosuchdb://x/y", "unsupported scheme 'nosuchdb'; use one of sqlite://, postgresql://, mysql://"),
    ("--tracking-uri", "nosuch://x", "unsupported scheme 'nosuch'; use one of sqlite://, postgresql://, mysql://, "
                                     "mssql://, http://, https://, file://"),
    ("--tracking-uri", "mlruns", "unsupported scheme '(none)'"),
])
@pytest.mark.parametrize("command", ["ablate", "search"])
def test_an_unreachable_store_exits_2_naming_it_and_creates_nothing(tmp_path, monkeypatch, option, url, message,
                                                                   command):
    monkeypatch.chdir(tmp_path)
    url = url.format(port=free_port())
    study = "quick" if command == "ablate" else "search_toy"
    result = CliRunner().invoke(app, [command, study, option, url])
    assert result.exit_code == 2, result.output
    assert f"error: {option} {url}: {message}" in result.output
    assert not list(tmp_path.iterdir())  # no optuna.db, mlflow.db or mlartifacts

"""A throwaway PostgreSQL server and an MLflow tracking server on 127.0.0.1, as the README's team
recipe sets them up by hand: what tests/test_postgres.py and benchmarks/capacity.py run studies on.

PostgreSQL comes from the distribution's packages (Debian: apt-get install postgresql); the server
runs from a folder of its own with trust authentication on a free port, as the 'postgres' user when
this process is root (the server refuses to run as root). The MLflow server is backed by one of its
databases and proxies artifacts into a folder (--serve-artifacts), so workers on any machine upload
through it."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return next((f for f in reversed(folders) if (f / "initdb").exists() and (f / "pg_ctl").exists()), None)


class Postgres:
    """initdb + pg_ctl start in a new folder under the system's temporary folder (one the 'postgres'
    user can reach); `database(name)` creates one and returns its URL; `stop()` removes it all."""

    def __init__(self):
        binaries = postgres_binaries()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; Debian: "
                                    "apt-get install postgresql")
        folder = Path(tempfile.mkdtemp(prefix="wb-postgres-"))
        self.bin, self.folder, self.port = binaries, folder, free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(folder, "postgres")
        self._run("initdb", "-D", str(folder / "data"), "-U", "wb", "--auth=trust")
        self._run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=300", "start")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")

    def database(self, name: str) -> str:
        import psycopg  # the driver, in the postgres and test extras

        with psycopg.connect(host="127.0.0.1", port=self.port, user="wb", dbname="postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return f"postgresql://wb@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` backed by `backend` (a database URL), proxying artifacts into `artifacts`; ready
    (answering /health) when constructed. Its background job runner is off (wb submits no jobs)."""

    def __init__(self, backend: str, artifacts: Path, log: Path, workers: int = 1, timeout_s: float = 120):
        self.port, self.artifacts, self.log = free_port(), artifacts, log
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination",
                 str(artifacts), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(workers)],
                stdout=out, stderr=out, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main() -> None:
    """python -m workbench.stores.servers FOLDER: a throwaway PostgreSQL (databases optuna and mlflow) and MLflow
    server proxying artifacts into FOLDER/artifacts, on 127.0.0.1, until Ctrl-C (then the databases are
    deleted, the artifacts kept); prints the wb options that use them. For trying the team setup."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--mlflow-workers", type=int, default=2)
    folder = parser.parse_args().folder.resolve()
    postgres = Postgres()
    try:
        storage = postgres.database("optuna")
        server = MlflowServer(postgres.database("mlflow"), folder / "artifacts", folder / "mlflow-server.log",
                              workers=parser.parse_args().mlflow_workers)
        print(f"--storage {storage} --tracking-uri {server.url}\n(MLflow UI: {server.url}; Ctrl-C stops both "
              "and deletes the databases)", flush=True)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            server.stop()
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()

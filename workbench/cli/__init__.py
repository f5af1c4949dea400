"""`wb`: a thin Typer shell over the library; each command calls one library function and prints its
result. Bad input exits 2 with a message naming the problem. Commands on one model: cli/models.py; on
studies: cli/studies.py."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated

import typer

# Process-wide settings belong here, at the entry point, not in library modules.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded picture otherwise
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a 'View run' line per run on a server
os.environ.setdefault("MPLBACKEND", "Agg")  # figures are files; no display is needed or assumed
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")  # raised inside torch on import
# Optuna marks its trial heartbeat (how a dead worker's cells are found) "experimental"
warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")
warnings.filterwarnings("ignore", message=r"Argument ``heartbeat_interval`` is an experimental feature")

app = typer.Typer(help="MeanFlow Workbench: train, ablate, search and report on one-step MeanFlow models.",
                  no_args_is_help=True, rich_markup_mode=None)

# Options several commands share.
Storage = Annotated[str | None, typer.Option(metavar="URL", help="Optuna storage URL [default: sqlite:///optuna.db].")]
TrackingUri = Annotated[str | None, typer.Option(metavar="URI", help="MLflow tracking URI [default: sqlite:///mlflow.db].")]
Workers = Annotated[int | None, typer.Option(
    metavar="N", min=1, help="Local worker processes, threads split between them [default: one per GPU, else one per "
    "CPU core; measured faster than one worker with all threads, benchmarks/study_workers.py].")]
Gpus = Annotated[str | None, typer.Option(metavar="all|IDS", help=(
    "GPUs for the local workers, one worker each: all, or ids such as 0,1 (each worker's CUDA_VISIBLE_DEVICES) "
    "[default: every visible GPU on a CUDA machine, else CPU workers]; with --workers, worker i takes GPU i mod n."))]
Threads = Annotated[int | None, typer.Option(
    metavar="N", min=1, help="Torch threads per worker [default: the CPU cores split between the workers]; lower it "
    "when other launchers share the machine.")]
ShareCheckpoints = Annotated[bool, typer.Option("--share-checkpoints", help=(
    "Upload every checkpoint to the cell's MLflow run, so that a cell whose machine is lost continues on another "
    "(one upload per train.checkpoint_every steps)."))]
PrepareOnly = Annotated[bool, typer.Option("--prepare-only", help=(
    "Create the stores and queue the cells or trials, then exit; `wb worker` processes (a job array) run them."))]
NoReport = Annotated[bool, typer.Option("--no-report", help="Skip rendering the report at the end.")]
Reports = Annotated[str, typer.Option(metavar="DIR", help="Where the report goes.")]
Sets = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Config override KEY=VALUE; repeatable.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


def wb() -> str:
    """The command that runs wb as this process was run, for hints the user can paste: `wb` when that is
    on PATH, else the entry point's path (.venv/bin/wb after the Quickstart), else python -m workbench.cli."""
    import shutil
    import sys

    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("wb")
    if found and here and Path(found).resolve() == here:
        return "wb"
    if here and here.name == "wb" and here.is_file():
        return str(here.relative_to(Path.cwd())) if here.is_relative_to(Path.cwd()) else str(here)
    return f"{Path(sys.executable).name} -m workbench.cli"


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def stopped(signal_name: str, what: str, again: str) -> None:
    """The one message of a command stopped by SIGINT / SIGTERM, and its exit code (130 / 143)."""
    from workbench.run.stopping import EXIT_CODES

    typer.echo(f"\nstopped ({signal_name}): {what}; run `{again}` again to continue", err=True)
    raise typer.Exit(EXIT_CODES[signal_name])


def stores(storage: str | None, tracking_uri: str | None, share_checkpoints: bool = False):
    """The stores of a command, checked; a bad URL exits 2 before anything is created."""
    from workbench.stores.urls import StoreError, default_stores

    try:
        return default_stores(storage, tracking_uri, share_checkpoints=share_checkpoints)
    except StoreError as err:
        fail(str(err))


def print_metrics(metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        typer.echo(f"{name:16s} {value:.5f}")


from workbench.cli import models, studies  # noqa: E402,F401  (registers their commands on app)

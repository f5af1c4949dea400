"""The commands on studies: wb ablate, search, worker, calibrate, report, ui. An ablation and a search are
two queues over one launcher (workbench/schedule/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli import (
    Gpus,
    NoReport,
    PrepareOnly,
    Reports,
    ShareCheckpoints,
    Storage,
    Threads,
    TrackingUri,
    Workers,
    app,
    fail,
    stopped,
    stores,
    wb,
)

StudyName = Annotated[str, typer.Argument(metavar="STUDY", help="Study name in studies/ (e.g. quick) or a .toml path.")]


def _study(name: str):
    from workbench.study.study import StudyError, load_study

    try:
        return load_study(name)
    except StudyError as err:
        fail(str(err))


def _ended(progress, seconds: float | None = None) -> str:
    """'3/4 cells finished, 1 failed (1 diverged: ...)' and for a search the pruned ones."""
    p = progress
    return (f"{p.complete}/{p.total} {p.unit} finished" + (f", {p.pruned} pruned" if p.unit == "trials" else "")
            + f", {p.failed} failed" + (f" ({p.diverged} diverged: NaN/inf loss, not run again)" if p.diverged else "")
            + (f", {seconds / 60:.1f} min" if seconds is not None else ""))


def _run(queue, study: str, command: str, prepare_only: bool, workers, gpus, threads, render=None) -> None:
    """The launch both commands share: --prepare-only, or local workers until nothing is left; the summary,
    the page render() writes, exit 1 unless the study ended as it should."""
    from workbench.schedule import gpus as gpu_slots
    from workbench.schedule.launcher import launch, terminal_progress
    from workbench.schedule.queue import prepare

    if prepare_only:
        progress = queue.progress(prepare(queue)[1])
        typer.echo(f"prepared: {progress.waiting} {progress.unit} queued, {progress.complete} finished; run them with "
                   f"{wb()} worker {study} --storage {queue.stores.storage} --tracking-uri {queue.stores.tracking_uri}")
        raise typer.Exit(0)
    try:
        gpu_ids, workers, warning = gpu_slots.slots(gpus, workers)
    except gpu_slots.GpuError as err:
        fail(str(err))
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    summary = launch(queue, workers, progress=terminal_progress(), threads=threads, gpu_ids=gpu_ids)
    if summary.stopped_by:
        stopped(summary.stopped_by, f"{_ended(summary.progress)}, {summary.progress.interrupted} stopped at a checkpoint",
                f"{wb()} {command} {study}")
    typer.echo(_ended(summary.progress, summary.seconds))
    typer.echo(f"MLflow: {queue.stores.tracking_uri} (experiment {queue.study.name}, parent run {summary.parent.run_id})")
    typer.echo(f"Optuna: {queue.stores.storage} (study {queue.optuna_name}); dashboard: optuna-dashboard {queue.stores.storage}")
    uri = queue.stores.tracking_uri
    if uri.startswith(("http:", "https:")):
        from workbench.stores.layout import view_url

        typer.echo(f"Browse: {view_url(uri, summary.parent.experiment_id)}")
    else:
        typer.echo(f"Browse: {wb()} ui --tracking-uri {uri}  (it prints each study's link)")
    best, confirmation = summary.conclusion.get("best"), summary.conclusion.get("confirmation")
    if best is not None:
        typer.echo(f"best: trial {best.number}, {', '.join(f'{v:.5g}' for v in best.values)}: {best.params}")
    if confirmation is not None:
        typer.echo(f"Confirm: wb ablate {confirmation}  (best against the base config on fresh seeds)")
    if render is not None:
        typer.echo(f"Report: {render()}")
    if not queue.succeeded(summary.progress):
        raise typer.Exit(1)


@app.command()
def ablate(study: StudyName, workers: Workers = None, gpus: Gpus = None, threads: Threads = None, storage: Storage = None,
           tracking_uri: TrackingUri = None, share_checkpoints: ShareCheckpoints = False, prepare_only: PrepareOnly = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the table of cells and exit.")] = False,
           no_report: NoReport = False, reports: Reports = "reports") -> None:
    """Run every cell (config x seed) of a study, resumably, as MLflow child runs under one parent run."""
    spec = _study(study)
    if not spec.axes:
        fail(f"{spec.path}: no [[axes]] to ablate; it is a search: wb search {spec.name}")
    from workbench.study.describe import study_lines

    typer.echo("\n".join(study_lines(spec, cells=dry_run)))
    if dry_run:
        return
    from workbench.report.ablation import render
    from workbench.schedule.ablation import AblationQueue

    queue = AblationQueue(spec, stores(storage, tracking_uri, share_checkpoints))
    _run(queue, study, "ablate", prepare_only, workers, gpus, threads,
         None if no_report else lambda: render(spec.name, queue.stores.tracking_uri, Path(reports)))


@app.command()
def search(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study name in studies/ (one with a [search] section) "
                                         "or a .toml path.")],
    trials: Annotated[int | None, typer.Option(metavar="N", min=1, help=(
        "Trials in all [default: the study's search.trials]; a rerun adds the missing ones."))] = None,
    workers: Workers = None, gpus: Gpus = None, threads: Threads = None, storage: Storage = None,
    tracking_uri: TrackingUri = None, share_checkpoints: ShareCheckpoints = False, prepare_only: PrepareOnly = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the search space and exit.")] = False,
    no_report: NoReport = False, reports: Reports = "reports",
) -> None:
    """Optuna search over a study's [search] space: a trial per sampled config (one run per seed), pruned on
    the eval.every scores, resumable, as MLflow child runs under one parent run; writes the best config as
    a confirmation study (<study>-confirm.toml: best against the base config on fresh seeds)."""
    spec = _study(study)
    if spec.search is None:
        fail(f"{spec.path}: no [search] section; wb search needs one (see workbench/study/space.py), "
             f"or run its axes with wb ablate {spec.name}")
    from workbench.schedule.search import target
    from workbench.study.describe import search_lines

    typer.echo("\n".join(search_lines(spec, target(spec, trials))))
    if dry_run:
        return
    from workbench.report.search import render_search
    from workbench.schedule.search import SearchQueue

    queue = SearchQueue(spec, stores(storage, tracking_uri, share_checkpoints), trials)
    _run(queue, study, "search", prepare_only, workers, gpus, threads, None if no_report else lambda: render_search(
        spec.name, queue.stores.tracking_uri, queue.stores.storage, Path(reports)))


@app.command()
def worker(
    study: Annotated[str, typer.Argument(
        metavar="STUDY", help="Study name in studies/ or a .toml path, prepared with --prepare-only.")],
    storage: Storage = None, tracking_uri: TrackingUri = None,
    threads: Annotated[int | None, typer.Option(metavar="N", min=1, help="Torch threads [default: every CPU core].")] = None,
    share_checkpoints: ShareCheckpoints = False,
) -> None:
    """Take a prepared study's cells (or search trials) from its storage until none is left, then exit 0:
    one worker without a launcher, for scheduler job arrays (srun wb worker STUDY --storage ... --tracking-uri ...).
    Whoever takes the last cell or trial finishes the study. Prepare it once first: wb ablate STUDY
    --prepare-only (or wb search STUDY --prepare-only)."""
    from workbench.run import stopping
    from workbench.schedule.launcher import prepared_queue
    from workbench.schedule.queue import work

    spec = _study(study)
    queue, parent = prepared_queue(spec, stores(storage, tracking_uri, share_checkpoints))
    if parent is None:
        command = "ablate" if queue.role == "study" else "search"
        fail(f"study {spec.name!r} is not prepared in {queue.stores.tracking_uri}: run `wb {command} {study} "
             "--prepare-only` once first, with the same --storage and --tracking-uri")
    progress = work(queue, parent, threads or os.cpu_count() or 1)
    if stopping.requested:
        stopped(stopping.requested[0], f"the running {queue.unit[:-1]} stopped at a checkpoint", f"{wb()} worker {study}")
    left = f", {len(progress.running)} running elsewhere" if progress.running else ", the study finished"
    typer.echo(f"worker: nothing left to take; {_ended(progress)}{left}")


@app.command()
def calibrate(
    plan: Annotated[Path, typer.Option(metavar="FILE", help="Calibration plan: studies and candidate budgets.")] = Path(
        "studies/calibration.toml"),
    budget: Annotated[list[str] | None, typer.Option(
        metavar="NAME", help="Run only this budget (repeatable) [default: all].")] = None,
    study: Annotated[list[str] | None, typer.Option(
        metavar="NAME", help="Run only this study (repeatable) [default: all].")] = None,
    workers: Annotated[int | None, typer.Option(
        metavar="N", min=1, help="Local worker processes [default: one per CPU core].")] = None,
    storage: Storage = None, tracking_uri: TrackingUri = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Only render reports/calibration/README.md from the store.")] = False,
    reports: Annotated[Path, typer.Option(metavar="DIR", help="Reports folder.")] = Path("reports"),
) -> None:
    """Run the Table 1 studies under each candidate budget of the plan (resumably) and write
    reports/calibration/README.md: seed noise against the spread between settings, agreement with the paper."""
    from workbench.report.calibration import render_calibration
    from workbench.report.record import ReportError
    from workbench.schedule.calibrate import run_plan
    from workbench.schedule.launcher import terminal_progress
    from workbench.stores.urls import StoreError
    from workbench.study.plan import load_plan
    from workbench.study.study import StudyError

    where = stores(storage, tracking_uri)
    summaries = []
    try:
        spec = load_plan(plan)
        if not report_only:
            summaries = run_plan(spec, where, workers or os.cpu_count() or 1, budget, study, progress=terminal_progress())
            if summaries and summaries[-1][1].stopped_by:
                name, summary = summaries[-1]
                stopped(summary.stopped_by, f"{name}: {_ended(summary.progress)}, {summary.progress.interrupted} stopped "
                        "at a checkpoint", f"{wb()} calibrate")
            for name, summary in summaries:
                typer.echo(f"{name}: {_ended(summary.progress, summary.seconds)}")
        typer.echo(f"Report: {render_calibration(spec, where.tracking_uri, reports)}")
    except (ReportError, StudyError, StoreError) as err:
        fail(str(err))
    if any(s.progress.complete < s.progress.total for _, s in summaries):
        raise typer.Exit(1)


@app.command()
def report(
    studies: Annotated[list[str] | None, typer.Argument(
        metavar="STUDY...", help="Study names as recorded (e.g. table1a).")] = None,
    suite: Annotated[bool, typer.Option("--suite", help="Also write reports/table1/README.md over table1a-f and table5, "
                                        "at both operating points.")] = False,
    tracking_uri: TrackingUri = None, storage: Storage = None,
    out: Annotated[Path, typer.Option(help="Reports folder.")] = Path("reports"),
) -> None:
    """Render reports/<study>/README.md (an ablation: tables beside the paper, curves, samples) and
    reports/<study>/search.md (a search: best trials, history, importances, confirmation) from the stores."""
    from workbench.report.record import ReportError
    from workbench.report.recorded import render_recorded, render_suite_studies
    from workbench.report.suite import SUITE, render_suite
    from workbench.stores.urls import StoreError
    from workbench.study.study import StudyError

    if not studies and not suite:
        fail("name at least one study (e.g. wb report table1a) or pass --suite")
    where = stores(storage, tracking_uri)
    try:
        for name in studies or ():
            for page in render_recorded(name, where, out, wb()):
                typer.echo(f"{name}: {page}")
        for name, page in render_suite_studies(where.tracking_uri, out) if suite and not studies else ():
            typer.echo(f"{name}: {page}")
        if suite:
            typer.echo(f"suite: {render_suite(SUITE, where.tracking_uri, out)}")
    except (ReportError, StudyError, StoreError) as err:
        fail(str(err))


@app.command()
def ui(
    tracking_uri: Annotated[str, typer.Option(metavar="URI", help="MLflow tracking URI.")] = "sqlite:///mlflow.db",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI for the tracking store on 127.0.0.1: one quiet server process (no per-request
    log, no background job runners: wb submits no MLflow jobs)."""
    from workbench.stores.ui import serve, study_links

    base = f"http://127.0.0.1:{port}"
    try:
        links = study_links(tracking_uri, base)
    except ValueError as err:
        fail(str(err))
    typer.echo(f"MLflow UI on {base} (Ctrl-C stops it); each study's runs, sorted by its metric:")
    for name, link in links.items():
        typer.echo(f"  {name}: {link}")
    raise typer.Exit(serve(tracking_uri, port))

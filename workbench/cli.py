"""`wb`: a thin Typer shell over the library. Bad input exits 2 with a message naming the problem."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

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


def _stores(storage: str | None, tracking_uri: str | None, share_checkpoints: bool = False):
    """The stores of a command; WB_HEARTBEAT_S and WB_GRACE_S (seconds) tune how fast a dead worker's
    cells are found (tests shorten them)."""
    from workbench.tracking import default_stores

    return default_stores(storage, tracking_uri, int(os.environ.get("WB_HEARTBEAT_S", 10)),
                          int(os.environ.get("WB_GRACE_S", 30)), share_checkpoints)


GPUS_HELP = ("GPUs for the local workers, one worker each: all, or ids such as 0,1 (each worker's CUDA_VISIBLE_DEVICES) "
             "[default: every visible GPU on a CUDA machine, else CPU workers]; with --workers, worker i takes GPU i mod n.")


def _gpu_workers(gpus: str | None, workers: int | None) -> tuple[list[str], int]:
    """--gpus and --workers -> (the GPU of each worker slot, [] for CPU workers; the worker count)."""
    from workbench.gpus import GpuError, parse

    try:
        ids = parse(gpus)
    except GpuError as err:
        _fail(str(err))
    if gpus is not None and ids and not _cuda():
        typer.echo(f"warning: --gpus {gpus}: no CUDA device is visible here; the workers get CUDA_VISIBLE_DEVICES "
                   f"{' / '.join(ids)} and train on the CPU", err=True)
    return ids, workers or len(ids) or os.cpu_count() or 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _wb() -> str:
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


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _stopped(signal_name: str, what: str, again: str) -> None:
    """The one message of a command stopped by SIGINT / SIGTERM, and its exit code (130 / 143)."""
    from workbench.stopping import EXIT_CODES

    typer.echo(f"\nstopped ({signal_name}): {what}; run `{again}` again to continue", err=True)
    raise typer.Exit(EXIT_CODES[signal_name])


@app.command(epilog="Every config key for --set, with its default and allowed values: wb config")
def train(
    data: Annotated[Optional[str], typer.Option(metavar="NAME", help="Data set (shortcut for --set data.name=...).")] = None,
    net: Annotated[Optional[str], typer.Option(metavar="ARCH", help="Network: mlp, unet, songunet or dit (net.arch).")] = None,
    steps: Annotated[Optional[int], typer.Option(metavar="N", help="Optimizer steps (train.steps).")] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help="Training seed (train.seed).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Config override KEY=VALUE; repeatable.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Run folder [default: runs/DATA-NET-TIME].")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Continue the run in this folder from its last checkpoint.")] = None,
    nproc: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Processes training the run data-parallel on this machine, started with torchrun "
        "(train.nproc); for several machines run `torchrun ... -m workbench.cli train` yourself.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train one MeanFlow model; writes config.json, checkpoint.pt, metrics.jsonl and samples.png."""
    from workbench.config import ConfigError, RunConfig, with_overrides
    from workbench.data import DataError
    from workbench.evaluate import evaluator_for
    from workbench.fid import FeatureError
    from workbench.pictures import save_run_pictures
    from workbench.train import train as run_training

    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # > 1: this is one of the processes torchrun started
    shortcuts = {"data.name": data, "net.arch": net, "train.steps": steps, "train.seed": seed, "train.nproc": nproc}
    if ranks > 1 and nproc is None and resume is None and not any(o.startswith("train.nproc=") for o in set_ or []):
        shortcuts["train.nproc"] = ranks
    overrides = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + list(set_ or [])
    try:
        if resume is not None:
            if not (resume / "config.json").is_file():
                _fail(f"--resume {resume}: no config.json there (is it a run folder?)")
            config = RunConfig.model_validate_json((resume / "config.json").read_text())
            if overrides:
                _fail("--resume continues a run exactly as configured; drop --data/--net/--steps/--seed/--set")
            folder = resume
        else:
            config = with_overrides(RunConfig(), overrides)
            folder = run_dir or Path("runs") / f"{config.data.name}-{config.net.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
        if dry_run:
            typer.echo(config.model_dump_json(indent=2))
            return
        if config.train.nproc > 1 and ranks == 1:
            if resume is None and (folder / "config.json").exists():
                raise FileExistsError(f"{folder} already holds a run; continue it with --resume or pick another --run-dir")
            raise typer.Exit(_torchrun(config.train.nproc, ["--resume", str(folder)] if resume is not None else [
                "--run-dir", str(folder), *sum((["--set", o] for o in overrides), [])]))
        result = run_training(config, folder, resume=resume is not None, evaluator=evaluator_for(config))
        if os.environ.get("RANK", "0") != "0":
            return  # rank 0 saves the pictures and reports
        save_run_pictures(result.ema, result.data, config, result.run_dir, scored=True)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, FeatureError) as err:
        _fail(str(err))
    typer.echo(f"run folder: {result.run_dir}  (final loss {result.final_loss:.4f}, {result.steps_per_s:.1f} steps/s)")
    typer.echo(f"samples:    {result.run_dir / 'samples.png'}")
    _print_metrics(result.metrics)


def _torchrun(nproc: int, args: list[str]) -> int:
    """Runs `wb train ARGS` as nproc processes under torchrun on this machine; returns its exit code."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "workbench.cli", "train", *args]
    typer.echo(f"torchrun: {nproc} processes", err=True)
    return subprocess.call(command, env=os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))})


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by wb train.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="eval.* override KEY=VALUE; repeatable.")] = None,
) -> None:
    """Re-evaluate a saved run's EMAs (2D: energy distance, sliced W2; images: FID, KID); writes eval.json."""
    from workbench.config import RunConfig, with_overrides
    from workbench.emas import kept_weights
    from workbench.evaluate import evaluator_for
    from workbench.fid import FeatureError
    from workbench.tracking import write_eval
    from workbench.train import load_ema

    if not (run / "config.json").is_file():
        _fail(f"{run}: no config.json there (is it a run folder?)")
    overrides = list(set_ or [])
    if any(not o.startswith("eval.") for o in overrides):
        _fail("wb eval only takes eval.* overrides (the model is fixed by the run's config)")
    try:
        config = with_overrides(RunConfig.model_validate_json((run / "config.json").read_text()), overrides)
        evaluator = evaluator_for(config)
        metrics = {}
        for which in kept_weights(config):  # every EMA the run keeps (and the raw weights with eval.raw)
            scores = evaluator(load_ema(run, config, which), config.eval.num_samples)
            metrics |= {(f"{key}_{which}" if which else key): value for key, value in scores.items()}
        write_eval(run, evaluator.info, config.eval.num_samples, metrics)
    except (ValueError, FileNotFoundError, FeatureError) as err:  # ConfigError and DataError are ValueErrors
        _fail(str(err))
    _print_metrics(metrics)


@app.command()
def sample(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run folder (wb train, or wb-cells/...) or an MLflow run id.")],
    num: Annotated[int, typer.Option("--num", min=1, help="Samples to write.")] = 50_000,
    out: Annotated[Path, typer.Option("--out", help="An .npz (ADM format: uint8 NHWC arr_0, labels) or a folder "
                                      "for PNGs.")] = Path("samples.npz"),
    ema: Annotated[str, typer.Option("--ema", help="Which weights: '' (train.ema_decay's EMA), an extra EMA "
                                     "such as ema0.99995, or raw (run folders only).")] = "",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Sampling steps (1 = one-step).")] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Noise seed; sample i uses (seed, i), as eval.seed does.")] = 0,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Samples per batch on the device.")] = 500,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    vae: Annotated[Optional[str], typer.Option("--vae", help="Latent runs: the AutoencoderKL folder that decodes "
                                               "them [default: the run's eval.vae_path].")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow store of RUN when it is a "
                                                        "run id.")] = None,
) -> None:
    """Write a trained model's samples for an external evaluator: sample i from noise (seed, i) and label i mod
    classes, as wb's own evaluation draws them (labelled models sample their classes in turn)."""
    from workbench.export import export_samples, run_model
    from workbench.fid import FeatureError
    from workbench.train import resolve_device

    try:
        config, net = run_model(run, ema, tracking_uri)
        net = net.to(resolve_device(device)).eval()
        data_shape, decode = _sample_shape(config, vae)
        summary = export_samples(net, data_shape, num, out, steps, seed, batch, decode,
                                 progress=lambda done, total: typer.echo(f"\r{done}/{total}", nl=False, err=True),
                                 quantize=config.eval.quantize)
    except (ValueError, FileNotFoundError, FeatureError) as err:
        _fail(str(err))
    typer.echo(f"\nwrote {summary['num']} samples of shape {summary['shape']} to {summary['out']}")


def _sample_shape(config, vae: str | None):
    """The model's input shape and, for latents, the decoder to images."""
    from workbench.data import load_data
    from workbench.vae import decode, load_vae

    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir)
    if data.kind == "points":
        raise ValueError(f"data.name={config.data.name!r}: 2D points are no images; sample them with wb eval's pictures")
    if data.kind != "latents":
        return data.shape, None
    decoder = load_vae(vae or config.eval.vae_path)
    return data.shape, lambda z: decode(decoder.to(z.device), z, data.scale)


@app.command()
def encode(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Images, one subfolder per class (ImageNet's train/).")],
    vae: Annotated[str, typer.Option("--vae", help="AutoencoderKL folder (SD-VAE ft-MSE for the official recipe).")],
    out: Annotated[Path, typer.Option("--out", help="The latent file to write (.npz).")] = Path("data/imagenet256_latents.npz"),
    size: Annotated[int, typer.Option("--size", min=8, help="Centre-crop size in pixels (ADM's crop).")] = 256,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per batch on the device.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Encode an image folder into the latent file of data.name=latents: the posterior's mean and std (x 0.18215,
    float16) and the class labels; training draws a fresh latent from them every step."""
    from workbench.fid import FeatureError
    from workbench.train import resolve_device
    from workbench.vae import encode_folder

    try:
        summary = encode_folder(folder, vae, out, size, batch, resolve_device(device),
                                progress=lambda done, total: typer.echo(f"\r{done}/{total}", nl=False, err=True))
    except (ValueError, FeatureError) as err:
        _fail(str(err))
    typer.echo(f"\nwrote {summary['images']} latents {summary['shape']} ({summary['classes']} classes) to {summary['out']}")


def _print_metrics(metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        typer.echo(f"{name:16s} {value:.5f}")


@app.command()
def config() -> None:
    """List every config key with its default and allowed values."""
    from workbench.config import describe

    for key, default, doc in describe():
        typer.echo(f"{key} = {default!s}    # {doc}")


@app.command()
def ablate(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study name in studies/ (e.g. quick) or a path to a .toml file.")],
    workers: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Local worker processes, threads split between them [default: one per GPU, else one "
        "per CPU core; measured faster than one worker with all threads, benchmarks/study_workers.py].")] = None,
    gpus: Annotated[Optional[str], typer.Option(metavar="all|IDS", help=GPUS_HELP)] = None,
    threads: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Torch threads per worker [default: the CPU cores split between the workers]; lower "
        "it when other launchers share the machine.")] = None,
    storage: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Optuna storage URL [default: sqlite:///optuna.db].")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        metavar="URI", help="MLflow tracking URI [default: sqlite:///mlflow.db].")] = None,
    share_checkpoints: Annotated[bool, typer.Option("--share-checkpoints",
        help="Upload every checkpoint to the cell's MLflow run, so that a cell whose machine is lost continues "
             "on another (one upload per train.checkpoint_every steps).")] = False,
    prepare_only: Annotated[bool, typer.Option("--prepare-only",
        help="Create the stores and queue the cells, then exit; `wb worker` processes (a job array) run them.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the table of cells and exit.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip rendering reports/<study>/README.md at the end.")] = False,
    reports: Annotated[str, typer.Option(metavar="DIR", help="Where the report goes.")] = "reports",
) -> None:
    """Run every cell (config x seed) of a study, resumably, as MLflow child runs under one parent run."""
    from workbench.studies import StudyError, load_study

    try:
        spec = load_study(study)
    except StudyError as err:
        _fail(str(err))
    if not spec.axes:
        _fail(f"{spec.path}: no [[axes]] to ablate; it is a search: wb search {spec.name}")
    cells = spec.cells()
    expected = ("" if not spec.budget_minutes else f", about {spec.budget_minutes:g} min with 2 workers on 2 CPU cores "
                "(measured on a Xeon; up to 2x on slower CPUs)" if spec.budget_minutes < 1000
                else f", sized for GPUs: about {spec.budget_minutes / 60:,.0f} GPU-hours (its description says how "
                "that was estimated)")
    typer.echo(f"study {spec.name}: {len(cells)} cells, metric {spec.metric}{expected}")
    if dry_run:
        typer.echo("every cell (the study's [base], over wb config's defaults):")
        for key, value in spec.base.items():
            typer.echo(f"  {key} = {value}")
        typer.echo("cells:")
        for cell in cells:
            typer.echo(f"  {cell.key}  {cell.run_name}")
        return
    from workbench.ablate import run_study, terminal_progress, trials_name
    from workbench.tracking import StoreError

    try:
        stores = _stores(storage, tracking_uri, share_checkpoints)
    except StoreError as err:
        _fail(str(err))
    if prepare_only:
        from workbench.ablate import counts, prepare

        _, _, trials_study = prepare(spec, stores)
        done = counts(spec, trials_study)["done"]
        typer.echo(f"prepared: {len(cells) - done} cells queued, {done} finished; run them with "
                   f"{_wb()} worker {study} --storage {stores.storage} --tracking-uri {stores.tracking_uri}")
        return
    gpu_ids, workers = _gpu_workers(gpus, workers)
    summary = run_study(spec, stores, workers, progress=terminal_progress(), threads=threads, gpu_ids=gpu_ids)
    if summary["stopped_by"]:
        _stopped(summary["stopped_by"], f"{summary['done']}/{summary['total']} cells finished, "
                 f"{summary['interrupted']} stopped at a checkpoint", f"{_wb()} ablate {study}")
    typer.echo(f"{summary['done']}/{summary['total']} cells finished, {summary['failed']} failed"
               + (f" ({summary['diverged']} diverged: NaN/inf loss, not run again)" if summary["diverged"] else "")
               + f", {summary['seconds'] / 60:.1f} min")
    typer.echo(f"MLflow: {stores.tracking_uri} (experiment {spec.name}, parent run {summary['parent_run_id']})")
    typer.echo(f"Optuna: {stores.storage} (study {trials_name(spec)})")
    from workbench.tracking import view_url

    typer.echo(f"Browse: {view_url(stores.tracking_uri, summary['experiment_id'])}"
               if stores.tracking_uri.startswith(("http:", "https:"))
               else f"Browse: {_wb()} ui --tracking-uri {stores.tracking_uri}  (it prints each study's link)")
    if not no_report:
        from workbench.report import render

        typer.echo(f"Report: {render(spec.name, stores.tracking_uri, Path(reports))}")
    if summary["done"] < summary["total"]:
        raise typer.Exit(1)


@app.command()
def search(
    study: Annotated[str, typer.Argument(
        metavar="STUDY", help="Study name in studies/ (one with a [search] section) or a .toml path.")],
    trials: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Trials in all [default: the study's search.trials]; a rerun adds the missing ones.")] = None,
    workers: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Local worker processes [default: one per GPU, else one per CPU core].")] = None,
    gpus: Annotated[Optional[str], typer.Option(metavar="all|IDS", help=GPUS_HELP)] = None,
    threads: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Torch threads per worker [default: the CPU cores split between the workers].")] = None,
    storage: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Optuna storage URL [default: sqlite:///optuna.db].")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        metavar="URI", help="MLflow tracking URI [default: sqlite:///mlflow.db].")] = None,
    prepare_only: Annotated[bool, typer.Option("--prepare-only",
        help="Create the stores and queue the trials, then exit; `wb worker` processes (a job array) run them.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the search space and exit.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip rendering reports/<study>/search.md at the end.")] = False,
    reports: Annotated[str, typer.Option(metavar="DIR", help="Where the report goes.")] = "reports",
) -> None:
    """Optuna search over a study's [search] space: a trial per sampled config (one run per seed), pruned on
    the eval.every scores, resumable, as MLflow child runs under one parent run; writes the best config as
    a confirmation study (<study>-confirm.toml: best against the base config on fresh seeds)."""
    from workbench.search_space import dimensions, objectives
    from workbench.studies import StudyError, load_study

    try:
        spec = load_study(study)
    except StudyError as err:
        _fail(str(err))
    if spec.search is None:
        _fail(f"{spec.path}: no [search] section; wb search needs one (see workbench/search_space.py), "
              f"or run its axes with wb ablate {spec.name}")
    from workbench.search import seeds, target

    goals = ", ".join(f"{direction} {metric}" for metric, direction in objectives(spec.search, spec.metric))
    typer.echo(f"search {spec.name}: {target(spec, trials)} trials x {len(seeds(spec))} seeds {seeds(spec)}, {goals}, "
               f"sampler {spec.search.sampler}, pruner {spec.search.prune}")
    for name, param in dimensions(spec.search).items():
        span = param.choices if param.kind == "categorical" else f"{param.low:g} .. {param.high:g}" + (
            " (log)" if param.log else "") + (f" step {param.step:g}" if param.step else "")
        typer.echo(f"  {name}: {param.kind} {span}")
    if dry_run:
        return
    from workbench.search import run_search
    from workbench.tracking import StoreError

    try:
        stores = _stores(storage, tracking_uri)
    except StoreError as err:
        _fail(str(err))
    if prepare_only:
        from workbench.search import counts, prepare

        c = counts(prepare(spec, stores, trials)[2])
        typer.echo(f"prepared: {c['waiting']} trials queued, {c['complete'] + c['pruned'] + c['failed']} ended; run "
                   f"them with {_wb()} worker {study} --storage {stores.storage} --tracking-uri {stores.tracking_uri}")
        return
    from workbench.ablate import terminal_progress

    gpu_ids, workers = _gpu_workers(gpus, workers)
    summary = run_search(spec, stores, workers, trials, progress=terminal_progress(), threads=threads,
                         gpu_ids=gpu_ids)
    if summary["stopped_by"]:
        _stopped(summary["stopped_by"], f"{summary['complete'] + summary['pruned']}/{summary['target']} trials "
                 "ended, the running ones queued again with their params", f"{_wb()} search {study}")
    typer.echo(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed of "
               f"{summary['target']} trials, {summary['seconds'] / 60:.1f} min")
    best = summary["best"]
    if best is not None:
        typer.echo(f"best: trial {best.number}, {', '.join(f'{v:.5g}' for v in best.values)}: {best.params}")
    if summary["confirmation"] is not None:
        typer.echo(f"Confirm: wb ablate {summary['confirmation']}  (best against the base config on fresh seeds)")
    typer.echo(f"MLflow: {stores.tracking_uri} (experiment {spec.name}, parent run {summary['parent_run_id']})")
    typer.echo(f"Optuna: {stores.storage} (study {spec.name}.search); dashboard: optuna-dashboard {stores.storage}")
    if not no_report:
        from workbench.search_report import render_search

        typer.echo(f"Report: {render_search(spec.name, stores.tracking_uri, stores.storage, Path(reports))}")
    if summary["complete"] + summary["pruned"] + summary["failed"] < summary["target"]:
        raise typer.Exit(1)


@app.command()
def report(
    studies: Annotated[Optional[list[str]], typer.Argument(
        metavar="STUDY...", help="Study names as recorded (e.g. table1a).")] = None,
    suite: Annotated[bool, typer.Option("--suite", help="Also write reports/table1/README.md over table1a-f.")] = False,
    tracking_uri: Annotated[Optional[str], typer.Option(
        metavar="URI", help="MLflow tracking URI [default: sqlite:///mlflow.db].")] = None,
    storage: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Optuna storage URL of a search [default: sqlite:///optuna.db].")] = None,
    out: Annotated[Path, typer.Option(help="Reports folder.")] = Path("reports"),
) -> None:
    """Render reports/<study>/README.md (an ablation: tables beside the paper, curves, samples) and
    reports/<study>/search.md (a search: best trials, history, importances, confirmation) from the stores."""
    from workbench.record import ReportError
    from workbench.report import SUITE, render, render_suite
    from workbench.studies import StudyError
    from workbench.tracking import StoreError

    if not studies and not suite:
        _fail("name at least one study (e.g. wb report table1a) or pass --suite")
    try:
        stores = _stores(storage, tracking_uri)
        uri = stores.tracking_uri
        for name in studies or ():
            for page in _render_recorded(name, stores, out):
                typer.echo(f"{name}: {page}")
        for name in SUITE if suite and not studies else ():
            try:
                typer.echo(f"{name}: {render(name, uri, out)}")
            except ReportError as err:  # the suite page lists it as not run
                typer.echo(f"{name}: skipped ({err})")
        if suite:
            typer.echo(f"suite: {render_suite(SUITE, uri, out)}")
    except (ReportError, StudyError, StoreError) as err:
        _fail(str(err))


def _render_recorded(name: str, stores, out: Path) -> list[Path]:
    """The pages of what the store holds for `name`: its ablation, its search, or both."""
    from mlflow import MlflowClient

    from workbench.record import ReportError
    from workbench.report import render
    from workbench.search_report import render_search
    from workbench.tracking import find_parent, require_store

    require_store(stores.tracking_uri)
    client = MlflowClient(stores.tracking_uri)
    pages = []
    if find_parent(client, name, "study") is not None:
        pages.append(render(name, stores.tracking_uri, out))
    if find_parent(client, name, "search") is not None:
        pages.append(render_search(name, stores.tracking_uri, stores.storage, out))
    if not pages:
        from workbench.studies import available, did_you_mean

        recorded = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = (f"; recorded there: {', '.join(recorded)}{did_you_mean(name, recorded)}" if recorded
                else "; it holds no study yet")
        wb = _wb()
        run = f" (run `{wb} ablate {name}` or `{wb} search {name}` first, or pass --tracking-uri)" if name in available() else ""
        raise ReportError(f"study {name!r}: no runs in the tracking store {stores.tracking_uri}{run}{hint}")
    return pages


@app.command()
def worker(
    study: Annotated[str, typer.Argument(
        metavar="STUDY", help="Study name in studies/ or a .toml path, prepared with --prepare-only.")],
    storage: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Optuna storage URL [default: sqlite:///optuna.db].")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        metavar="URI", help="MLflow tracking URI [default: sqlite:///mlflow.db].")] = None,
    threads: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Torch threads [default: every CPU core].")] = None,
    share_checkpoints: Annotated[bool, typer.Option("--share-checkpoints",
        help="Upload every checkpoint to the cell's MLflow run (see wb ablate --share-checkpoints).")] = False,
) -> None:
    """Take a prepared study's cells (or search trials) from its storage until none is left, then exit 0:
    one worker without a launcher, for scheduler job arrays (srun wb worker STUDY --storage ... --tracking-uri ...).
    Prepare the study once first: wb ablate STUDY --prepare-only (or wb search STUDY --prepare-only)."""
    from workbench.studies import StudyError, load_study
    from workbench.tracking import StoreError

    try:
        spec = load_study(study)
        stores = _stores(storage, tracking_uri, share_checkpoints)
    except (StudyError, StoreError) as err:
        _fail(str(err))
    from mlflow import MlflowClient

    from workbench import stopping, tracking

    role, command = ("search", "search") if spec.search is not None and not spec.axes else ("study", "ablate")
    parent = tracking.find_parent(MlflowClient(stores.tracking_uri), spec.name, role)
    if parent is None:
        _fail(f"study {spec.name!r} is not prepared in {stores.tracking_uri}: run `wb {command} {study} --prepare-only` "
              "once first, with the same --storage and --tracking-uri")
    from workbench import ablate, search

    kind = search if role == "search" else ablate
    kind.worker(str(spec.path), stores, parent.info.experiment_id, parent.info.run_id, threads or os.cpu_count() or 1)
    if stopping.requested:
        _stopped(stopping.requested[0], "the running cell stopped at a checkpoint", f"{_wb()} worker {study}")
    typer.echo(f"worker: nothing left to take; {kind.finish_parent(spec, stores, parent.info.run_id)}")


@app.command()
def calibrate(
    plan: Annotated[Path, typer.Option(metavar="FILE", help="Calibration plan: studies and candidate budgets.")] = Path(
        "studies/calibration.toml"),
    budget: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", help="Run only this budget (repeatable) [default: all].")] = None,
    study: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", help="Run only this study (repeatable) [default: all].")] = None,
    workers: Annotated[Optional[int], typer.Option(
        metavar="N", min=1, help="Local worker processes [default: one per CPU core].")] = None,
    storage: Annotated[Optional[str], typer.Option(
        metavar="URL", help="Optuna storage URL [default: sqlite:///optuna.db].")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        metavar="URI", help="MLflow tracking URI [default: sqlite:///mlflow.db].")] = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Only render reports/calibration/README.md from the store.")] = False,
    reports: Annotated[Path, typer.Option(metavar="DIR", help="Reports folder.")] = Path("reports"),
) -> None:
    """Run the Table 1 studies under each candidate budget of the plan (resumably) and write
    reports/calibration/README.md: seed noise against the spread between settings, agreement with the paper."""
    from workbench.ablate import terminal_progress
    from workbench.calibrate import load_plan, run_plan
    from workbench.calibration_report import render_calibration
    from workbench.record import ReportError
    from workbench.studies import StudyError
    from workbench.tracking import StoreError

    try:
        stores = _stores(storage, tracking_uri)
        spec = load_plan(plan)
        if not report_only:
            summaries = run_plan(spec, stores, workers or os.cpu_count() or 1, budget, study, progress=terminal_progress())
            if summaries and summaries[-1][1]["stopped_by"]:
                name, summary = summaries[-1]
                _stopped(summary["stopped_by"], f"{name}: {summary['done']}/{summary['total']} cells finished, "
                         f"{summary['interrupted']} stopped at a checkpoint", f"{_wb()} calibrate")
            for name, summary in summaries:
                typer.echo(f"{name}: {summary['done']}/{summary['total']} cells finished, "
                           f"{summary['failed']} failed, {summary['seconds'] / 60:.1f} min")
        typer.echo(f"Report: {render_calibration(spec, stores.tracking_uri, reports)}")
    except (ReportError, StudyError, StoreError) as err:
        _fail(str(err))
    if not report_only and any(s["done"] < s["total"] for _, s in summaries):
        raise typer.Exit(1)


@app.command()
def ui(
    tracking_uri: Annotated[str, typer.Option(metavar="URI", help="MLflow tracking URI.")] = "sqlite:///mlflow.db",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI for the tracking store on 127.0.0.1: one quiet server process (no per-request
    log, no background job runners: wb submits no MLflow jobs)."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    from workbench.tracking import require_store, view_url

    try:
        require_store(tracking_uri)
    except ValueError as err:
        _fail(str(err))
    base = f"http://127.0.0.1:{port}"
    typer.echo(f"MLflow UI on {base} (Ctrl-C stops it); each study's runs, sorted by its metric:")
    for experiment in MlflowClient(tracking_uri).search_experiments():
        if experiment.name != "Default":
            typer.echo(f"  {experiment.name}: {view_url(base, experiment.experiment_id)}")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--uvicorn-opts", "--log-level warning --no-access-log"]
    try:
        code = subprocess.call(command, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


if __name__ == "__main__":
    app()

"""The commands on one model: wb train, eval, sample, encode, config."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli import Device, Sets, app, fail, print_metrics


@app.command(epilog="Every config key for --set, with its default and allowed values: wb config")
def train(
    data: Annotated[str | None, typer.Option(metavar="NAME", help="Data set (shortcut for --set data.name=...).")] = None,
    net: Annotated[str | None, typer.Option(metavar="ARCH", help="Network: mlp, unet, songunet or dit (net.arch).")] = None,
    steps: Annotated[int | None, typer.Option(metavar="N", help="Optimizer steps (train.steps).")] = None,
    seed: Annotated[int | None, typer.Option(metavar="N", help="Training seed (train.seed).")] = None,
    set_: Sets = None,
    run_dir: Annotated[Path | None, typer.Option(metavar="DIR", help="Run folder [default: runs/DATA-NET-TIME].")] = None,
    resume: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Continue the run in this folder from its last checkpoint.")] = None,
    nproc: Annotated[int | None, typer.Option(
        metavar="N", min=1, help="Processes training the run data-parallel on this machine, started with torchrun "
        "(train.nproc); for several machines run `torchrun ... -m workbench.cli train` yourself.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train one MeanFlow model; writes config.json, checkpoint.pt, metrics.jsonl and samples.png."""
    from workbench.config import ConfigError
    from workbench.data import DataError
    from workbench.evaluate.classifier import FeatureError
    from workbench.evaluate.evaluators import train_scored
    from workbench.run.launch import ranks, run_config, torchrun

    shortcuts = {"data.name": data, "net.arch": net, "train.steps": steps, "train.seed": seed, "train.nproc": nproc}
    try:
        config, folder, overrides = run_config(shortcuts, list(set_ or []), resume, run_dir)
        if dry_run:
            typer.echo(config.model_dump_json(indent=2))
            return
        if config.train.nproc > 1 and ranks() == 1:
            typer.echo(f"torchrun: {config.train.nproc} processes", err=True)
            raise typer.Exit(torchrun(config, folder, resume is not None, overrides))
        result = train_scored(config, folder, resume is not None)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, FeatureError) as err:
        fail(str(err))
    if result is None:
        return  # rank 0 reports
    typer.echo(f"run folder: {result.run_dir}  (final loss {result.final_loss:.4f}, {result.steps_per_s:.1f} steps/s)")
    typer.echo(f"samples:    {result.run_dir / 'samples.png'}")
    print_metrics(result.metrics)


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by wb train.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="eval.* override KEY=VALUE; repeatable.")] = None,
) -> None:
    """Re-evaluate a saved run's EMAs (2D: energy distance, sliced W2; images: FID, KID); writes eval.json."""
    from workbench.evaluate.classifier import FeatureError
    from workbench.evaluate.evaluators import evaluate_saved

    if not (run / "config.json").is_file():
        fail(f"{run}: no config.json there (is it a run folder?)")
    if any(not o.startswith("eval.") for o in set_ or []):
        fail("wb eval only takes eval.* overrides (the model is fixed by the run's config)")
    try:
        metrics = evaluate_saved(run, list(set_ or []))
    except (ValueError, FileNotFoundError, FeatureError) as err:  # ConfigError and DataError are ValueErrors
        fail(str(err))
    print_metrics(metrics)


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
    device: Device = "auto",
    vae: Annotated[str | None, typer.Option("--vae", help="Latent runs: the AutoencoderKL folder that decodes "
                                               "them [default: the run's eval.vae_path].")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store of RUN when it is a "
                                                        "run id.")] = None,
    omega: Annotated[float | None, typer.Option("--omega", help="Guidance scale fed to a network trained with "
                                                "meanflow.imf.guidance = omega or interval [default: its eval.omega].")] = None,
    interval: Annotated[str | None, typer.Option("--interval", metavar="LO,HI", help="Guidance interval fed with "
                                                 "it (meanflow.imf.guidance = interval) [default: its eval.interval].")] = None,
) -> None:
    """Write a trained model's samples for an external evaluator: sample i from noise (seed, i) and label i mod
    classes, as wb's own evaluation draws them (labelled models sample their classes in turn)."""
    import tempfile

    from workbench.config import with_overrides
    from workbench.evaluate.classifier import FeatureError
    from workbench.evaluate.export import export_samples, logged_model, run_model, sample_shape
    from workbench.run.model import resolve_device, sampling_net
    from workbench.stores.queries import model_files

    try:
        if Path(run).is_dir():
            config, net = run_model(Path(run), ema)
        elif not tracking_uri:
            fail(f"{run!r} is no run folder; for an MLflow run id pass --tracking-uri (e.g. sqlite:///mlflow.db)")
        else:
            with tempfile.TemporaryDirectory() as scratch:
                config, net = logged_model(*model_files(tracking_uri, run, ema, Path(scratch)), f"MLflow run {run!r}")
        chosen = {"eval.omega": omega, "eval.interval": interval}
        config = with_overrides(config, {key: value for key, value in chosen.items() if value is not None})
        net = sampling_net(net.to(resolve_device(device)).eval(), config)
        shape, decode = sample_shape(config, vae)
        summary = export_samples(net, shape, num, out, steps, seed, batch, decode, quantize=config.eval.quantize,
                                 progress=lambda done, total: typer.echo(f"\r{done}/{total}", nl=False, err=True))
    except (ValueError, FileNotFoundError, FeatureError) as err:  # StoreError and ConfigError are ValueErrors
        fail(str(err))
    typer.echo(f"\nwrote {summary['num']} samples of shape {summary['shape']} to {summary['out']}")


@app.command()
def encode(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Images, one subfolder per class (ImageNet's train/).")],
    vae: Annotated[str, typer.Option("--vae", help="AutoencoderKL folder (SD-VAE ft-MSE for the official recipe).")],
    out: Annotated[Path, typer.Option("--out", help="The latent file to write (.npz).")] = Path("data/imagenet256_latents.npz"),
    size: Annotated[int, typer.Option("--size", min=8, help="Centre-crop size in pixels (ADM's crop).")] = 256,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per batch on the device.")] = 64,
    device: Device = "auto",
) -> None:
    """Encode an image folder into the latent file of data.name=latents: the posterior's mean and std (x 0.18215,
    float16) and the class labels; training draws a fresh latent from them every step."""
    from workbench.evaluate.classifier import FeatureError
    from workbench.evaluate.vae import encode_folder
    from workbench.run.model import resolve_device

    try:
        summary = encode_folder(folder, vae, out, size, batch, resolve_device(device),
                                progress=lambda done, total: typer.echo(f"\r{done}/{total}", nl=False, err=True))
    except (ValueError, FeatureError) as err:
        fail(str(err))
    typer.echo(f"\nwrote {summary['images']} latents {summary['shape']} ({summary['classes']} classes) to {summary['out']}")


@app.command()
def config() -> None:
    """List every config key with its default and allowed values."""
    from workbench.config import describe

    for key, default, doc in describe():
        typer.echo(f"{key} = {default!s}    # {doc}")

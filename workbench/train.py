"""One training run: data + network + MeanFlow objective + EMA, checkpoints and exact resume."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from workbench import plots
from workbench.config import ConfigError, RunConfig
from workbench.data import EXACT_REFERENCES, Dataset, exact_flow, load_data
from workbench.meanflow import NETWORKS, index_noise, meanflow_loss, sample_meanflow, sample_t_r
from workbench.tracking import JsonlTracker, Tracker, write_eval



class Evaluator(Protocol):
    info: dict  # what the scores are measured with (feature set, seed), written beside them

    def __call__(self, net: nn.Module, num_samples: int) -> dict[str, float]: ...

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    run_dir: Path
    ema: nn.Module  # the EMA network, used for sampling and evaluation
    steps_per_s: float
    final_loss: float
    metrics: dict[str, float]  # final evaluation (empty without an evaluator)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda': no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def build_net(config: RunConfig, data: Dataset) -> nn.Module:
    arch = config.net.arch
    if arch != "mlp" and data.kind == "points":
        raise ConfigError(f"net.arch={arch!r} needs images or latents; data.name={config.data.name!r} is 2D points (use mlp)")
    options = getattr(config.net, arch).model_dump()
    try:
        return NETWORKS[arch](data.shape, data.num_classes, config.net.time_cond, **options)
    except ValueError as err:
        raise ConfigError(f"net.{arch}: {err}") from None


def ema_model(net: nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def learning_rate(step: int, config: RunConfig) -> float:
    """Linear warmup to optim.lr, then constant or cosine decay to 0 at train.steps."""
    optim, total = config.optim, config.train.steps
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "cosine":
        progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
        return optim.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return optim.lr


def make_optimizer(net: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optim.name == "adamw" else torch.optim.Adam
    return kind(net.parameters(), lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay)


def draw_batch(data: Dataset, config: RunConfig, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
    """All per-step randomness from one CPU generator, so a resumed run repeats it exactly."""
    batch_size = config.train.batch_size
    index = torch.randint(len(data.x), (batch_size,), generator=generator)
    t, r = sample_t_r(batch_size, config.meanflow, generator)
    noise = torch.randn((batch_size, *data.shape), generator=generator)
    labels = dropped = None
    if data.labels is not None and data.num_classes:
        labels = data.labels[index]
        dropped = torch.rand(batch_size, generator=generator) < config.meanflow.class_drop
    return {"x": data.x[index], "t": t, "r": r, "noise": noise, "labels": labels, "dropped": dropped}


def save_checkpoint(path: Path, step: int, net, ema, optimizer, generator: torch.Generator) -> None:
    state = {"step": step, "net": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken checkpoint


def save_samples(ema: nn.Module, data: Dataset, config: RunConfig, paths: dict[int, Path], device: torch.device) -> None:
    """Pictures of samples from the EMA weights, one per NFE ({steps: path}; noise fixed per index).

    Labelled data: sample i has class i mod classes, the class the metrics score it with. 2D points are
    drawn beside the data, the exact one-step map of the same noise (toy sets with an exact reference),
    and, where the null class is trained (class dropout), the unconditional samples."""
    n = config.sample.num_points if data.kind == "points" else config.sample.num_images
    noise = index_noise(config.sample.seed, range(n), data.shape).to(device)
    labels = (torch.arange(n) % data.num_classes).to(device) if data.num_classes else None
    exact = None
    if data.kind == "points" and config.data.name in EXACT_REFERENCES:
        mf = config.meanflow
        flow = exact_flow(config.data.name, mf.cfg_omega / (1 - mf.cfg_kappa), (mf.cfg_t_lo, mf.cfg_t_hi))
        exact = flow.flow(noise.double().cpu(), 1.0, 0.0, None if labels is None else labels.cpu()).float()
    for steps, path in paths.items():
        x = sample_meanflow(ema, noise, steps, labels).float().cpu()
        title = f"{steps}-NFE samples" + (" by class" if labels is not None else "")
        if data.kind == "points":
            shown = None if labels is None else labels.cpu()
            panels = [("data", data.x[:n].cpu(), None if data.labels is None else data.labels[:n].cpu())]
            if exact is not None:
                panels.append(("exact 1-step map" + (" (guided)" if config.meanflow.cfg_omega != 1 and labels is not None
                                                      else ""), exact, shown))
            panels.append((title, x, shown))
            if labels is not None and config.meanflow.class_drop > 0:
                unconditional = sample_meanflow(ema, noise, steps, torch.full_like(labels, data.num_classes)).float()
                panels.append((f"{steps}-NFE, null class", unconditional.cpu(), None))
            plots.scatter(panels, path)
        elif data.kind == "latents":  # no decoder here: the first 3 channels, 3 data stds mapped to [-1, 1]
            plots.image_grid(x[:, :3] / (3 * data.x.std()), path, f"{title} (latent channels, not decoded)")
        else:
            plots.image_grid(x, path, title)


def train(config: RunConfig, run_dir: Path, resume: bool = False, tracker: Tracker | None = None,
          progress: bool = True, evaluator: Evaluator | None = None) -> TrainResult:
    """Trains one model per `config` into run_dir (config.json, checkpoint.pt, metrics.jsonl, samples.png,
    and eval.json when an evaluator scores the EMA weights every eval.every steps and at the end)."""
    if not resume and (run_dir / "config.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume or pick another --run-dir")
    device = resolve_device(config.train.device)
    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir,
                     download=config.data.download, labels=config.data.labels)
    torch.manual_seed(config.train.seed)
    net = build_net(config, data).to(device)
    ema = ema_model(net, config.train.ema_decay)
    optimizer = make_optimizer(net, config)
    generator = torch.Generator().manual_seed(config.train.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, start = run_dir / CHECKPOINT, 0
    if resume:
        start = _restore(checkpoint_path, net, ema, optimizer, generator)
    else:
        (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    tracker = tracker or JsonlTracker(run_dir / "metrics.jsonl", resume_step=start if resume else None)
    data = data.to(device)

    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps, disable=not progress,
               desc=run_dir.name, dynamic_ncols=True)
    clock, loss_sum, loss_count, last_row = time.perf_counter(), 0.0, 0, {}
    for step in bar:
        # Sample x, t, r, noise, class dropout.
        batch = {k: (v.to(device) if v is not None else None) for k, v in draw_batch(data, config, generator).items()}
        # Loss (bf16 autocast outside the JVP when asked for).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.precision == "bf16"):
            loss, metrics = meanflow_loss(net, batch["x"], batch["t"], batch["r"], batch["noise"], config.meanflow,
                                          labels=batch["labels"], dropped=batch["dropped"])
        # Update weights.
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip > 0:
            metrics["grad_norm"] = nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
        optimizer.step()
        # Update EMA.
        ema.update_parameters(net)
        # Log (values are averaged since the last row; one .item() sync per row, not per step).
        loss_sum, loss_count = loss_sum + metrics["loss"], loss_count + 1
        if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
            steps_per_s = loss_count / (time.perf_counter() - clock)
            last_row = {k: float(v) for k, v in metrics.items()} | {
                "loss": float(loss_sum) / loss_count, "lr": learning_rate(step, config), "steps_per_s": steps_per_s}
            tracker.log_metrics(last_row, step + 1)
            bar.set_postfix(loss=f"{last_row['loss']:.4f}", mse=f"{last_row['mse']:.4f}")
            clock, loss_sum, loss_count = time.perf_counter(), 0.0, 0
        # Evaluate (EMA weights, fewer samples than the final score).
        if evaluator and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < config.train.steps:
            tracker.log_metrics(evaluator(ema.module, config.eval.num_samples_during), step + 1)
        # Save checkpoint.
        if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps:
            save_checkpoint(checkpoint_path, step + 1, net, ema, optimizer, generator)
    bar.close()

    pictures = {config.sample.steps: run_dir / "samples.png"}
    if evaluator:  # a picture at every other scored NFE too: samples_2nfe.png, ...
        pictures |= {steps: run_dir / f"samples_{steps}nfe.png" for steps in sorted(set(config.eval.nfe) - {config.sample.steps})}
    save_samples(ema.module, data, config, pictures, device)
    final = evaluator(ema.module, config.eval.num_samples) if evaluator else {}
    if final:
        tracker.log_metrics(final, config.train.steps)
        write_eval(run_dir, evaluator.info, config.eval.num_samples, final)
    return TrainResult(run_dir, ema.module, last_row.get("steps_per_s", math.nan), last_row.get("loss", math.nan), final)


def load_ema(run_dir: Path, config: RunConfig) -> nn.Module:
    """The EMA network of a saved run (CPU), for sampling and evaluation."""
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint in this run folder")
    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir,
                     labels=config.data.labels)
    ema = ema_model(build_net(config, data), config.train.ema_decay)
    ema.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["ema"])
    return ema.module


def _restore(path: Path, net, ema, optimizer, generator: torch.Generator) -> int:
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(state["net"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"]

"""One training run: data + network + MeanFlow objective + EMA, checkpoints and exact resume."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from workbench.config import ConfigError, RunConfig
from workbench.data import Dataset, load_data
from workbench.meanflow import JVP_MODES, OBJECTIVES, central_difference, sample_t_r
from workbench.run import checkpoint, distributed
from workbench.run.augment import augment_batch, draw_augment
from workbench.run.emas import Scorer, ema_models, score_all
from workbench.run.model import build_net, learning_rate, make_optimizer, resolve_device
from workbench.run.stopping import STOP, Interrupted
from workbench.run.trackers import JsonlTracker, NullTracker, Tracker, write_eval


class Diverged(RuntimeError):
    """The loss (or the gradient norm) turned NaN or infinite: the run stops, its last checkpoint (from
    before that step, all finite) kept."""

    def __init__(self, step: int, quantity: str):
        super().__init__(f"{quantity} is NaN or infinite at step {step}")
        self.step, self.quantity = step, quantity


class DivergenceWatch:
    """The first step whose loss (or gradient norm) is not finite, kept on the device: no host sync per
    step; `check()` (a sync) runs before every logged row, evaluation and checkpoint, so a run stops
    within train.log_every steps of diverging and never saves or scores a non-finite model."""

    def __init__(self, device: torch.device):
        self.first = {name: torch.full((), -1, device=device) for name in ("loss", "gradient norm")}

    def see(self, step: int, quantity: str, value: torch.Tensor) -> None:
        first = self.first[quantity]
        self.first[quantity] = torch.where(~torch.isfinite(value.detach()) & (first < 0), step, first)

    def check(self) -> None:
        for quantity, first in self.first.items():
            if int(first) >= 0:
                raise Diverged(int(first), quantity)


@dataclass
class TrainResult:
    run_dir: Path
    ema: nn.Module  # the EMA network (train.ema_decay), used for sampling and evaluation
    steps_per_s: float
    final_loss: float
    metrics: dict[str, float]  # final evaluation (empty without an evaluator)
    data: Dataset  # the training set, on the run's device
    extra_emas: dict[str, nn.Module] = field(default_factory=dict)  # train.ema_decays by metric suffix ("ema0.99995")


def loss_function(net: nn.Module, config: RunConfig) -> Callable[..., tuple[torch.Tensor, dict]]:
    """(x, t, r, noise, labels, dropped, cond, rows, step, split, guidance) -> (loss, metrics) of meanflow.objective: eager
    with the default d/dt u strategy (or central differences, meanflow.dudt), or with train.compile the whole-batch
    torch.func.jvp through torch.compile (compiled on the first call)."""
    mf = config.meanflow
    if mf.dudt == "finite_difference":
        dudt = central_difference(mf.fd_step)
    else:
        dudt = JVP_MODES["whole" if config.train.compile and mf.ratio > 0 else "auto"]  # ratio 0: no JVP
    objective = OBJECTIVES[mf.objective]
    extra = {"meanflow": {"step": 0} if mf.curriculum.steps else {}, "mmf": {"step": 0}, "splitmeanflow": {"split": None},
             "alphaflow": {"step": 0}, "imf": {"guidance": None}}[mf.objective]

    def loss(x, t, r, noise, labels, dropped, cond, rows=None, step=0, split=None, guidance=None):
        given = {key: value for key, value in {"step": step, "split": split, "guidance": guidance}.items()
                 if key in extra}
        return objective(net, x, t, r, noise, mf, labels=labels, dropped=dropped, dudt=dudt, cond=cond, rows=rows, **given)
    return torch.compile(loss) if config.train.compile else loss


def draw_batch(data: Dataset, config: RunConfig, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
    """All per-step randomness of the global batch from one CPU generator, so a resumed run repeats it
    exactly (and every data-parallel rank draws the same batch, then trains on its slice)."""
    batch_size = config.train.batch_size
    index = torch.randint(len(data.x), (batch_size,), generator=generator)
    t, r = sample_t_r(batch_size, config.meanflow, generator)
    noise = torch.randn((batch_size, *data.shape), generator=generator)
    labels = dropped = None
    if data.labels is not None and data.num_classes:
        labels = data.labels[index]
        dropped = torch.rand(batch_size, generator=generator) < config.meanflow.class_drop
    # Augmentation parameters (applied on the device by augment_batch); none drawn when off, so
    # runs without augmentation draw the same numbers as before it existed.
    hflip = torch.rand(batch_size, generator=generator) < 0.5 if config.data.hflip else None
    augment = draw_augment(batch_size, config.data.augment_p, generator) if config.data.augment_p > 0 else None
    x = data.x[index].float()
    if data.std is not None:  # a fresh latent from each image's posterior (the official ImageNet recipe)
        x = x + data.std[index].float() * torch.randn((batch_size, *data.shape), generator=generator).to(x.device)
    # SplitMeanFlow's split points and iMF's guidance inputs, drawn last and only for them, so that other runs draw
    # what they always did.
    split = torch.rand(batch_size, generator=generator) if config.meanflow.objective == "splitmeanflow" else None
    guidance = draw_guidance(t, r, config, generator) if config.guidance_inputs else None
    return {"x": x, "t": t, "r": r, "noise": noise, "labels": labels, "dropped": dropped,
            "hflip": hflip, "augment": augment, "split": split, "guidance": guidance}


def draw_guidance(t: torch.Tensor, r: torch.Tensor, config: RunConfig, generator: torch.Generator) -> torch.Tensor:
    """iMF's guidance inputs, (B, 3) rows (omega, t_min, t_max) (Lyy-iiis/imeanflow imf.py at a1cc3a9,
    sample_cfg_scale with cfg_beta 1 and sample_cfg_interval): omega = exp(U ln omega_max), density ~ 1/omega on
    [1, omega_max]; with meanflow.imf.guidance = interval t_min ~ U[0, 0.5] and t_max ~ U[0.5, 1], [0, 1] on the
    r = t rows; with omega, [0, 1] on every row."""
    imf, n = config.meanflow.imf, len(t)
    omega = torch.exp(torch.rand(n, generator=generator) * math.log(imf.omega_max))
    t_min, t_max = torch.zeros(n), torch.ones(n)
    if imf.guidance == "interval":
        t_min = torch.where(r == t, 0.0, 0.5 * torch.rand(n, generator=generator))
        t_max = torch.where(r == t, 1.0, 0.5 + 0.5 * torch.rand(n, generator=generator))
    return torch.stack([omega, t_min, t_max], dim=1)


def train(config: RunConfig, run_dir: Path, resume: bool = False, tracker: Tracker | None = None,
          progress: bool = True, evaluator: Scorer | None = None,
          on_eval: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Trains one model per `config` into run_dir (config.json, checkpoint.pt, metrics.jsonl, and eval.json
    when an evaluator scores the EMA weights every eval.every steps and at the end). Sample pictures:
    workbench.evaluate.pictures.save_run_pictures on the result. on_eval(step, scores) sees every intermediate
    evaluation and may stop the run by raising."""
    run = training(config, run_dir, resume, tracker, progress, evaluator)
    while True:
        try:
            step, scores = next(run)
        except StopIteration as done:
            return done.value
        if on_eval:
            on_eval(step, scores)


def training(config: RunConfig, run_dir: Path, resume: bool = False, tracker: Tracker | None = None,
             progress: bool = True, evaluator: Scorer | None = None
             ) -> Generator[tuple[int, dict[str, float]], None, TrainResult]:
    """train() as a generator: yields (step, scores) at every intermediate evaluation and returns the
    TrainResult. A search advances the runs of a trial's seeds side by side with it, so that its pruner
    sees their mean at each step; closing the generator stops the run.

    With train.nproc > 1 the run trains data-parallel (workbench/run/distributed.py): in a group that torchrun
    started, or else this process becomes rank 0 and starts the other ranks on this machine."""
    group = distributed.current()
    if config.train.nproc > 1 and group.world == 1:
        threads = max(1, torch.get_num_threads() // config.train.nproc)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with distributed.ranks(config.train.nproc, _other_rank, (config, run_dir, resume), threads):
                return (yield from training(config, run_dir, resume, tracker, progress, evaluator))
        finally:
            torch.set_num_threads(before)
    if group.world != config.train.nproc:
        raise ConfigError(f"train.nproc={config.train.nproc}, but this process is one of {group.world} ranks "
                          f"(WORLD_SIZE); set train.nproc={group.world}")
    if not group.main:
        tracker, progress, evaluator = NullTracker(), False, None
    if group.main and not resume and (run_dir / "config.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume or pick another --run-dir")
    device = distributed.device_for(group, resolve_device(config.train.device))
    if device.type == "cuda":  # TF32 products (about 8x fp32 on an H100's tensor cores) or exact fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.train.tf32
    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir,
                     download=config.data.download, labels=config.data.labels)
    torch.manual_seed(config.train.seed)
    net = build_net(config, data).to(device)
    emas = ema_models(net, config)
    optimizer = make_optimizer(net, config)
    generator = torch.Generator().manual_seed(config.train.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, start = run_dir / checkpoint.CHECKPOINT, 0
    if resume:
        start = checkpoint.restore(checkpoint_path, net, emas, optimizer, generator)
    elif group.main:
        (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    tracker = tracker or JsonlTracker(run_dir / "metrics.jsonl", resume_step=start if resume else None)
    data = data.to(device)

    params = [p for p in net.parameters() if p.requires_grad]
    loss_fn = loss_function(net, config)
    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps, disable=not progress,
               desc=run_dir.name, dynamic_ncols=True)
    clock, loss_sum, loss_count, last_row = time.perf_counter(), 0.0, 0, {}
    watch = DivergenceWatch(device)
    for step in bar:
        # Sample x, t, r, noise, class dropout (the global batch; this rank's rows of it). The r != t rows are
        # found here, on the CPU where t and r were drawn: no step waits for the device.
        batch = {k: group.shard(v) for k, v in draw_batch(data, config, generator).items()}
        rows = None if config.train.compile else (batch["r"] != batch["t"]).nonzero().squeeze(1)
        batch = {k: (v.to(device, non_blocking=True) if v is not None else None) for k, v in batch.items()}
        x, cond = augment_batch(batch)
        # Loss (bf16 autocast outside the JVP when asked for).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.precision == "bf16"):
            loss, metrics = loss_fn(x, batch["t"], batch["r"], batch["noise"], batch["labels"], batch["dropped"], cond, rows,
                                    step, batch["split"], batch["guidance"])
        # Update weights (gradients, loss and the stop flag averaged over data-parallel ranks).
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["loss"], stop = group.average_gradients(params, loss, STOP.is_set())
        watch.see(step + 1, "loss", metrics["loss"])
        if config.optim.grad_clip > 0:
            metrics["grad_norm"] = nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
            watch.see(step + 1, "gradient norm", metrics["grad_norm"])
        optimizer.step()
        # Update EMA.
        if (step + 1) % config.train.ema_every == 0:
            for ema in emas.values():
                ema.update_parameters(net)
        # Log (values are averaged since the last row; one .item() sync per row, not per step).
        loss_sum, loss_count = loss_sum + metrics["loss"], loss_count + 1
        if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
            watch.check()
            steps_per_s = loss_count / (time.perf_counter() - clock)
            last_row = {k: float(v) for k, v in group.mean(metrics).items()} | {
                "loss": float(loss_sum) / loss_count, "lr": learning_rate(step, config), "steps_per_s": steps_per_s,
                "images_per_s": steps_per_s * config.train.batch_size}
            tracker.log_metrics(last_row, step + 1)
            bar.set_postfix(loss=f"{last_row['loss']:.4f}", mse=f"{last_row['mse']:.4f}")
            clock, loss_sum, loss_count = time.perf_counter(), 0.0, 0
        # Evaluate (EMA weights, fewer samples than the final score).
        if evaluator and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < config.train.steps:
            watch.check()
            scores = score_all(evaluator, emas, net, config, config.eval.num_samples_during)
            tracker.log_metrics(scores, step + 1)
            yield step + 1, scores
        # Save checkpoint.
        if group.main and ((step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps):
            watch.check()
            # The rows up to here reach the store before the checkpoint does: a run resumed from it
            # misses none (and its tracker skips the ones logged after it).
            tracker.flush()
            checkpoint.save_checkpoint(checkpoint_path, step + 1, net, emas, optimizer, generator)
            tracker.checkpointed(checkpoint_path)
        # Stop when asked to (SIGTERM, SIGINT: workbench.run.stopping), from a checkpoint of this step.
        if stop and step + 1 < config.train.steps:
            watch.check()
            if group.main:
                tracker.flush()
                checkpoint.save_checkpoint(checkpoint_path, step + 1, net, emas, optimizer, generator)
                tracker.checkpointed(checkpoint_path)
            bar.close()
            raise Interrupted(step + 1)
    bar.close()

    final = score_all(evaluator, emas, net, config, config.eval.num_samples) if evaluator else {}
    if final:
        tracker.log_metrics(final, config.train.steps)
        write_eval(run_dir, evaluator.info, config.eval.num_samples, final)
    return TrainResult(run_dir, emas[""].module, last_row.get("steps_per_s", math.nan), last_row.get("loss", math.nan),
                       final, data, {name: ema.module for name, ema in emas.items() if name})


def _other_rank(config: RunConfig, run_dir: Path, resume: bool) -> None:
    """Ranks 1..nproc-1 of a run whose rank 0 is the process that called training()."""
    for _ in training(config, run_dir, resume, progress=False):
        pass



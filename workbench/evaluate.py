"""Scores for a trained model (EMA weights) at each NFE and for the Flow Matching Euler baseline.

2D points: energy distance and sliced Wasserstein distance to the held-out split. Images: FID and
KID through clean-fid (workbench/fid.py). Latents: Frechet distance of the latents themselves. Fixed sample counts and per-index noise seeds make
scores comparable across cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from workbench.config import ConfigError, RunConfig
from workbench.data import TOY_SETS, load_data
from workbench.fid import ImageScorer, fid_kid, image_scorer
from workbench.meanflow import index_noise, sample_euler, sample_meanflow
from workbench.tracking import write_eval
from workbench.train import load_ema  # one-way: train.py never imports evaluation code


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic: exactly 0 for identical sets), x (N, D), y (M, D)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size sets (N, D): sqrt of the mean over random
    unit directions of the 1D squared W2, which sorting computes exactly."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = torch.randn(x.shape[1], num_projections, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    px, _ = (x.double() @ directions).sort(dim=0)
    py, _ = (y.double() @ directions).sort(dim=0)
    return float((px - py).pow(2).mean().sqrt())


@torch.no_grad()
def generate(net: nn.Module, shape: tuple[int, ...], nfe: tuple[int, ...], fm_steps: tuple[int, ...],
             num_samples: int, seed: int, chunk: int = 1000) -> dict[str, torch.Tensor]:
    """{'1nfe': (N, *shape), ..., 'fm50': ...} on the CPU. Sample i uses noise (seed, i) and, for a
    class-conditional net, label i mod num_classes, so every cell scores the same noise."""
    device = next(net.parameters()).device
    samplers = {f"{k}nfe": (sample_meanflow, k) for k in nfe} | {f"fm{k}": (sample_euler, k) for k in fm_steps}
    out = {name: [] for name in samplers}
    for start in range(0, num_samples, chunk):
        index = range(start, min(start + chunk, num_samples))
        noise = index_noise(seed, index, shape).to(device)
        labels = torch.tensor(index, device=device) % net.num_classes if net.num_classes else None
        for name, (sampler, steps) in samplers.items():
            out[name].append(sampler(net, noise, steps, labels).float().cpu())
    return {name: torch.cat(chunks) for name, chunks in out.items()}


def toy_metrics(net: nn.Module, data_name: str, nfe: tuple[int, ...] = (1, 2), fm_steps: tuple[int, ...] = (),
                num_samples: int = 4000, seed: int = 0) -> dict[str, float]:
    """Energy distance and sliced W2 of MeanFlow samples at each NFE and Flow Matching Euler at each
    step count against the first num_samples held-out points: {'energy_1nfe': ..., 'swd_fm50': ...}."""
    reference = load_data(data_name, "test").x[:num_samples]
    metrics = {}
    for name, x in generate(net, tuple(reference.shape[1:]), nfe, fm_steps, len(reference), seed).items():
        metrics[f"energy_{name}"] = energy_distance(x, reference)
        metrics[f"swd_{name}"] = sliced_wasserstein(x, reference, seed=seed)
    return metrics


def image_metrics(net: nn.Module, scorer: ImageScorer, shape: tuple[int, ...], nfe: tuple[int, ...] = (1, 2),
                  fm_steps: tuple[int, ...] = (), num_samples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """clean-fid FID and KID of generated images: {'fid_1nfe': ..., 'kid_1nfe': ..., 'fid_fm50': ...}."""
    metrics = {}
    for name, x in generate(net, shape, nfe, fm_steps, num_samples, seed).items():
        metrics |= {f"{metric}_{name}": value for metric, value in scorer.score(x, seed).items()}
    return metrics


def latent_metrics(net: nn.Module, reference: torch.Tensor, nfe: tuple[int, ...] = (1, 2),
                   fm_steps: tuple[int, ...] = (), num_samples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Frechet distance between generated and reference latents, flattened: {'fdlatent_1nfe': ...}.
    A proxy for FID when no decoder is at hand; its scale is not FID's."""
    flat = reference.flatten(1).double().numpy()
    mu, sigma = flat.mean(axis=0), np.cov(flat, rowvar=False)
    return {f"fdlatent_{name}": fid_kid(x.flatten(1).double().numpy(), mu, sigma, None, seed)["fid"]
            for name, x in generate(net, tuple(reference.shape[1:]), nfe, fm_steps, num_samples, seed).items()}


@dataclass
class Evaluator:
    """net, num_samples -> metrics; `info` says what the scores are measured with (never compare
    scores across feature sets) and is written beside them."""

    score: Callable[[nn.Module, int], dict[str, float]]
    info: dict

    def __call__(self, net: nn.Module, num_samples: int) -> dict[str, float]:
        return self.score(net, num_samples)


def evaluator_for(config: RunConfig) -> Evaluator:
    """The metrics for this run's data: distribution distances for 2D points, FID/KID for images."""
    ev, name = config.eval, config.data.name
    if name in TOY_SETS:
        return Evaluator(lambda net, n: toy_metrics(net, name, ev.nfe, ev.fm_steps, n, ev.seed),
                         {"features": "points (energy distance, sliced W2 vs held-out split)", "seed": ev.seed})
    data = load_data(name, "test", path=config.data.path, data_dir=config.data.data_dir)
    if data.kind == "latents":
        if ev.features not in ("auto", "latent"):
            raise ConfigError(f"eval.features={ev.features!r}: latents would need decoding to images first; "
                              "use latent (Frechet distance of the latents) or decode and score outside")
        return Evaluator(lambda net, n: latent_metrics(net, data.x, ev.nfe, ev.fm_steps, n, ev.seed),
                         {"features": "latent (Frechet distance of flattened latents vs the training latents)",
                          "seed": ev.seed})
    kind = ev.features if ev.features != "auto" else ("classifier" if data.labels is not None else "inception")
    scorer = image_scorer(config.data, kind, Path(ev.cache_dir), ev.seed)
    return Evaluator(lambda net, n: image_metrics(net, scorer, data.shape, ev.nfe, ev.fm_steps, n, ev.seed),
                     {"features": scorer.name, "seed": ev.seed, **scorer.info})


def evaluate_checkpoint(run_dir: Path, config: RunConfig) -> dict[str, float]:
    """Re-scores a saved run's EMA weights with `config.eval` (final sample count); writes eval.json."""
    evaluator = evaluator_for(config)
    metrics = evaluator(load_ema(run_dir, config), config.eval.num_samples)
    write_eval(run_dir, evaluator.info, config.eval.num_samples, metrics)
    return metrics

"""Distribution metrics for toy 2D data: energy distance and sliced Wasserstein distance.

Fixed evaluation sizes and seeds (noise index i depends only on (seed, i), held-out points are
the data set's test split) make scores comparable across cells. Image FID/KID (clean-fid) is
not here yet: image runs get no evaluator.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from workbench.config import RunConfig
from workbench.data import TOY_SETS, load_data
from workbench.meanflow import index_noise, sample_euler, sample_meanflow
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
def toy_metrics(net: nn.Module, data_name: str, nfe: tuple[int, ...] = (1, 2), fm_steps: tuple[int, ...] = (),
                num_samples: int = 4000, seed: int = 0) -> dict[str, float]:
    """Scores MeanFlow samples at each NFE and Flow Matching Euler at each step count against
    the first num_samples held-out points: {'energy_1nfe': ..., 'swd_1nfe': ..., 'energy_fm50': ...}."""
    reference = load_data(data_name, "test").x[:num_samples]
    device = next(net.parameters()).device
    noise = index_noise(seed, range(len(reference)), tuple(reference.shape[1:])).to(device)
    samples = {f"{k}nfe": sample_meanflow(net, noise, k) for k in nfe}
    samples |= {f"fm{k}": sample_euler(net, noise, k) for k in fm_steps}
    metrics = {}
    for name, x in samples.items():
        x = x.float().cpu()
        metrics[f"energy_{name}"] = energy_distance(x, reference)
        metrics[f"swd_{name}"] = sliced_wasserstein(x, reference, seed=seed)
    return metrics


def evaluator_for(config: RunConfig) -> Callable[[nn.Module, int], dict[str, float]] | None:
    """net, num_samples -> metrics for this run's data; None where no metric exists yet (images)."""
    if config.data.name not in TOY_SETS:
        return None
    ev = config.eval
    return lambda net, num_samples: toy_metrics(net, config.data.name, ev.nfe, ev.fm_steps, num_samples, ev.seed)


def evaluate_checkpoint(run_dir: Path, config: RunConfig) -> dict[str, float]:
    """Re-scores a saved run's EMA weights with `config.eval` (final sample count); writes eval.json."""
    evaluator = evaluator_for(config)
    if evaluator is None:
        raise ValueError(f"data.name={config.data.name!r}: only the 2D sets {', '.join(TOY_SETS)} have metrics so far")
    metrics = evaluator(load_ema(run_dir, config), config.eval.num_samples)
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    return metrics

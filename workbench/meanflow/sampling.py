"""Samplers: MeanFlow 1-NFE / k-NFE and the Flow Matching Euler baseline. No CFG at sampling time."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

Net = Callable[..., torch.Tensor]


def index_noise(seed: int, indices: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(len(indices), *shape) float32 Gaussian noise where row i depends only on (seed, indices[i]).

    Sample i of an evaluation is then the same across cells, batch sizes and workers. numpy's
    SeedSequence hashes the pair (torch.manual_seed would keep only 32 bits of a combined seed).
    """
    rows = [np.random.default_rng([seed, int(i)]).standard_normal(shape, dtype=np.float32) for i in indices]
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, *shape)


def time_schedule(steps: int | Sequence[float]) -> torch.Tensor:
    """steps k -> uniform 1 = t_0 > ... > t_k = 0; or a given decreasing schedule from 1 to 0."""
    if isinstance(steps, int):
        return torch.linspace(1.0, 0.0, steps + 1)
    schedule = torch.tensor([float(s) for s in steps])
    if schedule[0] != 1.0 or schedule[-1] != 0.0 or not bool((schedule[1:] < schedule[:-1]).all()):
        raise ValueError(f"schedule {list(steps)} must decrease strictly from 1 to 0")
    return schedule


@torch.no_grad()
def sample_meanflow(net: Net, noise: torch.Tensor, steps: int | Sequence[float] = 1, labels: torch.Tensor | None = None) -> torch.Tensor:
    """z_r = z_t - (t - r) u(z_t, r, t) along the schedule; steps=1 is x = e - u(e, r=0, t=1)."""
    z = noise
    ones = torch.ones(noise.shape[0], device=noise.device, dtype=noise.dtype)
    schedule = time_schedule(steps).tolist()
    for t, r in zip(schedule[:-1], schedule[1:]):
        z = z - (t - r) * net(z, t * ones, r * ones, labels)
    return z


@torch.no_grad()
def sample_euler(net: Net, noise: torch.Tensor, steps: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Flow Matching baseline: Euler on the instantaneous velocity u(z, t, t) with `steps` steps."""
    z = noise
    ones = torch.ones(noise.shape[0], device=noise.device, dtype=noise.dtype)
    schedule = time_schedule(steps).tolist()
    for t, s in zip(schedule[:-1], schedule[1:]):
        z = z - (t - s) * net(z, t * ones, t * ones, labels)
    return z

"""Samplers: MeanFlow 1-NFE / k-NFE, and Euler on the instantaneous velocity (the Flow Matching
baseline) as its r = t case. No CFG at sampling time: guidance is trained into the network."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Net = Callable[..., torch.Tensor]


def time_schedule(steps: int | Sequence[float]) -> torch.Tensor:
    """steps k -> uniform 1 = t_0 > ... > t_k = 0; or a given decreasing schedule from 1 to 0."""
    if isinstance(steps, int):
        return torch.linspace(1.0, 0.0, steps + 1)
    schedule = torch.tensor([float(s) for s in steps])
    if schedule[0] != 1.0 or schedule[-1] != 0.0 or not bool((schedule[1:] < schedule[:-1]).all()):
        raise ValueError(f"schedule {list(steps)} must decrease strictly from 1 to 0")
    return schedule


@torch.no_grad()
def sample(net: Net, noise: torch.Tensor, steps: int | Sequence[float] = 1, labels: torch.Tensor | None = None,
           euler: bool = False) -> torch.Tensor:
    """z_r = z_t - (t - r) u(z_t, r, t) along the schedule; steps=1 is x = e - u(e, r=0, t=1).

    euler=True: the network's instantaneous velocity u(z_t, t, t) in place of the average, i.e. the
    Euler method on the flow's ODE (how a Flow Matching model samples)."""
    z = noise
    ones = torch.ones(noise.shape[0], device=noise.device, dtype=noise.dtype)
    schedule = time_schedule(steps).tolist()
    for t, r in zip(schedule[:-1], schedule[1:]):
        z = z - (t - r) * net(z, t * ones, (t if euler else r) * ones, labels)
    return z

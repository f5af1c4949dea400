"""The (t, r) sampler: two time draws made into t >= r, r = t for a fraction 1 - ratio (see sample_t_r).

Convention used everywhere in the workbench: z_t = (1 - t) x + t e, t = 0 is data, t = 1 noise.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the config is plain attributes; meanflow/ imports torch only at run time
    from workbench.config import MeanFlowConfig

_DIST = re.compile(r"^(uniform|lognorm)\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)$")


def parse_time_dist(spec: str) -> tuple[str, float, float]:
    """'lognorm(-0.4,1.0)' -> ('lognorm', -0.4, 1.0); 'uniform(0,1)' -> ('uniform', 0.0, 1.0)."""
    match = _DIST.match(spec.replace(" ", ""))
    if match is None:
        raise ValueError(f"time distribution {spec!r} is not 'uniform(lo,hi)' or 'lognorm(mu,sigma)'")
    kind, a, b = match.group(1), float(match.group(2)), float(match.group(3))
    if kind == "uniform" and not 0.0 <= a < b <= 1.0:
        raise ValueError(f"time distribution {spec!r}: need 0 <= lo < hi <= 1")
    if kind == "lognorm" and not (b > 0 and math.isfinite(a)):
        raise ValueError(f"time distribution {spec!r}: need a finite mu and sigma > 0")
    return kind, a, b


def sample_time(spec: str, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws (batch_size,) times in [0, 1]. lognorm(mu, sigma) is the logit-normal sigmoid(N(mu, sigma^2))."""
    kind, a, b = parse_time_dist(spec)
    if kind == "uniform":
        return a + (b - a) * torch.rand(batch_size, generator=generator)
    return torch.sigmoid(a + b * torch.randn(batch_size, generator=generator))


def sample_t_r(
    batch_size: int, config: MeanFlowConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns t, r of shape (batch_size,) with t >= r.

    Two draws a ~ t_dist and b ~ r_dist (`config.r_dist` empty: t_dist for both), then, by
    `config.tr_sampler` (named as in the official PyTorch code's --tr_sampler):
      'v0' (the paper): t = max(a, b), r = min(a, b), then r = t for a fraction 1 - ratio, so
           exactly a fraction `ratio` has r != t;
      'v1' (the PyTorch code's improved CIFAR-10 sampler, t ~ lognorm(-0.6, 1.6), r ~ lognorm(-4, 1.6)):
           t = a keeps its distribution, r = t for a fraction 1 - ratio, then r = min(t, b); a fraction
           ratio * P(b < a) has r != t.
    `config.ratio_mask` 'random': each sample keeps r != t with probability ratio (PyTorch code);
    'prefix': the first round((1 - ratio) * B) samples get r = t (JAX code).
    """
    a = sample_time(config.t_dist, batch_size, generator)
    b = sample_time(config.r_dist or config.t_dist, batch_size, generator)
    if config.ratio_mask == "random":
        flow_matching = torch.rand(batch_size, generator=generator) >= config.ratio
    else:
        flow_matching = torch.arange(batch_size) < round((1.0 - config.ratio) * batch_size)
    if config.tr_sampler == "v1":
        return a, torch.minimum(a, torch.where(flow_matching, a, b))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    return t, torch.where(flow_matching, t, r)

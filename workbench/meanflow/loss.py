"""The MeanFlow objective (Geng et al. 2025, Eq. 10), a pure function of its inputs.

Convention: z_t = (1 - t) x + t e, v = e - x, r <= t; net(z, t, r, labels) predicts the average
velocity u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds. The MeanFlow identity (Eq. 6)
    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = v d_z u + d_t u,
gives the regression target u_tgt = v - (t - r) JVP(u; tangent (v, 0, 1) over (z, r, t)) (Eq. 10).
How d/dt u is computed (one JVP over the batch, or cheaper passes with the same result) is a
strategy from meanflow/dudt.py.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .dudt import TANGENTS, DuDt, auto

if TYPE_CHECKING:
    from workbench.config import MeanFlowConfig

Net = Callable[..., torch.Tensor]


def meanflow_loss(
    net: Net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, e: torch.Tensor, config: MeanFlowConfig,
    labels: torch.Tensor | None = None, dropped: torch.Tensor | None = None, dudt: DuDt = auto,
    cond: dict[str, torch.Tensor] | None = None, rows: torch.Tensor | None = None, step: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MeanFlow loss for data x (B, ...), times t >= r (B,), noise e like x; returns (loss, detached metrics).

    labels (B,) ints and dropped (B,) bools: class dropout gives those samples the null class
    net.num_classes and the unguided target. dudt: how (u, d/dt u) are computed (meanflow/dudt.py).
    cond: more per-sample network inputs, passed as keywords (the augmentation labels of the
    official CIFAR-10 recipe: {"augment_labels": (B, 6)}). rows: CPU indices of the r != t samples, when the
    caller knows them (no device sync to find them; meanflow/dudt.py split_rows). step: the training step, for the
    interval curriculum (config.curriculum; interval_weight)."""
    labels = null_dropped(net, labels, dropped)
    z = (1 - _expand(t, x)) * x + _expand(t, x) * e                                  # Eq. 1
    v = guided_velocity(net, z, t, e - x, labels, dropped, config, cond)              # v, or v~ (Eq. 13)
    tangent = tangent_velocity(net, z, t, v, labels, config.beta, cond)              # v (beta = 1, the paper)
    u, du_dt = dudt(net, z, t, r, tangent, labels, TANGENTS[config.tangent], cond, rows)  # u and JVP (Eq. 8)
    u_tgt = (v - _expand(t - r, x) * du_dt).detach()                                  # Eq. 10, stop-gradient
    return regression(u, u_tgt, t, r, config, interval_weight(config, t - r, step))


def interval_weight(config: MeanFlowConfig, dt: torch.Tensor, step: int) -> torch.Tensor | None:
    """The short-to-long curriculum (arXiv 2511.19065): 1 - s + lambda s (1 - dt), s = 1 - (step / steps)^power,
    lambda = 1 / mean(1 - dt) over the batch, so the weights average 1; None when it is off or over."""
    steps = config.curriculum.steps
    if steps == 0 or step >= steps:
        return None
    s = 1.0 - (step / steps) ** config.curriculum.power
    short = 1.0 - dt.detach()
    return 1.0 - s + s * short / short.mean()


def null_dropped(net: Net, labels: torch.Tensor | None, dropped: torch.Tensor | None) -> torch.Tensor | None:
    """Class dropout: the dropped samples get the null class net.num_classes."""
    if labels is not None and dropped is not None:
        return torch.where(dropped, torch.full_like(labels, net.num_classes), labels)
    return labels


def regression(u: torch.Tensor, u_tgt: torch.Tensor, t: torch.Tensor, r: torch.Tensor, config: MeanFlowConfig,
               extra: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The adaptively weighted squared error of u against its target (Sec. 4.3), times `extra` (B,) per-sample
    weights where given: (loss, detached metrics)."""
    err = (u - u_tgt).pow(2).flatten(1).sum(dim=1)                                    # ||Delta||^2 per sample
    weight = adaptive_weight(err, config.adaptive_p, config.adaptive_c)               # Sec. 4.3
    if extra is not None:
        weight = weight * extra
    loss = (weight * err).mean()
    metrics = {"loss": loss.detach(), "mse": err.detach().mean(), "weight_mean": weight.mean(),
               "frac_r_neq_t": (r != t).float().mean()}
    return loss, metrics


def tangent_velocity(net: Net, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None,
                     beta: float, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The JVP's z-tangent: beta v + (1 - beta) u(z, t, t), the network's own instantaneous velocity without
    gradient (variance reduction in Mean Flows, arXiv 2605.09235; the parameterisation is inferred from its
    abstract). beta = 1 is the paper's v, returned as it is (no extra forward)."""
    if beta == 1.0:
        return v
    with torch.no_grad():
        v_net = net(z, t, t, labels, **(cond or {}))
    return beta * v + (1.0 - beta) * v_net


def guided_velocity(
    net: Net, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None,
    dropped: torch.Tensor | None, config: MeanFlowConfig, cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """v~ = w v + kappa u(z, t, t | c) + (1 - w - kappa) u(z, t, t | null) (Eq. 13 / 19), no gradient.

    Applied only where t is in [cfg_t_lo, cfg_t_hi] and the label was not dropped; elsewhere v.
    """
    omega, kappa = config.cfg_omega, config.cfg_kappa
    if labels is None or (omega == 1.0 and kappa == 0.0):
        return v
    with torch.no_grad():
        null = torch.full_like(labels, net.num_classes)
        v_tilde = omega * v + (1.0 - omega - kappa) * net(z, t, t, null, **(cond or {}))
        if kappa != 0.0:
            v_tilde = v_tilde + kappa * net(z, t, t, labels, **(cond or {}))
    guided = (t >= config.cfg_t_lo) & (t <= config.cfg_t_hi)
    if dropped is not None:
        guided = guided & ~dropped
    return torch.where(_expand(guided, v), v_tilde, v)


def adaptive_weight(err: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """w = 1 / (||Delta||^2 + c)^p, stop-gradient (Sec. 4.3); p = 0 is plain squared L2."""
    return 1.0 / (err.detach() + c) ** p


def _expand(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against a batch shaped like `like`."""
    return s.view(-1, *([1] * (like.dim() - 1)))

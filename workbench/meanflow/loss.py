"""The MeanFlow objective (Geng et al. 2025), a pure function of its inputs.

Convention: z_t = (1 - t) x + t e, v = e - x, r <= t; net(z, t, r, labels) predicts the average
velocity u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds. The MeanFlow identity (Eq. 6)
    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = v d_z u + d_t u,
gives the regression target u_tgt = v - (t - r) JVP(u; tangent (v, 0, 1) over (z, r, t)) (Eq. 10).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.func import jvp

from .jvp import recorded_layer_outputs, time_derivative

if TYPE_CHECKING:
    from workbench.config import MeanFlowConfig

Net = Callable[..., torch.Tensor]

# Tangent over (z, r, t) as (uses v, dr, dt) (Table 1b); only (v,0,1) is the true d/dt u.
TANGENTS = {"(v,0,1)": (1.0, 0.0, 1.0), "(v,0,0)": (1.0, 0.0, 0.0), "(v,1,0)": (1.0, 1.0, 0.0), "(v,1,1)": (1.0, 1.0, 1.0)}
JVP_MODES = ("auto", "tangent", "subset", "whole")  # how meanflow_loss computes Eq. 10, same results


def _expand(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against a batch shaped like `like`."""
    return s.view(-1, *([1] * (like.dim() - 1)))


def guided_velocity(
    net: Net, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None,
    dropped: torch.Tensor | None, config: MeanFlowConfig,
) -> torch.Tensor:
    """v~ = w v + kappa u(z, t, t | c) + (1 - w - kappa) u(z, t, t | null) (Eq. 13 / 19), no gradient.

    Applied only where t is in [cfg_t_lo, cfg_t_hi] and the label was not dropped; elsewhere v.
    """
    omega, kappa = config.cfg_omega, config.cfg_kappa
    if labels is None or (omega == 1.0 and kappa == 0.0):
        return v
    with torch.no_grad():
        null = torch.full_like(labels, net.num_classes)
        v_tilde = omega * v + (1.0 - omega - kappa) * net(z, t, t, null)
        if kappa != 0.0:
            v_tilde = v_tilde + kappa * net(z, t, t, labels)
    guided = (t >= config.cfg_t_lo) & (t <= config.cfg_t_hi)
    if dropped is not None:
        guided = guided & ~dropped
    return torch.where(_expand(guided, v), v_tilde, v)


def adaptive_weight(err: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """w = 1 / (||Delta||^2 + c)^p, stop-gradient (Sec. 4.3); p = 0 is plain squared L2."""
    return 1.0 / (err.detach() + c) ** p


def meanflow_loss(
    net: Net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, noise: torch.Tensor,
    config: MeanFlowConfig, labels: torch.Tensor | None = None, dropped: torch.Tensor | None = None,
    jvp_mode: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MeanFlow loss for data x (B, ...), times t >= r (B,), noise e like x.

    labels (B,) ints and dropped (B,) bools (class dropout: those samples get the null class
    net.num_classes and the unguided target). Returns (scalar loss, detached metrics).

    jvp_mode picks how the JVP of Eq. 10 is computed; all give the same loss and gradients
    (tests/test_fast_loss.py), they differ in cost (benchmarks/train_step.py):
      "tangent": u from one ordinary forward over the batch (the graph Flow Matching builds) and
                 d/dt u from a gradient-free forward-mode pass over the r != t samples only (for
                 r = t the term is multiplied by t - r = 0) that reuses the forward's layer
                 outputs as its primals (meanflow/jvp.py). The fastest.
      "subset":  a plain forward for r = t samples, one JVP that also yields u (with gradient)
                 for the r != t samples. u and d/dt u come from the same pass, so it is exact
                 with dropout too.
      "whole":   one JVP over the whole batch: Eq. 10 as written.
      "auto":    "tangent", or "subset" if the network has active dropout (two passes would
                 draw two dropout masks).
    """
    if jvp_mode not in JVP_MODES:
        raise ValueError(f"jvp_mode {jvp_mode!r} not in {JVP_MODES}")
    if jvp_mode == "auto":
        jvp_mode = "subset" if _has_active_dropout(net) else "tangent"
    z = (1 - _expand(t, x)) * x + _expand(t, x) * noise
    v = noise - x
    if labels is not None and dropped is not None:
        labels = torch.where(dropped, torch.full_like(labels, net.num_classes), labels)
    v_tilde = guided_velocity(net, z, t, v, labels, dropped, config)

    needs_jvp = r != t
    if jvp_mode == "whole" or (jvp_mode == "subset" and needs_jvp.all()):
        u, u_tgt = prediction_and_target(net, z, t, r, v_tilde, labels, config.tangent)
    elif not needs_jvp.any():  # a Flow Matching batch
        u, u_tgt = net(z, t, r, labels), v_tilde
    elif jvp_mode == "tangent":
        with recorded_layer_outputs(net) as outputs:
            u = net(z, t, r, labels)
        mean = needs_jvp.nonzero().squeeze(1)
        t_mean, r_mean, v_mean = t[mean], r[mean], v_tilde[mean]
        _, dr, dt = TANGENTS[config.tangent]
        dudt = time_derivative(net, z[mean], t_mean, r_mean, v_mean, _pick(labels, mean), dr, dt,
                               layer_outputs=outputs, rows=mean)
        u_tgt = v_tilde.index_put((mean,), v_mean - _expand(t_mean - r_mean, dudt) * dudt)
    else:
        flow, mean = (~needs_jvp).nonzero().squeeze(1), needs_jvp.nonzero().squeeze(1)
        u_mean, tgt_mean = prediction_and_target(net, z[mean], t[mean], r[mean], v_tilde[mean], _pick(labels, mean),
                                                 config.tangent)
        u_flow = net(z[flow], t[flow], r[flow], _pick(labels, flow))
        order = torch.argsort(torch.cat([flow, mean]))  # back to batch order
        u, u_tgt = torch.cat([u_flow, u_mean])[order], torch.cat([v_tilde[flow], tgt_mean])[order]

    err = (u - u_tgt).pow(2).flatten(1).sum(dim=1)  # summed over data dimensions
    weight = adaptive_weight(err, config.adaptive_p, config.adaptive_c)
    loss = (weight * err).mean()
    metrics = {"loss": loss.detach(), "mse": err.detach().mean(), "weight_mean": weight.mean(),
               "frac_r_neq_t": needs_jvp.float().mean()}
    return loss, metrics


def _pick(a: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if a is None else a[index]


def _has_active_dropout(net: Net) -> bool:
    return isinstance(net, nn.Module) and net.training and any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules())


def prediction_and_target(
    net: Net, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v_tilde: torch.Tensor,
    labels: torch.Tensor | None, tangent: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u = net(z, t, r) and u_tgt = v~ - (t - r) JVP(u; tangent), in one forward-mode pass (Eq. 10).

    The JVP stays fp32 even under bf16 autocast; the target is detached (stop-gradient)."""
    _, dr, dt = TANGENTS[tangent]
    with torch.autocast(z.device.type, enabled=False):
        u, dudt = jvp(
            lambda z_, r_, t_: net(z_, t_, r_, labels),
            (z, r, t),
            (v_tilde, torch.full_like(r, dr), torch.full_like(t, dt)),
        )
    return u, (v_tilde - _expand(t - r, z) * dudt).detach()

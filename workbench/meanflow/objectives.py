"""The objectives that followed MeanFlow, each a pure function beside meanflow_loss (meanflow/loss.py), with the
same inputs and outputs; `meanflow.objective` picks one (OBJECTIVES). Equations in the workbench's convention
(z_t = (1 - t) x + t e, t = 0 data, v = e - x, r <= t).

  meanflow       Eq. 10 of Geng et al. 2025: u_tgt = v - (t - r) sg(d/dt u).
  mmf            Modular MeanFlow (arXiv 2508.17426, no official code; from its abstract): the d/dt u term
                 modulated, u_tgt = v - (t - r) SG_lambda[d/dt u] with SG_lambda[a] = lambda a + (1 - lambda) sg(a),
                 lambda warmed up linearly over mmf_warmup steps; lambda = 0 is MeanFlow.
  splitmeanflow  SplitMeanFlow (arXiv 2507.16884, no official code): interval splitting with s = (1 - l) t + l r,
                 l ~ U(0, 1): u_tgt = sg[l u(z_t, s, t) + (1 - l) u(z_s, r, s)], z_s = z_t - (t - s) u(z_t, s, t),
                 and u_tgt = v on the r = t rows (the boundary condition); no JVP.
  alphaflow      alpha-Flow (arXiv 2510.20771, Eq. 7 and Sec. 3.3; snap-research/alphaflow src/training/loss.py at
                 b0fef77, AlphaFlowLoss): with s = t - alpha (t - r) and z_s = z_t - alpha (t - r) v,
                 u_tgt = alpha v + (1 - alpha) sg(u(z_s, r, s)) on the r < t rows (weight alpha), v on the r = t rows
                 (weight 1); alpha from 1 to 0 by a sigmoid over a window of steps (alpha_at). alpha = 0 is MeanFlow.
  imf            Improved MeanFlow (arXiv 2512.02012, Sec. 4; Lyy-iiis/imeanflow imf.py at a1cc3a9, iMeanFlow.forward):
                 the compound velocity V = u + (t - r) sg(d/dt u) regressed on sg(v~), d/dt u along the tangent
                 (v_c, 0, 1) with v_c = u(z_t, t, t | c) the network's own conditional velocity; guidance
                 v~ = v + (1 - 1/omega)(v_c - v_u). With v_c = e - x it is the MeanFlow loss.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .dudt import TANGENTS, DuDt, auto, whole_batch
from .loss import Net, _expand, adaptive_weight, guided_velocity, meanflow_loss, null_dropped, regression, tangent_velocity

if TYPE_CHECKING:
    from workbench.config import MeanFlowConfig
    from workbench.config.objectives import AlphaFlowConfig

ALPHA_SNAP = 0.005  # alpha below it is 0, above 1 - it is 1 (the authors' clamp_value in every alpha-Flow config)


def mmf_lambda(config: MeanFlowConfig, step: int) -> float:
    """lambda at a training step: mmf_lambda * min(1, step / mmf_warmup) (mmf_warmup 0: mmf_lambda throughout)."""
    if config.mmf_warmup == 0:
        return config.mmf_lambda
    return config.mmf_lambda * min(1.0, step / config.mmf_warmup)


def mmf_loss(net: Net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, e: torch.Tensor, config: MeanFlowConfig,
             labels: torch.Tensor | None = None, dropped: torch.Tensor | None = None,
             cond: dict[str, torch.Tensor] | None = None, step: int = 0, **meanflow: object
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Modular MeanFlow: the MeanFlow loss with a share lambda (mmf_lambda at `step`) of the gradient through the
    d/dt u term of the target. lambda = 0 is meanflow_loss itself (its fast d/dt u strategies, `meanflow` passed
    on); otherwise d/dt u comes from one torch.func.jvp over the batch, whose output carries the gradient."""
    lam = mmf_lambda(config, step)
    if lam == 0.0:
        return _meanflow_logging("mmf_lambda", net, x, t, r, e, config, labels, dropped, cond, meanflow)
    labels, z, v = _noised(net, x, t, e, config, labels, dropped, cond)
    tangent = tangent_velocity(net, z, t, v, labels, config.beta, cond)
    u, du_dt = whole_batch(net, z, t, r, tangent, labels, TANGENTS[config.tangent], cond)  # du_dt with gradient
    modulated = lam * du_dt + (1.0 - lam) * du_dt.detach()                              # SG_lambda
    u_tgt = v.detach() - _expand(t - r, x) * modulated
    loss, metrics = regression(u, u_tgt, t, r, config)
    return loss, metrics | {"mmf_lambda": torch.full((), lam, device=x.device)}


def splitmeanflow_loss(net: Net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, e: torch.Tensor,
                       config: MeanFlowConfig, labels: torch.Tensor | None = None, dropped: torch.Tensor | None = None,
                       cond: dict[str, torch.Tensor] | None = None, split: torch.Tensor | None = None, **_: object
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SplitMeanFlow: u(z_t, r, t) regressed on the split-interval target (module docstring); `split` (B,) the
    draws l ~ U(0, 1), made with the batch (workbench/run/train.py draw_batch) so that a resumed run repeats them."""
    if split is None:
        raise ValueError("splitmeanflow_loss needs the per-sample split draws (split, shape (B,))")
    labels, z, v = _noised(net, x, t, e, config, labels, dropped, cond)
    lam = split.to(t.dtype)
    s = (1 - lam) * t + lam * r
    with torch.no_grad():
        u_long = net(z, t, s, labels, **(cond or {}))                  # u(z_t, s, t): from t back to s
        z_s = z - _expand(t - s, x) * u_long
        u_short = net(z_s, s, r, labels, **(cond or {}))               # u(z_s, r, s): from s back to r
        u_tgt = _expand(lam, x) * u_long + _expand(1 - lam, x) * u_short
        u_tgt = torch.where(_expand(r == t, x), v, u_tgt)              # the boundary u(z_t, t, t) = v
    u = net(z, t, r, labels, **(cond or {}))
    return regression(u, u_tgt, t, r, config)


def alpha_at(config: AlphaFlowConfig, step: int) -> float:
    """alpha at a training step: 1 before config.start, 0 from config.end, between them
    1 - sigmoid(gamma (step - middle) / (end - start)) (the authors' get_ratio, 'sigmoid' from 1 to 0), snapped to
    0 or 1 within ALPHA_SNAP of them."""
    if step >= config.end:
        return 0.0
    if step < config.start:
        return 1.0
    progress = (step - (config.start + config.end) / 2) / (config.end - config.start)
    alpha = 1.0 - 1.0 / (1.0 + math.exp(-config.gamma * progress))
    return 0.0 if alpha < ALPHA_SNAP else 1.0 if alpha > 1 - ALPHA_SNAP else alpha


def alphaflow_loss(net: Net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, e: torch.Tensor, config: MeanFlowConfig,
                   labels: torch.Tensor | None = None, dropped: torch.Tensor | None = None,
                   cond: dict[str, torch.Tensor] | None = None, step: int = 0, **meanflow: object
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha-Flow (module docstring) at alpha = alpha_at(config.alphaflow, step). alpha = 0 is meanflow_loss itself
    (its d/dt u strategies, `meanflow` passed on), as in the authors' code, where alpha = 0 makes every row a JVP
    row. The weight is the adaptive weight of meanflow.adaptive_p and adaptive_c times alpha on the r < t rows: the
    authors' alpha / sg(mean of squares + eps) is p = 1 with c = eps times the dimension, over the sum of squares."""
    alpha = alpha_at(config.alphaflow, step)
    if alpha == 0.0:
        return _meanflow_logging("alpha", net, x, t, r, e, config, labels, dropped, cond, meanflow)
    labels, z, v = _noised(net, x, t, e, config, labels, dropped, cond)
    interval = r != t
    with torch.no_grad():
        if alpha == 1.0:
            u_tgt = v                                                   # trajectory flow matching: (t - dt - r) = 0
        else:
            dt = alpha * (t - r)
            u_next = net(z - _expand(dt, x) * v, t - dt, r, labels, **(cond or {}))   # u(z_s, r, s)
            u_tgt = torch.where(_expand(interval, x), alpha * v + (1 - alpha) * u_next, v)
        if config.alphaflow.clamp > 0:
            u_tgt = torch.where(_expand(interval, x), u_tgt.clamp(-config.alphaflow.clamp, config.alphaflow.clamp), u_tgt)
    u = net(z, t, r, labels, **(cond or {}))
    loss, metrics = regression(u, u_tgt, t, r, config, torch.ones_like(t).masked_fill(interval, alpha))
    return loss, metrics | {"alpha": torch.full((), alpha, device=x.device)}


def imf_loss(net: Net, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, e: torch.Tensor, config: MeanFlowConfig,
             labels: torch.Tensor | None = None, dropped: torch.Tensor | None = None, dudt: DuDt = auto,
             cond: dict[str, torch.Tensor] | None = None, rows: torch.Tensor | None = None,
             guidance: torch.Tensor | None = None, **_: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Improved MeanFlow (module docstring): the authors' loss_u = w(||V - sg(v_g)||^2) and config.imf.v_loss times
    their loss_v = w(||v - sg(v_g)||^2), v the network's v-head at (z, t, r) (imf.tangent='head'; the boundary
    u(z, t, t) otherwise). v_c: the v-head or the boundary at (z, t, t), no gradient.

    Guidance (their guidance_fn): per row a scale omega on an interval [t_min, t_max], and w = omega where t lies in
    it, else 1; v_g = v + (1 - 1/w)(v_c - v_u), v_c at the label, v_u at the null class. With imf.guidance='fixed'
    omega is cfg_omega on [cfg_t_lo, cfg_t_hi] for every row and the network sees none of it. Otherwise `guidance`
    holds the rows (omega, t_min, t_max) drawn with the batch (workbench/run/train.py draw_guidance): u and the
    v-head see them, v_c is taken at (w, 0, 1) and v_u at (1, 0, 1) (their v_cond_fn and v_fn). Dropped labels get
    v_g = v (their cond_drop). As in their code, v_c sees the label before dropout (guidance_fn runs before
    cond_drop) and u the label after it."""
    z = (1 - _expand(t, x)) * x + _expand(t, x) * e
    v = e - x
    cond = cond or {}
    head = {"head": "v"} if config.imf.tangent == "head" else {}       # the v-head, or the boundary of the u-head
    if config.imf.guidance == "fixed":
        omega, t_lo, t_hi, fed = torch.full_like(t, config.cfg_omega), config.cfg_t_lo, config.cfg_t_hi, {}
    elif guidance is None:
        raise ValueError(f"imf_loss with imf.guidance={config.imf.guidance!r} needs the per-sample guidance draws "
                         "(guidance, shape (B, 3): omega, t_min, t_max)")
    else:
        (omega, t_lo, t_hi), fed = guidance.to(t.dtype).unbind(1), {"guidance": guidance}
    guided = labels is not None and (config.imf.guidance != "fixed" or config.cfg_omega != 1.0)
    w = torch.where((t >= t_lo) & (t <= t_hi), omega, torch.ones_like(omega))
    with torch.no_grad():
        if guided:  # v_c and v_u from one call over the batch twice (their v_fn)
            null = torch.full_like(labels, net.num_classes)
            both = net(*(torch.cat([a, a]) for a in (z, t, t)), torch.cat([labels, null]),
                       **{key: torch.cat([a, a]) for key, a in cond.items()}, **head,
                       **_choice(fed, torch.cat([w, torch.ones_like(w)])))
            v_c, v_u = both.chunk(2)
        elif config.imf.tangent != "v":
            v_c = net(z, t, t, labels, **cond, **head, **_choice(fed, w))
    labels = null_dropped(net, labels, dropped)
    with torch.no_grad():
        tangent = v_c if config.imf.tangent != "v" else v
        v_g = v
        if guided:
            rows_guided = w != 1.0
            if dropped is not None:
                rows_guided = rows_guided & ~dropped
            gain = _expand(1 - 1 / w, v) if fed else 1 - 1 / config.cfg_omega     # fixed: as a Python number
            v_g = torch.where(_expand(rows_guided, v), v + gain * (v_c - v_u), v)
    u, du_dt = dudt(net, z, t, r, tangent, labels, TANGENTS[config.tangent], cond | fed, rows)
    compound = u + _expand(t - r, x) * du_dt.detach()
    loss, metrics = regression(compound, v_g, t, r, config)
    if config.imf.v_loss > 0:
        v_net = net(z, t, r, labels, **cond, **fed, head="v") if head else net(z, t, t, labels, **cond, **fed)
        err = (v_net - v_g).pow(2).flatten(1).sum(dim=1)
        loss_v = (adaptive_weight(err, config.adaptive_p, config.adaptive_c) * err).mean()
        loss = loss + config.imf.v_loss * loss_v
        metrics = metrics | {"loss": loss.detach(), "loss_v": loss_v.detach()}
    return loss, metrics


def _choice(fed: dict[str, torch.Tensor], w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The guidance inputs of an instantaneous velocity at scale w (rows (w, 0, 1): no interval), where the
    network takes guidance inputs (`fed` not empty)."""
    if not fed:
        return {}
    return {"guidance": torch.stack([w, torch.zeros_like(w), torch.ones_like(w)], dim=1).to(fed["guidance"].dtype)}


def _meanflow_logging(name: str, net: Net, x, t, r, e, config: MeanFlowConfig, labels, dropped, cond, meanflow: dict
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """meanflow_loss itself (its d/dt u strategies, `meanflow` passed on), logging the schedule `name` at 0."""
    loss, metrics = meanflow_loss(net, x, t, r, e, config, labels=labels, dropped=dropped, cond=cond, **meanflow)
    return loss, metrics | {name: torch.zeros((), device=x.device)}


def _noised(net: Net, x, t, e, config: MeanFlowConfig, labels, dropped, cond):
    """(labels with the dropped ones null, z_t, the target velocity v or its guided v~ (Eq. 13))."""
    labels = null_dropped(net, labels, dropped)
    z = (1 - _expand(t, x)) * x + _expand(t, x) * e
    return labels, z, guided_velocity(net, z, t, e - x, labels, dropped, config, cond)


def objective_conflict(config: MeanFlowConfig, defaults: dict) -> str | None:
    """Why the objective's options cannot act together (the config refuses them), or None."""
    if config.objective == "mmf" and config.dudt == "finite_difference" and config.mmf_lambda > 0:
        return ("objective='mmf' with mmf_lambda > 0 back-propagates through d/dt u, which needs dudt='jvp' (finite "
                "differences carry no gradient)")
    if config.objective != "alphaflow" and config.alphaflow != defaults["alphaflow"]:
        return (f"meanflow.alphaflow.* is set ({config.alphaflow}) but objective={config.objective!r}: set "
                "objective='alphaflow' or leave the section at its defaults")
    if config.objective != "imf" and config.imf != defaults["imf"]:
        return (f"meanflow.imf.* is set ({config.imf}) but objective={config.objective!r}: set objective='imf' or "
                "leave the section at its defaults")
    if config.objective == "imf" and config.imf.guidance != "fixed" and (
            config.cfg_omega != 1.0 or (config.cfg_t_lo, config.cfg_t_hi) != (0.0, 1.0)):
        return (f"meanflow.imf.guidance={config.imf.guidance!r} draws omega (and the interval) per example and takes the "
                "sampling guidance from eval.omega (and eval.interval): leave meanflow.cfg_omega at 1 and cfg_t_lo, "
                "cfg_t_hi at 0, 1")
    if config.objective == "imf" and config.imf.guidance == "fixed" and config.imf.omega_max != defaults["imf"].omega_max:
        return (f"meanflow.imf.omega_max={config.imf.omega_max} bounds the drawn guidance scales, but "
                "meanflow.imf.guidance='fixed' draws none: set meanflow.imf.guidance to omega or interval")
    if config.objective == "imf" and (config.cfg_kappa != 0.0 or config.beta != 1.0):
        return ("objective='imf' takes its guidance from cfg_omega alone (v~ = v + (1 - 1/omega)(v_c - v_u)) and its "
                "tangent from meanflow.imf.tangent, so cfg_kappa and beta must stay at 0 and 1")
    if config.objective != "meanflow" and config.curriculum != defaults["curriculum"]:
        return (f"meanflow.curriculum.* is set ({config.curriculum}), an option of the MeanFlow objective, but "
                f"objective={config.objective!r}")
    if config.objective == "splitmeanflow" and config.ratio == 1.0:
        return ("objective='splitmeanflow' with ratio=1.0 has no r = t rows, the only ones whose target is v: every "
                "self-consistent field (u = 0 among them) would be a minimum; set meanflow.ratio below 1")
    if config.objective == "splitmeanflow":
        unused = {k: getattr(config, k) for k in ("dudt", "beta", "tangent") if getattr(config, k) != defaults[k]}
        if unused:
            return (f"objective='splitmeanflow' computes no d/dt u, so {', '.join(unused)} "
                    f"({', '.join(f'{k}={v!r}' for k, v in unused.items())}) would have no effect")
    return None


OBJECTIVES = {"meanflow": meanflow_loss, "mmf": mmf_loss, "splitmeanflow": splitmeanflow_loss,
              "alphaflow": alphaflow_loss, "imf": imf_loss}

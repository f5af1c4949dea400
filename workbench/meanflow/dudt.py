"""How the MeanFlow loss gets u and d/dt u: four JVP strategies with the same results, and central finite
differences.

A strategy dudt(net, z, t, r, v, labels, tangent, cond, rows) returns u = net(z, t, r, labels, **cond) (with gradient) and
the JVP of net along (v, dr, dt) over (z, r, t) (no gradient; zeros where r = t, whose target term is
multiplied by t - r = 0). All four give the same loss and gradients (tests/test_fast_loss.py) and
differ in cost (benchmarks/train_step.py):
  whole_batch   one torch.func.jvp over the whole batch: Eq. 10 as written, the reference;
  jvp_rows_only a plain forward for the r = t rows and one torch.func.jvp (u with gradient) for the
                r != t rows; u and d/dt u come from one pass, so it is exact with dropout too;
  tangent_pass  u from one ordinary forward over the batch (the graph Flow Matching builds) and
                d/dt u from time_derivative over the r != t rows only, reusing the forward's layer
                outputs; the fastest;
  auto          tangent_pass, or jvp_rows_only if the network has active dropout (two passes would
                draw two dropout masks). The default.
central_difference(d) returns a fifth strategy without forward-mode AD (meanflow.dudt = finite_difference): two
more forwards over the r != t rows, an approximation whose error tests/test_objectives.py measures.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .jvp import recorded_layer_outputs, time_derivative

Net = Callable[..., torch.Tensor]
Tensor = torch.Tensor
DuDt = Callable[..., tuple[Tensor, Tensor]]  # (net, z, t, r, v, labels, (dr, dt), cond) -> (u, d/dt u)
Cond = dict[str, Tensor] | None  # more per-sample network inputs, e.g. {"augment_labels": (B, 6)}

# The JVP tangent's (dr, dt) beside v over (z, r, t) (Table 1b); only (v,0,1) is the true d/dt u.
TANGENTS = {"(v,0,1)": (0.0, 1.0), "(v,0,0)": (0.0, 0.0), "(v,1,0)": (1.0, 0.0), "(v,1,1)": (1.0, 1.0)}


def split_rows(t: Tensor, r: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(r != t rows, r = t rows) as index tensors on t's device. rows: the r != t rows as CPU indices, known
    where t and r were drawn (workbench/run/train.py), so that no step waits for the device; else found from t
    and r (on a GPU a host synchronisation: nonzero must know its size)."""
    if rows is None:
        rows = (r != t).nonzero().squeeze(1).cpu()
    rest = torch.ones(len(t), dtype=torch.bool)
    rest[rows] = False
    return rows.to(t.device, non_blocking=True), rest.nonzero().squeeze(1).to(t.device, non_blocking=True)


def whole_batch(net: Net, z: Tensor, t: Tensor, r: Tensor, v: Tensor, labels: Tensor | None,
                tangent: tuple[float, float], cond: Cond = None, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """u and its JVP from one torch.func.jvp over the batch (fp32 even under bf16 autocast)."""
    dr, dt = tangent
    with torch.autocast(z.device.type, enabled=False):
        return torch.func.jvp(lambda z_, r_, t_: net(z_, t_, r_, labels, **(cond or {})), (z, r, t),
                              (v, torch.full_like(r, dr), torch.full_like(t, dt)))


def jvp_rows_only(net: Net, z: Tensor, t: Tensor, r: Tensor, v: Tensor, labels: Tensor | None,
                  tangent: tuple[float, float], cond: Cond = None, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A plain forward for the r = t rows, whole_batch for the r != t rows."""
    jvp_rows, fm_rows = split_rows(t, r, rows)
    if not len(fm_rows):
        return whole_batch(net, z, t, r, v, labels, tangent, cond)
    if not len(jvp_rows):
        return net(z, t, r, labels, **(cond or {})), torch.zeros_like(v)
    u_jvp, du_dt = whole_batch(net, z[jvp_rows], t[jvp_rows], r[jvp_rows], v[jvp_rows], _pick(labels, jvp_rows),
                               tangent, pick_cond(cond, jvp_rows))
    u_fm = net(z[fm_rows], t[fm_rows], r[fm_rows], _pick(labels, fm_rows), **(pick_cond(cond, fm_rows) or {}))
    order = torch.argsort(torch.cat([fm_rows, jvp_rows]))  # back to batch order
    return torch.cat([u_fm, u_jvp])[order], torch.cat([torch.zeros_like(v[fm_rows]), du_dt])[order]


def tangent_pass(net: Net, z: Tensor, t: Tensor, r: Tensor, v: Tensor, labels: Tensor | None,
                 tangent: tuple[float, float], cond: Cond = None, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """An ordinary forward for u, then time_derivative over the r != t rows on its recorded layer outputs."""
    jvp_rows = split_rows(t, r, rows)[0]
    if not len(jvp_rows):
        return net(z, t, r, labels, **(cond or {})), torch.zeros_like(v)
    with recorded_layer_outputs(net) as outputs:
        u = net(z, t, r, labels, **(cond or {}))
    du_dt = time_derivative(net, z[jvp_rows], t[jvp_rows], r[jvp_rows], v[jvp_rows], _pick(labels, jvp_rows),
                            *tangent, layer_outputs=outputs, rows=jvp_rows, cond=pick_cond(cond, jvp_rows))
    return u, torch.zeros_like(v).index_put((jvp_rows,), du_dt)


def auto(net: Net, z: Tensor, t: Tensor, r: Tensor, v: Tensor, labels: Tensor | None,
         tangent: tuple[float, float], cond: Cond = None, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """tangent_pass, or jvp_rows_only for a network with active dropout."""
    strategy = jvp_rows_only if _has_active_dropout(net) else tangent_pass
    return strategy(net, z, t, r, v, labels, tangent, cond, rows)


def central_difference(d: float) -> DuDt:
    """The strategy that takes d/dt u as [u(z + d v, r + d dr, t + d dt) - u(z - d v, r - d dr, t - d dt)] / 2d on the
    r != t rows (no gradient; MeanFlow Transformers, arXiv 2511.13019, sony/mf-rae), beside u from one forward."""
    def strategy(net: Net, z: Tensor, t: Tensor, r: Tensor, v: Tensor, labels: Tensor | None,
                 tangent: tuple[float, float], cond: Cond = None, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if _has_active_dropout(net):
            raise ValueError("meanflow.dudt=finite_difference: the network has active dropout, which would draw "
                             "other masks in the two extra forwards; set its dropout to 0 or use the JVP")
        u = net(z, t, r, labels, **(cond or {}))
        jvp_rows = split_rows(t, r, rows)[0]
        if not len(jvp_rows):
            return u, torch.zeros_like(v)
        dr, dt = tangent
        z_, t_, r_, v_ = z[jvp_rows], t[jvp_rows], r[jvp_rows], v[jvp_rows]
        labels_, cond_ = _pick(labels, jvp_rows), pick_cond(cond, jvp_rows) or {}
        with torch.no_grad():
            ahead = net(z_ + d * v_, t_ + d * dt, r_ + d * dr, labels_, **cond_)
            behind = net(z_ - d * v_, t_ - d * dt, r_ - d * dr, labels_, **cond_)
        return u, torch.zeros_like(v).index_put((jvp_rows,), (ahead - behind) / (2 * d))
    return strategy


JVP_MODES: dict[str, DuDt] = {"auto": auto, "tangent": tangent_pass, "subset": jvp_rows_only, "whole": whole_batch}


def _pick(a: Tensor | None, index: Tensor) -> Tensor | None:
    return None if a is None else a[index]


def pick_cond(cond: Cond, index: Tensor) -> Cond:
    """The rows `index` of every per-sample conditioning tensor."""
    return None if cond is None else {key: _pick(value, index) for key, value in cond.items()}


def _has_active_dropout(net: Net) -> bool:
    return isinstance(net, nn.Module) and net.training and any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules())


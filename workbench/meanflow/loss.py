"""The MeanFlow objective (Geng et al. 2025), a pure function of its inputs.

Convention: z_t = (1 - t) x + t e, v = e - x, r <= t; net(z, t, r, labels) predicts the average
velocity u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds. The MeanFlow identity (Eq. 6)
    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt u = v d_z u + d_t u,
gives the regression target u_tgt = v - (t - r) JVP(u; tangent (v, 0, 1) over (z, r, t)) (Eq. 10).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import jvp
from torch.overrides import TorchFunctionMode

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
                 r = t the term is multiplied by t - r = 0). The fastest.
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
        # r != t samples first, so that they are a prefix of every layer output of the forward
        order = torch.argsort((~needs_jvp).to(torch.uint8), stable=True)
        z, t, r, v_tilde, labels = z[order], t[order], r[order], v_tilde[order], _pick(labels, order)
        k = int(needs_jvp.sum())
        with recorded_layer_outputs(net) as outputs:
            u = net(z, t, r, labels)
        dudt = time_derivative(net, z[:k], t[:k], r[:k], v_tilde[:k], _pick(labels, slice(0, k)), config.tangent,
                               layer_outputs=outputs)
        u_tgt = torch.cat([v_tilde[:k] - _expand(t[:k] - r[:k], dudt) * dudt, v_tilde[k:]])
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


class _PlainWeightLayers(TorchFunctionMode):
    """Within a gradient-free forward-mode pass over the first `rows` samples of a batch:
    - F.linear / F.conv2d with plain (non-dual) weights run as ordinary calls: the tangent is
      layer(dx) without the bias (forward AD's own formula also multiplies the input by the weights'
      zero tangent), and the primal is the same layer's output in the ordinary forward over the whole
      batch (`layer_outputs`, its first rows) where one was recorded, else layer(x);
    - a dual tensor plus, minus, times or divided by a Python number: the primal op on the primal and
      the tangent passed on (or scaled), as forward AD's formulas do; torch 2.14's forward AD runs
      these through Python reference code (0.1 to 0.27 ms each on CPU, 30x the op).
    """

    def __init__(self, level: int, layer_outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None, rows: int = 0):
        super().__init__()
        self.level, self.layer_outputs, self.rows, self.next = level, layer_outputs or [], rows, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear or func is F.conv2d:
            return self._layer(func, *args, **(kwargs or {}))
        scaling = _SCALAR_OPS.get(func)
        if scaling is not None and not kwargs and len(args) == 2 and isinstance(args[1], (int, float)):
            primal, dx = fwAD.unpack_dual(args[0], level=self.level)
            if dx is not None:
                return _make_dual(func(primal, args[1]), func(dx, args[1]) if scaling else dx, self.level)
        return func(*args, **(kwargs or {}))

    def _layer(self, func, x, weight, bias=None, *rest, **kwargs):
        if _is_dual(weight, self.level) or _is_dual(bias, self.level):
            return func(x, weight, bias, *rest, **kwargs)
        primal, dx = fwAD.unpack_dual(x, level=self.level)
        out = self._recorded(weight, primal)
        if out is None:
            out = func(primal, weight, bias, *rest, **kwargs)
        return out if dx is None else _make_dual(out, func(dx, weight, None, *rest, **kwargs), self.level)

    def _recorded(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """The next recorded output if it is this layer's (same weight, dtype) over >= rows samples."""
        if self.next < len(self.layer_outputs):
            layer_weight, out = self.layer_outputs[self.next]
            if layer_weight is weight and out.dtype == x.dtype and out.shape[0] >= self.rows == x.shape[0]:
                self.next += 1
                return out.detach()[:self.rows]
        return None


# op with a Python number -> whether the tangent goes through the op too (x * c, x / c) or not (x + c, x - c)
_SCALAR_OPS = {
    **dict.fromkeys((torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.add, torch.add,
                     torch.Tensor.__sub__, torch.Tensor.sub, torch.sub), False),
    **dict.fromkeys((torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul, torch.mul,
                     torch.Tensor.__truediv__, torch.Tensor.div, torch.div), True),
}


@contextmanager
def recorded_layer_outputs(net: Net) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every nn.Linear / nn.Conv2d call of net appends (weight, output) to the
    yielded list (forward hooks, removed on exit); time_derivative reuses them as primals."""
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))] if isinstance(net, nn.Module) else []
    hooks = [m.register_forward_hook(lambda m, args, out: outputs.append((m.weight, out))) for m in layers]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def _make_dual(primal: torch.Tensor, tangent: torch.Tensor, level: int) -> torch.Tensor:
    """fwAD.make_dual without its per-call checks (an environment variable lookup among them):
    3 us instead of 14 here, and a JVP makes one per layer."""
    return torch._VF._make_dual(primal, tangent, level=level)


@contextmanager
def _zero_tangents(net: Net, level: int) -> Iterator[None]:
    """Within the block (inside a dual level), net's float parameters and buffers outside linear and
    conv layers are dual tensors with zero tangents; what torch.func.functional_call does, without
    its walk over the module tree on every call (0.1 to 0.4 ms per JVP here)."""
    slots = [(table, name, table[name]) for table, name in _tensor_slots(net)]
    try:
        for table, name, tensor in slots:
            table[name] = _make_dual(tensor, torch.zeros_like(tensor), level)
        yield
    finally:
        for table, name, tensor in slots:
            table[name] = tensor


_SLOTS: weakref.WeakKeyDictionary[nn.Module, list[tuple[dict, str]]] = weakref.WeakKeyDictionary()


def _tensor_slots(net: Net) -> list[tuple[dict, str]]:
    """(module._parameters or module._buffers, name) of every float tensor of net outside nn.Linear
    and nn.Conv2d, found once per network."""
    if not isinstance(net, nn.Module):
        return []
    if net not in _SLOTS:
        _SLOTS[net] = [(table, name) for module in net.modules() if not isinstance(module, (nn.Linear, nn.Conv2d))
                       for table in (module._parameters, module._buffers)
                       for name, tensor in table.items() if tensor is not None and tensor.is_floating_point()]
    return _SLOTS[net]


def _is_dual(a: torch.Tensor | None, level: int) -> bool:
    return a is not None and fwAD.unpack_dual(a, level=level).tangent is not None


def time_derivative(
    net: Net, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v_tilde: torch.Tensor,
    labels: torch.Tensor | None, tangent: str, layer_outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """JVP(u; tangent) = d/dt u(z, r, t) for tangent (v,0,1): forward mode, fp32, no gradient.

    The weights of linear and conv layers stay plain tensors, and _PlainWeightLayers computes those
    layers' tangents; the JVP of a quarter batch took 15% (MLP, U-Net) to 35% (DiT) less time than
    with every weight dual. The other parameters and float buffers (norms, embeddings, sinusoidal
    frequencies) enter as dual tensors with zero tangents: left plain, every op that mixes them
    with a dual tensor builds a zero tensor whose shape torch 2.14 works out with Python reference
    code (about 0.1 ms per op on CPU).
    """
    _, dr, dt = TANGENTS[tangent]
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False), fwAD.dual_level() as level:
        inputs = (fwAD.make_dual(z, v_tilde), fwAD.make_dual(t, torch.full_like(t, dt)),
                  fwAD.make_dual(r, torch.full_like(r, dr)), labels)
        with _zero_tangents(net, level), _PlainWeightLayers(level, layer_outputs, z.shape[0]):
            out = net(*inputs)
        dudt = fwAD.unpack_dual(out).tangent
    return torch.zeros_like(out) if dudt is None else dudt  # None: the output ignores (z, r, t)

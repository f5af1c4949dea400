"""d/dt u for the MeanFlow target, fast: a gradient-free forward-mode JVP of the network.

time_derivative runs the network once on dual tensors (torch.autograd.forward_ad). Five things keep
that pass close to the cost of the tangent alone (measured on CPU in benchmarks/train_step.py; each one
is checked against torch.func.jvp in tests/test_fast_loss.py):

1. nn.Linear and nn.Conv2d keep plain weights: the layer's tangent is layer(dx) without the bias.
   (Forward AD's own formula also multiplies the input by the weights' zero tangent.)
2. Their primal outputs are not recomputed: the loss records every layer output of its ordinary
   forward over the whole batch (recorded_layer_outputs), and the JVP takes the rows of the r != t
   samples. A layer's k-th call in the JVP pass uses its k-th recorded output, so the network must
   call its layers alike for any batch (no batch-dependent control flow) and act on each sample
   alone (no batch norm; no dropout, where auto takes jvp_rows_only).
3. nn.GroupNorm and nn.LayerNorm: the tangent from torch's fused backward kernel (_norm_jvp).
4. The other parameters and float buffers (embeddings, sinusoidal frequencies, positions) become duals
   with zero tangents: left plain, every op that mixes them with a dual builds a zero tensor whose
   shape torch 2.14 works out in Python reference code (about 0.1 ms per op on CPU).
5. For the same reason, a dual plus, minus, times or divided by a Python number (1 + scale, an
   attention scale) is done on primal and tangent separately by a TorchFunctionMode, but only for
   networks whose first JVP showed such an op: the mode costs a Python call on every op.
"""
from __future__ import annotations

import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Net = Callable[..., torch.Tensor]
LayerOutputs = dict[nn.Module, deque[torch.Tensor]]
_LAYERS = (nn.Linear, nn.Conv2d)
_NORMS = (nn.GroupNorm, nn.LayerNorm)

def time_derivative(
    net: Net, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, z_tangent: torch.Tensor,
    labels: torch.Tensor | None, dr: float, dt: float, layer_outputs: LayerOutputs | None = None,
    rows: torch.Tensor | None = None, cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """JVP of net(z, t, r, labels) along (z_tangent, dt, dr): for (v, 1, 0) this is d/dt u(z, r, t).

    fp32 (outside any autocast), no gradient. layer_outputs: from recorded_layer_outputs around an
    ordinary forward over a batch whose samples `rows` (indices) are these; their primals are reused.
    cond: more per-sample inputs passed to net as keywords (no tangent)."""
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False), fwAD.dual_level() as level, ExitStack() as stack:
        inputs = (_make_dual(z, z_tangent, level), _make_dual(t, torch.full_like(t, dt), level),
                  _make_dual(r, torch.full_like(r, dr), level), labels)
        if isinstance(net, nn.Module):
            stack.enter_context(_zero_tangents(net, level))
            stack.enter_context(_layer_tangents(net, level, layer_outputs or {}, rows))
        scalar_ops = _ScalarArithmetic(level) if _SCALAR_ARITHMETIC.get(net, True) else None
        if scalar_ops is not None:
            stack.enter_context(scalar_ops)
        out = net(*inputs, **(cond or {}))
        if scalar_ops is not None and isinstance(net, nn.Module):
            _SCALAR_ARITHMETIC[net] = scalar_ops.seen
        tangent = fwAD.unpack_dual(out, level=level).tangent
    return torch.zeros_like(out) if tangent is None else tangent  # None: the output ignores (z, t, r)


@contextmanager
def recorded_layer_outputs(net: Net) -> Iterator[LayerOutputs]:
    """Within the block, each call of an nn.Linear / nn.Conv2d of net appends its output to
    yielded[layer] (forward hooks, removed on exit)."""
    outputs: LayerOutputs = defaultdict(deque)
    layers = _parts(net).layers if isinstance(net, nn.Module) else []
    hooks = [m.register_forward_hook(lambda m, args, out: outputs[m].append(out)) for m in layers]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def _layer_tangents(net: nn.Module, level: int, layer_outputs: LayerOutputs,
                         rows: torch.Tensor | None) -> Iterator[None]:
    """Within the block, net's linear, conv and norm layers compute (primal, tangent) as in points 1
    to 3 of the module docstring; their forward is replaced on the instance and restored on exit."""
    parts = _parts(net)
    try:
        for layer in parts.layers:
            layer.forward = _layer_jvp(layer, level, layer_outputs.get(layer, deque()), rows)
        for norm in parts.norms:
            norm.forward = _norm_jvp(norm, level)
        yield
    finally:
        for module in (*parts.layers, *parts.norms):
            del module.forward


def _layer_jvp(layer: nn.Module, level: int, recorded: deque[torch.Tensor], rows: torch.Tensor | None) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        primal, dx = fwAD.unpack_dual(x, level=level)
        out = recorded.popleft() if recorded and rows is not None else None
        if out is None or out.dtype != primal.dtype:
            out = type(layer).forward(layer, primal)
        else:
            # a gathered copy, not a slice: a dual view needs a tangent shaped like its base, which
            # forward AD would build by zero-filling a whole-batch tensor for every layer
            out = out.detach().index_select(0, rows)
        if dx is None:
            return out
        if isinstance(layer, nn.Linear):
            return _make_dual(out, F.linear(dx, layer.weight), level)
        return _make_dual(out, layer._conv_forward(dx, layer.weight, None), level)
    return forward


def _norm_jvp(norm: nn.GroupNorm | nn.LayerNorm, level: int) -> Callable:
    """GroupNorm / LayerNorm: the Jacobian of x -> (x - mean) / std over a group is symmetric,
    rstd (I - 11^T / n - x^ x^T / n), so its JVP equals its VJP, which torch's fused backward kernel
    computes; then the elementwise weight. 7x faster than forward AD's formula (GroupNorm of
    32x64x14x14 on CPU, primal included: 0.16 ms against 1.1 ms)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        primal, dx = fwAD.unpack_dual(x, level=level)
        if isinstance(norm, nn.GroupNorm):
            n, c, size = primal.shape[0], primal.shape[1], primal[0, 0].numel()
            out, mean, rstd = torch.native_group_norm(primal, norm.weight, norm.bias, n, c, size, norm.num_groups, norm.eps)
            if dx is None:
                return out
            tangent = torch.ops.aten.native_group_norm_backward(
                dx, primal, mean, rstd, None, n, c, size, norm.num_groups, [True, False, False])[0]
            weight = None if norm.weight is None else norm.weight.view(c, *[1] * (primal.dim() - 2))
        else:
            shape = norm.normalized_shape
            out, mean, rstd = torch.native_layer_norm(primal, shape, norm.weight, norm.bias, norm.eps)
            if dx is None:
                return out
            tangent = torch.ops.aten.native_layer_norm_backward(dx, primal, shape, mean, rstd, None, None,
                                                                [True, False, False])[0]
            weight = norm.weight
        return _make_dual(out, tangent if weight is None else tangent * weight, level)
    return forward


def _make_dual(primal: torch.Tensor, tangent: torch.Tensor, level: int) -> torch.Tensor:
    """fwAD.make_dual without its per-call checks (an environment variable lookup among them):
    3 us instead of 14 here, and a JVP makes one per layer."""
    return torch._VF._make_dual(primal, tangent, level=level)


@contextmanager
def _zero_tangents(net: nn.Module, level: int) -> Iterator[None]:
    """Within the block (inside a dual level), net's float parameters and buffers outside linear and
    conv layers are duals with zero tangents; what torch.func.functional_call does, without its walk
    over the module tree on every call (0.1 to 0.4 ms per JVP here)."""
    slots = [(table, name, table[name]) for table, name in _parts(net).slots]
    try:
        for table, name, tensor in slots:
            table[name] = _make_dual(tensor, torch.zeros_like(tensor), level)
        yield
    finally:
        for table, name, tensor in slots:
            table[name] = tensor


class _Parts(NamedTuple):
    layers: list[nn.Module]  # nn.Linear, nn.Conv2d
    norms: list[nn.Module]  # nn.GroupNorm, nn.LayerNorm
    slots: list[tuple[dict, str]]  # (module._parameters or _buffers, name) of every other float tensor


_PARTS: weakref.WeakKeyDictionary[nn.Module, _Parts] = weakref.WeakKeyDictionary()


def _parts(net: nn.Module) -> _Parts:
    """net's modules sorted for the JVP, found once per network (a walk over the module tree costs
    up to 0.2 ms, every step)."""
    if net not in _PARTS:
        modules = list(net.modules())
        _PARTS[net] = _Parts(
            [m for m in modules if isinstance(m, _LAYERS)], [m for m in modules if isinstance(m, _NORMS)],
            [(table, name) for m in modules if not isinstance(m, (*_LAYERS, *_NORMS))
             for table in (m._parameters, m._buffers)
             for name, tensor in table.items() if tensor is not None and tensor.is_floating_point()])
    return _PARTS[net]


# network -> whether its first JVP did dual-with-Python-number arithmetic (unknown: use the mode)
_SCALAR_ARITHMETIC: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

# op with a Python number -> whether the tangent goes through the op too (x * c, x / c) or not (x + c, x - c)
_SCALAR_OPS = {
    **dict.fromkeys((torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.add, torch.add,
                     torch.Tensor.__sub__, torch.Tensor.sub, torch.sub), False),
    **dict.fromkeys((torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul, torch.mul,
                     torch.Tensor.__truediv__, torch.Tensor.div, torch.div), True),
}


class _ScalarArithmetic(TorchFunctionMode):
    """dual (+, -, *, /) Python number as the primal op plus the tangent passed on or scaled, which
    is what forward AD's formulas compute; torch 2.14 takes 0.1 to 0.27 ms for each such op on CPU
    (30x the op). `seen`: whether any came by."""

    def __init__(self, level: int):
        super().__init__()
        self.level, self.seen = level, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        scales = _SCALAR_OPS.get(func)
        if scales is not None and not kwargs and len(args) == 2 and isinstance(args[1], (int, float)):
            primal, dx = fwAD.unpack_dual(args[0], level=self.level)
            if dx is not None:
                self.seen = True
                return _make_dual(func(primal, args[1]), func(dx, args[1]) if scales else dx, self.level)
        return func(*args, **(kwargs or {}))

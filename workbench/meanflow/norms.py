"""GroupNorm that torch.compile can differentiate forward-mode.

Traced by torch.compile inside torch.func.jvp, nn.GroupNorm's fused kernel fails in torch 2.14 (an internal
assert in _make_dual; pytorch/pytorch#152185, which the official CIFAR-10 code works around the same way,
`models/groupnorm.py`). Under compile this module computes the same normalisation in plain ops; eager it is
nn.GroupNorm, whose fused kernel the fast tangent pass (meanflow/jvp.py) uses.
"""
from __future__ import annotations

import torch
from torch import nn


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.plain_ops(x) if torch.compiler.is_compiling() else super().forward(x)

    def plain_ops(self, x: torch.Tensor) -> torch.Tensor:
        """nn.GroupNorm's normalisation written in elementary ops (what runs under torch.compile)."""
        n, c = x.shape[:2]
        groups = x.reshape(n, self.num_groups, -1)
        mean = groups.mean(dim=-1, keepdim=True)
        var = groups.var(dim=-1, unbiased=False, keepdim=True)
        x = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            x = x * self.weight.view(shape) + self.bias.view(shape)
        return x

"""A residual MLP for vectors (toy 2D data)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .conditioning import Conditioning, output_head


class MLP(nn.Module):
    """u(z, t, r, labels) for z of shape (B, *data_shape); the data is flattened internally."""

    def __init__(self, data_shape: tuple[int, ...], num_classes: int, time_cond: str, *, width: int, depth: int,
                 v_head: bool = False, guidance_cond: bool = False):
        super().__init__()
        dim = math.prod(data_shape)
        self.num_classes = num_classes
        self.cond = Conditioning(width, time_cond, num_classes, guidance_cond=guidance_cond)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))
        self.v_out = copy.deepcopy(self.out) if v_head else None  # iMF's auxiliary v-head (head="v")

    def forward(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
                head: str = "u", guidance: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cond(t, r, labels, guidance)
        h = self.inp(z.flatten(1))
        for block in self.blocks:
            h = h + block(h + c)
        return output_head(self.out, self.v_out, head)(h).view_as(z)

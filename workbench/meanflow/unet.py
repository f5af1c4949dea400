"""A small U-Net for images (DDPM-style residual blocks, no attention)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .conditioning import Conditioning, output_head
from .norms import GroupNorm


def _norm(channels: int) -> GroupNorm:
    return GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the conditioning vector adds a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        scale, shift = self.modulation(c)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + h


class UNet(nn.Module):
    """u(z, t, r, labels) for z of shape (B, C, H, W); H and W divisible by 2^(len(channel_mult) - 1)."""

    def __init__(self, data_shape: tuple[int, ...], num_classes: int, time_cond: str, *, channels: int,
                 channel_mult: tuple[int, ...], blocks: int, dropout: float, v_head: bool = False,
                 guidance_cond: bool = False):
        super().__init__()
        c_img, height, width = data_shape
        factor = 2 ** (len(channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(f"U-Net with channel_mult={channel_mult} needs H, W divisible by {factor}, got {height}x{width}")
        self.num_classes = num_classes
        cond_dim = 4 * channels
        self.cond = Conditioning(cond_dim, time_cond, num_classes, guidance_cond=guidance_cond)
        widths = [channels * m for m in channel_mult]
        self.stem = nn.Conv2d(c_img, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList(ResBlock(c if b == 0 else w, w, cond_dim, dropout) for b in range(blocks)))
            c = w
            self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.mid = nn.ModuleList([ResBlock(c, c, cond_dim, dropout), ResBlock(c, c, cond_dim, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(nn.ModuleList(ResBlock((c if b == 0 else w) + w, w, cond_dim, dropout) for b in range(blocks)))
            c = w
            upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1))
            self.upsample.append(upsample if i > 0 else nn.Identity())
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c_img, 3, padding=1))
        self.v_out = copy.deepcopy(self.out) if v_head else None  # iMF's auxiliary v-head (head="v")

    def forward(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
                head: str = "u", guidance: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cond(t, r, labels, guidance)
        h, skips = self.stem(z), []
        for blocks, downsample in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, c)
                skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, c)
        for blocks, upsample in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), c)
            h = upsample(h)
        return output_head(self.out, self.v_out, head)(h)

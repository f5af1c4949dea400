"""The official CIFAR-10 network of MeanFlow: EDM's SongUNet in the DDPM++ configuration.

Written after Gsunshine/py-meanflow `meanflow/models/unet.py` (itself NVlabs/edm `training/networks.py`)
with that repository's CIFAR-10 settings (`models/model_configs.py`): model_channels 128,
channel_mult (2, 2, 2), 4 residual blocks per encoder level and 5 per decoder level, self-attention
(one head) at 16x16 and in the first 8x8 middle block, GroupNorm (32 groups, at least 4 channels a
group, eps 1e-6), dropout before each block's second conv, an additive per-channel embedding, skip
scale sqrt(1/2), FIR [1, 3, 3, 1] resampling with 1x1 projections on resampled skips, xavier-uniform
init with near-zero (1e-5) last convs, and positional features of each time scalar (256 each, sin
before cos as the official code swaps them) concatenated into one embedding MLP. With the 6-d
augmentation labels of EDM's AugmentPipe as an input (augment_dim = 6) it has 55,932,419 parameters,
the official count (tests/test_networks.py).

Layers are plain nn.Conv2d / nn.Linear / nn.GroupNorm, so the fast JVP path (meanflow/jvp.py) sees
through them; attention is matmul-softmax (fused SDPA has no forward-mode AD).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import TIME_CONDITIONINGS, guidance_scalars, output_head
from .norms import GroupNorm

SKIP_SCALE = math.sqrt(0.5)
FIR = (1.0, 3.0, 3.0, 1.0)


def _init(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> nn.Module:
    """xavier-uniform weights times gain, zero bias (EDM's weight_init('xavier_uniform'))."""
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _group_norm(channels: int) -> GroupNorm:
    return GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class Resample(nn.Module):
    """2x up- or downsampling by the depthwise FIR filter [1, 3, 3, 1] (outer product, normalised)."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        f = torch.tensor(FIR)
        f = torch.outer(f, f) / f.sum() ** 2
        self.up, self.channels = up, channels
        self.register_buffer("filter", (f * 4 if up else f).expand(channels, 1, 4, 4).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.conv_transpose2d(x, self.filter.to(x.dtype), groups=self.channels, stride=2, padding=1)
        return F.conv2d(x, self.filter.to(x.dtype), groups=self.channels, stride=2, padding=1)


class Block(nn.Module):
    """EDM's UNetBlock with adaptive_scale off: GroupNorm-SiLU-conv, + embedding, GroupNorm-SiLU-dropout-conv,
    skip (1x1 when the width changes or it resamples), then optional one-head self-attention."""

    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float, resample: str = "", attention: bool = False):
        super().__init__()
        self.norm0 = _group_norm(c_in)
        self.resample = Resample(c_in, up=resample == "up") if resample else nn.Identity()
        self.conv0 = _init(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.affine = _init(nn.Linear(emb, c_out))
        self.norm1 = _group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _init(nn.Conv2d(c_out, c_out, 3, padding=1), gain=1e-5)
        self.skip = _init(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out or resample else None
        self.attention = attention
        if attention:
            self.norm2 = _group_norm(c_out)
            self.qkv = _init(nn.Conv2d(c_out, 3 * c_out, 1), gain=math.sqrt(0.2))
            self.proj = _init(nn.Conv2d(c_out, c_out, 1), gain=1e-5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(self.dropout(h))
        skip = x if self.skip is None else self.skip(self.resample(x))
        x = (h + skip) * SKIP_SCALE
        if self.attention:
            x = (self.proj(_attention(self.qkv(self.norm2(x)))) + x) * SKIP_SCALE
        return x


def _attention(qkv: torch.Tensor) -> torch.Tensor:
    """One-head self-attention over the pixels of (B, 3C, H, W) -> (B, C, H, W); q and k each scaled by
    C^-1/4 before the product, softmax in fp32 (the official QKVAttention)."""
    b, c3, h, w = qkv.shape
    q, k, v = qkv.reshape(b, c3, h * w).chunk(3, dim=1)
    scale = (c3 // 3) ** -0.25
    weights = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weights = torch.softmax(weights.float(), dim=-1).to(weights.dtype)
    return torch.einsum("bts,bcs->bct", weights, v).reshape(b, c3 // 3, h, w)


class PositionalFeatures(nn.Module):
    """(B,) -> (B, dim): [sin(s f), cos(s f)] with f = 10000^(-i / (dim/2 - 1)) (EDM's PositionalEmbedding,
    endpoint=True, with the official MeanFlow code's sin/cos swap); s is t in [0, 1], unscaled."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = (1 / 10_000) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        args = s[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class SongUNet(nn.Module):
    """u(z, t, r, labels, augment_labels) for z of shape (B, C, H, W), H = W divisible by 2^(levels - 1).

    augment_labels (B, augment_dim): the AugmentPipe's description of each training image's
    augmentation (zeros, or None, at sampling: an unaugmented image)."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int,
        time_cond: str,
        *,
        channels: int,
        channel_mult: tuple[int, ...],
        blocks: int,
        attn_resolutions: tuple[int, ...],
        dropout: float,
        augment_dim: int = 0,
        v_head: bool = False,
        guidance_cond: bool = False,
    ):
        super().__init__()
        c_img, height, width = data_shape
        if height != width or height % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"SongUNet needs square images divisible by 2^{len(channel_mult) - 1}, got {height}x{width}")
        self.num_classes, self.augment_dim = num_classes, augment_dim
        self.select = TIME_CONDITIONINGS[time_cond]
        n_scalars = len(self.select(torch.zeros(1), torch.zeros(1)))
        noise, emb = 2 * channels, 4 * channels  # channel_mult_noise 2, channel_mult_emb 4 (official CIFAR-10)
        self.features = PositionalFeatures(noise)
        self.map_augment = nn.Linear(augment_dim, n_scalars * noise, bias=False) if augment_dim else None
        # class labels: not in the official (unconditional) network; an embedding, as in the other networks
        self.map_label = nn.Embedding(num_classes + 1, n_scalars * noise) if num_classes else None
        # iMF's guidance inputs (1 - 1/omega, t_min, t_max): their features mapped into the time features, as the
        # augmentation labels are
        self.map_guidance = _init(nn.Linear(3 * noise, n_scalars * noise, bias=False)) if guidance_cond else None
        self.map_layer0 = nn.Linear(n_scalars * noise, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        for layer in (self.map_augment, self.map_layer0, self.map_layer1):
            if layer is not None:
                _init(layer)

        self.stem = _init(nn.Conv2d(c_img, channels, 3, padding=1))
        self.enc, skips, c = nn.ModuleList(), [channels], channels
        for level, mult in enumerate(channel_mult):
            res = height >> level
            if level:
                self.enc.append(Block(c, c, emb, dropout, resample="down"))
                skips.append(c)
            for _ in range(blocks):
                self.enc.append(Block(c, channels * mult, emb, dropout, attention=res in attn_resolutions))
                c = channels * mult
                skips.append(c)
        self.dec = nn.ModuleList()
        self.concat = []  # per decoder block: whether it takes a skip
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = height >> level
            if level == len(channel_mult) - 1:
                self.dec += [Block(c, c, emb, dropout, attention=True), Block(c, c, emb, dropout)]
            else:
                self.dec.append(Block(c, c, emb, dropout, resample="up"))
            self.concat += [False] * (2 if level == len(channel_mult) - 1 else 1)
            for idx in range(blocks + 1):
                c_in = c + skips.pop()
                c = channels * mult
                self.dec.append(Block(c_in, c, emb, dropout, attention=idx == blocks and res in attn_resolutions))
                self.concat.append(True)
        self.out_norm = _group_norm(c)
        self.out_conv = _init(nn.Conv2d(c, c_img, 3, padding=1), gain=1e-5)
        # iMF's auxiliary v-head (head="v"): the output norm and convolution again
        self.v_out = nn.Sequential(copy.deepcopy(self.out_norm), copy.deepcopy(self.out_conv)) if v_head else None

    def forward(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None, head: str = "u", guidance: torch.Tensor | None = None
                ) -> torch.Tensor:
        # Mapping: one embedding MLP over the concatenated features of the selected time scalars.
        emb = torch.cat([self.features(s) for s in self.select(t, r)], dim=1)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        if self.map_label is not None:
            if labels is None:
                labels = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.map_label(labels)
        scalars = guidance_scalars(guidance, t, self.map_guidance is not None)
        if scalars:
            emb = emb + self.map_guidance(torch.cat([self.features(s.to(t.dtype)) for s in scalars], dim=1))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        # Encoder, keeping every output for the decoder's skips.
        x = self.stem(z)
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        # Decoder.
        for block, concat in zip(self.dec, self.concat):
            x = block(torch.cat([x, skips.pop()], dim=1) if concat else x, emb)
        if head == "u":
            return self.out_conv(F.silu(self.out_norm(x)))
        norm, conv = output_head(None, self.v_out, head)
        return conv(F.silu(norm(x)))

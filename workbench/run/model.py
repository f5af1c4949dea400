"""The network, device and optimizer of a run, as its config describes them."""
from __future__ import annotations

import math

import torch
from torch import nn

from workbench.config import ConfigError, RunConfig
from workbench.data import Dataset
from workbench.meanflow import NETWORKS
from workbench.run.augment import AUGMENT_DIM


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda': no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def device_label(name: str) -> str:
    """What train.device resolves to here, for the record: 'cuda:0 (NVIDIA H200)', 'cpu'."""
    try:
        device = resolve_device(name)
    except ConfigError:
        return f"{name} (unavailable)"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def build_net(config: RunConfig, data: Dataset) -> nn.Module:
    arch = config.net.arch
    if arch != "mlp" and data.kind == "points":
        raise ConfigError(f"net.arch={arch!r} needs images or latents; data.name={config.data.name!r} is 2D points (use mlp)")
    options = getattr(config.net, arch).model_dump() | ({"v_head": True} if config.net.v_head else {})
    if config.guidance_inputs:
        if not data.num_classes:
            raise ConfigError(f"meanflow.imf.guidance={config.meanflow.imf.guidance!r} guides towards class labels; "
                              f"data.name={config.data.name!r} has none")
        options["guidance_cond"] = True
    if config.data.augment_p > 0:
        if arch != "songunet":
            raise ConfigError(f"data.augment_p={config.data.augment_p}: the augmentation labels condition only "
                              f"net.arch='songunet' (net.arch={arch!r}); set data.augment_p=0")
        options["augment_dim"] = AUGMENT_DIM
    if (config.data.augment_p > 0 or config.data.hflip) and data.kind != "images":
        raise ConfigError(f"data.hflip / data.augment_p augment images; data.name={config.data.name!r} is {data.kind}")
    try:
        return NETWORKS[arch](data.shape, data.num_classes, config.net.time_cond, **options)
    except ValueError as err:
        raise ConfigError(f"net.{arch}: {err}") from None


def sampling_net(net: nn.Module, config: RunConfig) -> nn.Module:
    """The network as sampling calls it: with guidance inputs (meanflow.imf.guidance = omega or interval), fed
    eval.omega and eval.interval on every call; else the network itself."""
    if not config.guidance_inputs:
        return net
    omega, (t_min, t_max) = config.sampled_guidance()
    return GuidanceChoice(net, omega, t_min, t_max)


class GuidanceChoice(nn.Module):
    """A network with guidance inputs at one choice of them: every call gets the rows (omega, t_min, t_max)."""

    def __init__(self, net: nn.Module, omega: float, t_min: float, t_max: float):
        super().__init__()
        self.net, self.choice = net, (omega, t_min, t_max)
        self.num_classes = getattr(net, "num_classes", 0)

    def forward(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, labels: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        rows = torch.tensor(self.choice, dtype=t.dtype, device=t.device).expand(len(t), 3)
        return self.net(z, t, r, labels, guidance=rows, **kwargs)


def learning_rate(step: int, config: RunConfig) -> float:
    """Linear warmup to optim.lr, then constant or cosine decay to 0 at train.steps."""
    optim, total = config.optim, config.train.steps
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "cosine":
        progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
        return optim.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return optim.lr


def make_optimizer(net: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optim.name == "adamw" else torch.optim.Adam
    return kind(net.parameters(), lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay)

"""Samples of a trained model for scoring: sample i from noise (seed, i) and, for a class-conditional net,
label i mod classes, so every cell of a study scores the same noise."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from workbench.data import index_noise
from workbench.evaluate.names import samplers
from workbench.meanflow import sample


@torch.no_grad()
def sample_chunks(net: nn.Module, shape: tuple[int, ...], euler: bool, steps: int, num_samples: int, seed: int,
                  chunk: int = 1000) -> Iterator[torch.Tensor]:
    """Samples 0..num_samples-1 in chunks of (chunk, *shape) on the net's device. Sample i uses noise (seed, i)
    and, for a class-conditional net, label i mod num_classes, so every cell scores the same noise."""
    device = next(net.parameters()).device
    for start in range(0, num_samples, chunk):
        index = range(start, min(start + chunk, num_samples))
        noise = index_noise(seed, index, shape).to(device)
        labels = torch.tensor(index, device=device) % net.num_classes if net.num_classes else None
        yield sample(net, noise, steps, labels, euler=euler).float()


def generate(net: nn.Module, shape: tuple[int, ...], nfe: tuple[int, ...], fm_steps: tuple[int, ...],
             num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """{'1nfe': (N, *shape), ..., 'fm50': ...} on the CPU (sample_chunks of every sampler, gathered)."""
    return {name: torch.cat([x.cpu() for x in sample_chunks(net, shape, euler, steps, num_samples, seed)])
            for name, (euler, steps) in samplers(nfe, fm_steps).items()}

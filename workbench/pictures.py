"""Sample pictures of a trained model: what a researcher looks at before trusting a score.

Noise is fixed per sample index (data.index_noise) and, for labelled data, sample i has class
i mod classes: the class the metrics score it with, so the picture shows the model the numbers score.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from workbench import plots
from workbench.config import RunConfig
from workbench.data import EXACT_REFERENCES, Dataset, exact_flow, index_noise
from workbench.meanflow import sample


def save_run_pictures(ema: nn.Module, data: Dataset, config: RunConfig, run_dir: Path,
                      scored: bool = False) -> list[Path]:
    """run_dir/samples.png at sample.steps NFE and, for an evaluated run (scored), samples_<k>nfe.png at
    every other scored NFE."""
    paths = {config.sample.steps: run_dir / "samples.png"}
    if scored:
        paths |= {k: run_dir / f"samples_{k}nfe.png" for k in sorted(set(config.eval.nfe) - {config.sample.steps})}
    save_samples(ema, data, config, paths)
    return list(paths.values())


def save_samples(ema: nn.Module, data: Dataset, config: RunConfig, paths: dict[int, Path]) -> None:
    """Pictures of samples from the EMA weights, one per NFE ({steps: path}).

    2D points are drawn beside the data, the exact one-step map of the same noise (toy sets with an
    exact reference) and, where the null class is trained (class dropout), the unconditional samples."""
    device = next(ema.parameters()).device
    n = config.sample.num_points if data.kind == "points" else config.sample.num_images
    noise = index_noise(config.sample.seed, range(n), data.shape).to(device)
    labels = (torch.arange(n) % data.num_classes).to(device) if data.num_classes else None
    exact = None
    if data.kind == "points" and config.data.name in EXACT_REFERENCES:
        mf = config.meanflow
        flow = exact_flow(config.data.name, mf.cfg_omega / (1 - mf.cfg_kappa), (mf.cfg_t_lo, mf.cfg_t_hi))
        exact = flow.flow(noise.double().cpu(), 1.0, 0.0, None if labels is None else labels.cpu()).float()
    for steps, path in paths.items():
        x = sample(ema, noise, steps, labels).float().cpu()
        title = f"{steps}-NFE samples" + (" by class" if labels is not None else "")
        if data.kind == "points":
            shown = None if labels is None else labels.cpu()
            panels = [("data", data.x[:n].cpu(), None if data.labels is None else data.labels[:n].cpu())]
            if exact is not None:
                guided = mf.cfg_omega / (1 - mf.cfg_kappa) != 1 and labels is not None  # w' (kappa 0.5, w 1: 2)
                panels.append(("exact 1-step map" + (" (guided)" if guided else ""), exact, shown))
            panels.append((title, x, shown))
            if labels is not None and config.meanflow.class_drop > 0:
                unconditional = sample(ema, noise, steps, torch.full_like(labels, data.num_classes)).float()
                panels.append((f"{steps}-NFE, null class", unconditional.cpu(), None))
            plots.scatter(panels, path)
        elif data.kind == "latents":  # no decoder here: the first 3 channels, 3 data stds mapped to [-1, 1]
            plots.image_grid(x[:, :3] / (3 * data.x.std()), path, f"{title} (latent channels, not decoded)")
        else:
            plots.image_grid(x, path, title)

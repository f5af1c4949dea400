"""Sample pictures of a trained model: what a researcher looks at before trusting a score.

Noise is fixed per sample index (data.index_noise) and, for labelled data, sample i has class
i mod classes: the class the metrics score it with, so the picture shows the model the numbers score.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from workbench.config import RunConfig
from workbench.data import EXACT_REFERENCES, Dataset, exact_flow, index_noise
from workbench.meanflow import sample
from workbench.run.model import sampling_net


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
    ema = sampling_net(ema, config)  # fed eval.omega and eval.interval where the network takes guidance inputs
    omega, interval = config.sampled_guidance()
    n = config.sample.num_points if data.kind == "points" else config.sample.num_images
    noise = index_noise(config.sample.seed, range(n), data.shape).to(device)
    labels = (torch.arange(n) % data.num_classes).to(device) if data.num_classes else None
    exact = None
    if data.kind == "points" and config.data.name in EXACT_REFERENCES:
        flow = exact_flow(config.data.name, omega, interval)
        exact = flow.flow(noise.double().cpu(), 1.0, 0.0, None if labels is None else labels.cpu()).float()
    for steps, path in paths.items():
        x = sample(ema, noise, steps, labels).float().cpu()
        title = f"{steps}-NFE samples" + (" by class" if labels is not None else "")
        if data.kind == "points":
            shown = None if labels is None else labels.cpu()
            panels = [("data", data.x[:n].cpu(), None if data.labels is None else data.labels[:n].cpu())]
            if exact is not None:
                guided = omega != 1 and labels is not None  # w' (kappa 0.5, w 1: 2)
                panels.append(("exact 1-step map" + (" (guided)" if guided else ""), exact, shown))
            panels.append((title, x, shown))
            if labels is not None and config.meanflow.class_drop > 0:
                unconditional = sample(ema, noise, steps, torch.full_like(labels, data.num_classes)).float()
                panels.append((f"{steps}-NFE, null class", unconditional.cpu(), None))
            scatter(panels, path)
        elif data.kind == "latents":  # no decoder here: the first 3 channels, 3 data stds mapped to [-1, 1]
            image_grid(x[:, :3] / (3 * data.x.std()), path, f"{title} (latent channels, not decoded)")
        else:
            image_grid(x, path, title)


def scatter(panels: list[tuple[str, torch.Tensor, torch.Tensor | None]], path: Path) -> None:
    """2D point sets side by side with the same limits, those of the first (the data): (title, points (N, 2),
    class labels or None); labelled points are coloured by class, and a panel says how many of its points fall
    outside the limits (and so are not drawn)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), sharex=True, sharey=True, squeeze=False)
    lim = 1.2 * float(panels[0][1].abs().max())
    for ax, (title, points, labels) in zip(axes[0], panels):
        points = points.cpu()
        colours = {} if labels is None else {"c": labels.cpu(), "cmap": "tab10", "vmin": 0, "vmax": 9}
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5, **({"color": "C0"} if labels is None else colours))
        outside = outside_count(points, lim)
        ax.set_title(title + (f"\n{outside} of {len(points)} outside the panel" if outside else ""), fontsize=10,
                     color="C3" if outside else "black")
        ax.set_aspect("equal")
    axes[0, 0].set_xlim(-lim, lim)
    axes[0, 0].set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # equal-aspect panels: tight_layout alone clips a 2-line title
    plt.close(fig)


def outside_count(points: torch.Tensor, lim: float) -> int:
    """How many points (N, 2) fall outside the square [-lim, lim]^2 (non-finite ones included)."""
    return int((~points.abs().le(lim).all(1)).sum())


def image_grid(images: torch.Tensor, path: Path, title: str) -> None:
    """(N, C, H, W) images in [-1, 1] -> a square grid PNG."""
    side = math.ceil(math.sqrt(images.shape[0]))
    c, h, w = images.shape[1:]
    grid = torch.full((c, side * (h + 1), side * (w + 1)), -1.0)
    for i, image in enumerate(images.clamp(-1, 1).cpu()):
        row, col = divmod(i, side)
        grid[:, row * (h + 1):row * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = image
    fig, ax = plt.subplots(figsize=(4, 4))
    picture = ((grid.permute(1, 2, 0) + 1) / 2).numpy()
    ax.imshow(picture.squeeze(-1) if c == 1 else picture, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Pictures of samples: 2D scatter next to the data, or an image grid."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def scatter(samples: torch.Tensor, reference: torch.Tensor, path: Path, title: str) -> None:
    """Side-by-side scatter of generated (N, 2) points and reference data, same limits."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, points, name in zip(axes, (reference, samples), ("data", title)):
        ax.scatter(points[:, 0].cpu(), points[:, 1].cpu(), s=1, alpha=0.5)
        ax.set_title(name)
        ax.set_aspect("equal")
    lim = 1.2 * float(reference.abs().max())
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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

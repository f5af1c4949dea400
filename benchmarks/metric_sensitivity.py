"""Which 2D scores tell a learned checkerboard from a blur? Training points, the same points blurred by
Gaussian noise, and a uniform square, each scored against the held-out split (4000 points each).

    python benchmarks/metric_sensitivity.py
"""
from __future__ import annotations

import torch

from workbench.data import load_data
from workbench.evaluate.toy import point_scores


def main() -> None:
    n = 4000
    reference = load_data("checkerboard", "test").x[:n]
    points = load_data("checkerboard", "train").x[n:2 * n]
    generator = torch.Generator().manual_seed(0)
    samples = {"training points": points}
    for blur in (0.1, 0.2, 0.4):
        samples[f"training points + N(0, {blur}^2)"] = points + blur * torch.randn(n, 2, generator=generator)
    samples["uniform on [-2, 2]^2"] = 4 * torch.rand(n, 2, generator=generator) - 2
    print("| samples | energy | precision | tv |\n|---|---|---|---|")
    for name, x in samples.items():
        scores = point_scores(x, reference, "checkerboard", None, None, seed=0)
        print(f"| {name} | {scores['energy']:.4f} | {scores['precision']:.3f} | {scores['tv']:.3f} |")


if __name__ == "__main__":
    main()

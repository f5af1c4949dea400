"""Scores of 2D point sets: energy distance and sliced Wasserstein distance to the held-out split; for the
checkerboard and the Gaussian mixture also support scores (does a sample land on a square / near a mode), the
transport error against the exact one-step map and the u-error against the exact average velocity
(workbench/meanflow/exact.py); and the same scores of the references (the data, the exact map)."""
from __future__ import annotations

import functools

import torch
from torch import nn

from workbench.data import EXACT_REFERENCES, GAUSSIAN_MEANS, SUPPORT_SIZES, exact_flow, index_noise, load_data, support_cells
from workbench.evaluate.draw import generate


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic: exactly 0 for identical sets), x (N, D), y (M, D)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size sets (N, D): sqrt of the mean over random
    unit directions of the 1D squared W2, which sorting computes exactly."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = torch.randn(x.shape[1], num_projections, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    px, _ = (x.double() @ directions).sort(dim=0)
    py, _ = (y.double() @ directions).sort(dim=0)
    return float((px - py).pow(2).mean().sqrt())


def support_scores(x: torch.Tensor, data_name: str, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Does the sample lie where the data does? (checkerboard: its 8 squares; gaussians: within 3 std of a mode)

    precision  share of samples on the support;
    tv         total-variation distance of the per-square (per-mode) histogram of those samples from
               the data's, which is uniform: 0 = equal shares, 1 - 1/8 = all in one square;
    modes      squares (modes) holding at least a quarter of their share of the samples;
    labelprec  (labelled data) share of samples in the mode of their own class.
    """
    cells = support_cells(data_name, x)
    inside = cells >= 0
    k = SUPPORT_SIZES[data_name]
    counts = torch.bincount(cells[inside], minlength=k).double()
    total = counts.sum()
    scores = {"precision": float(inside.double().mean()),
              "tv": float(0.5 * (counts / total - 1 / k).abs().sum()) if total > 0 else 1.0,
              "modes": float((counts >= 0.25 * len(x) / k).sum())}
    if labels is not None:
        scores["labelprec"] = float((cells == labels).double().mean())
    return scores


def point_scores(x: torch.Tensor, reference: torch.Tensor, data_name: str, labels: torch.Tensor | None,
                 exact: torch.Tensor | None, seed: int) -> dict[str, float]:
    """Every 2D score of samples x against held-out points: energy distance, sliced W2 and, for the sets
    with an exact reference, support scores and the transport error mean ||x_i - exact_i||^2 against
    the exact flow map of the same noise."""
    scores = {"energy": energy_distance(x, reference), "swd": sliced_wasserstein(x, reference, seed=seed)}
    if data_name in EXACT_REFERENCES:
        scores |= support_scores(x, data_name, labels)
    if exact is not None:
        scores["transport"] = float((x.double() - exact).pow(2).sum(1).mean())
    return scores


@functools.lru_cache(maxsize=16)
def exact_targets(data_name: str, num_samples: int, seed: int, guidance: float = 1.0,
                  interval: tuple[float, float] = (0.0, 1.0), conditional: bool = True) -> dict[str, torch.Tensor | None]:
    """What the exact flow gives for an evaluation (cached: every evaluation of a cell uses the same):
    'map' the exact 1-step map Phi_{1->0} of the evaluation noise (sample i: noise (seed, i), label
    i mod classes), and a fixed set of u-error pairs (z_t, t, r, label) with their exact u*(z, r, t).
    The pairs are drawn like the default training pairs (t, r = max, min of two lognorm(-0.4, 1.0)
    draws, all r != t), from held-out points and their own noise, identical for every cell.
    conditional=False: no labels (an unconditional model of a labelled set)."""
    flow = exact_flow(data_name, guidance, interval)
    classes = flow.data.num_classes if conditional else 0
    index = torch.arange(num_samples)
    labels = index % classes if classes else None
    noise = index_noise(seed, range(num_samples), (2,)).double()
    generator = torch.Generator().manual_seed(seed)
    data = load_data(data_name, "test")
    pick = torch.randint(len(data.x), (num_samples,), generator=generator)
    draws = torch.sigmoid(-0.4 + torch.randn(2, num_samples, generator=generator, dtype=torch.float64))
    t, r = draws.max(0).values, draws.min(0).values
    x = data.x[pick].double()
    pair_labels = data.labels[pick] if classes else None
    z = (1 - t[:, None]) * x + t[:, None] * torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
    return {"map": flow.flow(noise, 1.0, 0.0, labels), "z": z, "t": t, "r": r, "labels": pair_labels,
            "u": flow.average_velocity(z, t, r, pair_labels)}


def toy_metrics(net: nn.Module, data_name: str, nfe: tuple[int, ...], fm_steps: tuple[int, ...], num_samples: int,
                seed: int, guidance: float, interval: tuple[float, float]) -> dict[str, float]:
    """2D scores of MeanFlow samples at each NFE and of Flow Matching Euler at each step count against
    the first num_samples held-out points ({'energy_1nfe': ..., 'precision_1nfe': ..., 'swd_fm50': ...},
    see point_scores) and, for sets with an exact reference, 'uerr': the mean squared error (summed over
    the 2 dimensions) of u_theta against the exact u* on a fixed set of training-like pairs."""
    reference = load_data(data_name, "test").x[:num_samples]
    exact = exact_targets(data_name, len(reference), seed, guidance, interval, bool(net.num_classes)) \
        if data_name in EXACT_REFERENCES else None
    labels = torch.arange(len(reference)) % net.num_classes if net.num_classes else None
    metrics = {}
    for name, x in generate(net, tuple(reference.shape[1:]), nfe, fm_steps, len(reference), seed).items():
        scores = point_scores(x, reference, data_name, labels, None if exact is None else exact["map"], seed)
        metrics |= {f"{metric}_{name}": value for metric, value in scores.items()}
    if exact is not None:
        device = next(net.parameters()).device
        with torch.no_grad():
            u = net(exact["z"].float().to(device), exact["t"].float().to(device), exact["r"].float().to(device),
                    None if exact["labels"] is None else exact["labels"].to(device)).double().cpu()
        metrics["uerr"] = float((u - exact["u"]).pow(2).sum(1).mean())
    return metrics


def toy_references(data_name: str, num_samples: int, seed: int, conditional: bool) -> dict[str, dict[str, float]]:
    """The 2D scores of reference samplers, to read a model's scores against (same sample count and
    noise as toy_metrics): 'data' (training points: the floor of sampling error), 'exact map' (the
    exact 1-step map of the evaluation noise), 'uniform box' (uniform on the data's bounding box) and
    'prior (u = 0)' (the noise itself: what an untrained one-step model near zero gives) and, for the
    labelled Gaussians, 'class means' (each sample on its class's mean: a collapse precision cannot see)."""
    reference = load_data(data_name, "test").x[:num_samples]
    train = load_data(data_name, "train", labels=conditional)
    exact = exact_targets(data_name, len(reference), seed, conditional=conditional)
    classes = train.num_classes
    labels = torch.arange(len(reference)) % classes if classes else None
    low, high = train.x.min(0).values, train.x.max(0).values
    box = low + (high - low) * torch.rand(len(reference), 2, generator=torch.Generator().manual_seed(seed))
    noise = index_noise(seed, range(len(reference)), (2,))
    samplers = {"data": (train.x[:len(reference)], None if labels is None else train.labels[:len(reference)]),
                "exact map": (exact["map"], labels), "uniform box": (box, None), "prior (u = 0)": (noise, None)}
    if data_name == "gaussians" and labels is not None:  # every sample on its class's mean: right modes, no spread
        samplers["class means"] = (GAUSSIAN_MEANS[labels].float(), labels)
    out = {}
    for name, (x, x_labels) in samplers.items():
        scores = point_scores(x, reference, data_name, x_labels, exact["map"], seed)
        if name in ("data", "uniform box"):
            scores.pop("transport")  # these points are not images of the evaluation noise
        out[name] = scores
    out["prior (u = 0)"]["uerr"] = float(exact["u"].pow(2).sum(1).mean())
    out["exact map"]["uerr"] = 0.0
    return out

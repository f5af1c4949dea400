"""Scores of 2D point sets: energy distance and sliced Wasserstein distance to the held-out split; for the
checkerboard and the Gaussian mixture also support scores (does a sample land on a square / near a mode), the
transport error and the spread ratio against the exact one-step map of the run's own (guided) target, and the
u-error against the exact average velocity (workbench/meanflow/exact.py) on the paper's and on the run's own
(t, r) sampler; and the same scores of the references (the data, the exact map)."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import nn

from workbench.data import EXACT_REFERENCES, GAUSSIAN_MEANS, SUPPORT_SIZES, exact_flow, index_noise, load_data, support_cells
from workbench.evaluate.draw import generate
from workbench.meanflow.time import sample_t_r

# The (t, r) sampler's settings that `uerrown` draws its pairs with (workbench/meanflow/time.py sample_t_r).
SAMPLER_KEYS = ("t_dist", "r_dist", "ratio", "ratio_mask", "tr_sampler")


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


def spread_ratio(x: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None,
                 target_labels: torch.Tensor | None = None) -> float:
    """How much of its target's spread a sample set has: sqrt(sum_c tr Cov(x_c) / sum_c tr Cov(target_c)) over
    the classes c (labels None: one group each; target_labels default to labels). For a model's samples x and
    target are images of the same noise (target: the exact map), so 1 is the target's spread exactly, and the
    target pulled towards its class means by a factor s scores s: a collapse that precision and mode counts
    cannot see."""
    def total(points: torch.Tensor, groups: torch.Tensor | None) -> float:
        if groups is None:
            return float(points.double().var(0).sum())
        return sum(float(points[groups == c].double().var(0).sum()) for c in groups.unique() if (groups == c).sum() > 1)

    return (total(x, labels) / total(target, None if labels is None else
                                      labels if target_labels is None else target_labels)) ** 0.5


def point_scores(x: torch.Tensor, reference: torch.Tensor, data_name: str, labels: torch.Tensor | None,
                 exact: torch.Tensor | None, seed: int, exact_labels: torch.Tensor | None = None) -> dict[str, float]:
    """Every 2D score of samples x against held-out points: energy distance, sliced W2 and, for the sets
    with an exact reference, support scores, the transport error mean ||x_i - exact_i||^2 against
    the exact flow map of the same noise and the spread ratio against it (spread_ratio; exact_labels: the
    map's labels where they are not x's)."""
    scores = {"energy": energy_distance(x, reference), "swd": sliced_wasserstein(x, reference, seed=seed)}
    if data_name in EXACT_REFERENCES:
        scores |= support_scores(x, data_name, labels)
    if exact is not None:
        scores["transport"] = float((x.double() - exact).pow(2).sum(1).mean())
        scores["spread"] = spread_ratio(x, exact, labels, exact_labels)
    return scores


@functools.lru_cache(maxsize=16)
def exact_targets(data_name: str, num_samples: int, seed: int, guidance: float = 1.0,
                  interval: tuple[float, float] = (0.0, 1.0), conditional: bool = True,
                  sampler: tuple[tuple[str, object], ...] = ()) -> dict[str, torch.Tensor | None]:
    """What the exact flow gives for an evaluation (cached: every evaluation of a cell uses the same):
    'map' the exact 1-step map Phi_{1->0} of the evaluation noise (sample i: noise (seed, i), label
    i mod classes), and a fixed set of u-error pairs (z_t, t, r, label) with their exact u*(z, r, t).
    The pairs are drawn from the paper's sampler (t, r = max, min of two lognorm(-0.4, 1.0) draws, all
    r != t), from held-out points and their own noise, identical for every cell; `sampler` (SAMPLER_KEYS
    -> value) adds a second set 'own' drawn from the run's own (t, r) sampler (r = t rows included).
    conditional=False: no labels (an unconditional model of a labelled set)."""
    flow = exact_flow(data_name, guidance, interval)
    labels = index_labels(num_samples, flow.data.num_classes if conditional else 0)
    noise = index_noise(seed, range(num_samples), (2,)).double()
    generator = torch.Generator().manual_seed(seed)
    data = load_data(data_name, "test")
    pick = torch.randint(len(data.x), (num_samples,), generator=generator)
    draws = torch.sigmoid(-0.4 + torch.randn(2, num_samples, generator=generator, dtype=torch.float64))
    t, r = draws.max(0).values, draws.min(0).values
    x = data.x[pick].double()
    pair_labels = data.labels[pick] if labels is not None else None
    z = (1 - t[:, None]) * x + t[:, None] * torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
    targets = {"map": flow.flow(noise, 1.0, 0.0, labels), "z": z, "t": t, "r": r, "labels": pair_labels,
               "u": flow.average_velocity(z, t, r, pair_labels)}
    if sampler:
        own = torch.Generator().manual_seed(seed + 1)
        t, r = sample_t_r(num_samples, SimpleNamespace(**dict(sampler)), own)
        t, r = t.double(), r.double()
        pick = torch.randint(len(data.x), (num_samples,), generator=own)
        x, own_labels = data.x[pick].double(), data.labels[pick] if labels is not None else None
        z = (1 - t[:, None]) * x + t[:, None] * torch.randn(num_samples, 2, generator=own, dtype=torch.float64)
        targets["own"] = {"z": z, "t": t, "r": r, "labels": own_labels, "u": flow.average_velocity(z, t, r, own_labels)}
    return targets


def u_error(net: nn.Module, pairs: dict) -> float:
    """Mean squared error (summed over the 2 dimensions) of u_theta against the exact u* on fixed pairs."""
    device = next(net.parameters()).device
    with torch.no_grad():
        u = net(pairs["z"].float().to(device), pairs["t"].float().to(device), pairs["r"].float().to(device),
                None if pairs["labels"] is None else pairs["labels"].to(device)).double().cpu()
    return float((u - pairs["u"]).pow(2).sum(1).mean())


@functools.lru_cache(maxsize=16)
def exact_scores(data_name: str, num_samples: int, seed: int, guidance: float, interval: tuple[float, float],
                 conditional: bool) -> dict[str, float]:
    """The scores of the run's own target, the exact (guided) map of the evaluation noise, against the held-out
    points: {'energy_exact': ..., 'precision_exact': ...}. Unguided this is the floor a perfect model reaches;
    guided (table1f, table5) it is what a perfect model of that guided field scores against the data."""
    reference = load_data(data_name, "test").x[:num_samples]
    exact = exact_targets(data_name, num_samples, seed, guidance, interval, conditional)
    labels = index_labels(num_samples, exact_flow(data_name).data.num_classes if conditional else 0)
    scores = point_scores(exact["map"], reference, data_name, labels, None, seed)
    return {f"{name}_exact": value for name, value in scores.items()}


def index_labels(num_samples: int, classes: int) -> torch.Tensor | None:
    """The evaluation's labels: sample i gets label i mod classes (None: unconditional)."""
    return torch.arange(num_samples) % classes if classes else None


def toy_metrics(net: nn.Module, data_name: str, nfe: tuple[int, ...], fm_steps: tuple[int, ...], num_samples: int,
                seed: int, guidance: float, interval: tuple[float, float],
                sampler: tuple[tuple[str, object], ...] = ()) -> dict[str, float]:
    """2D scores of MeanFlow samples at each NFE and of Flow Matching Euler at each step count against
    the first num_samples held-out points ({'energy_1nfe': ..., 'precision_1nfe': ..., 'swd_fm50': ...},
    see point_scores) and, for sets with an exact reference, the scores of the exact map itself
    (exact_scores), 'uerr': the mean squared error (summed over the 2 dimensions) of u_theta against the
    exact u* on fixed pairs from the paper's (t, r) sampler and, given the run's own `sampler`, 'uerrown'
    on pairs from that one."""
    reference = load_data(data_name, "test").x[:num_samples]
    conditional = bool(net.num_classes)
    exact = exact_targets(data_name, len(reference), seed, guidance, interval, conditional, sampler) \
        if data_name in EXACT_REFERENCES else None
    labels = index_labels(len(reference), net.num_classes)
    metrics = {}
    for name, x in generate(net, tuple(reference.shape[1:]), nfe, fm_steps, len(reference), seed).items():
        scores = point_scores(x, reference, data_name, labels, None if exact is None else exact["map"], seed)
        metrics |= {f"{metric}_{name}": value for metric, value in scores.items()}
    if exact is not None:
        metrics |= exact_scores(data_name, len(reference), seed, guidance, interval, conditional)
        metrics["uerr"] = u_error(net, exact)
        if "own" in exact:
            metrics["uerrown"] = u_error(net, exact["own"])
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
    labels = index_labels(len(reference), train.num_classes)
    low, high = train.x.min(0).values, train.x.max(0).values
    box = low + (high - low) * torch.rand(len(reference), 2, generator=torch.Generator().manual_seed(seed))
    noise = index_noise(seed, range(len(reference)), (2,))
    samplers = {"data": (train.x[:len(reference)], None if labels is None else train.labels[:len(reference)]),
                "exact map": (exact["map"], labels), "uniform box": (box, None), "prior (u = 0)": (noise, None)}
    if data_name == "gaussians" and labels is not None:  # every sample on its class's mean: right modes, no spread
        samplers["class means"] = (GAUSSIAN_MEANS[labels].float(), labels)
    out = {}
    for name, (x, x_labels) in samplers.items():
        scores = point_scores(x, reference, data_name, x_labels, exact["map"], seed, labels)
        if name in ("data", "uniform box"):
            scores.pop("transport")  # these points are not images of the evaluation noise
        if name == "uniform box":
            scores.pop("spread")  # nor has the box a spread to compare
        out[name] = scores
    out["prior (u = 0)"]["uerr"] = float(exact["u"].pow(2).sum(1).mean())
    out["exact map"]["uerr"] = 0.0
    return out

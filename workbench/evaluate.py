"""Scores for a trained model (EMA weights) at each NFE and for the Flow Matching Euler baseline.

2D points: energy distance and sliced Wasserstein distance to the held-out split; for the checkerboard
and the Gaussian mixture also support scores (does a sample land on a square / near a mode), the
transport error against the exact one-step map and the u-error against the exact average velocity
(workbench/meanflow/exact.py). Images: FID and
KID through clean-fid (workbench/fid.py). Latents: Frechet distance of the latents themselves. Fixed
sample counts and per-index noise seeds make
scores comparable across cells.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.config import ConfigError, RunConfig
from workbench.data import (
    EXACT_REFERENCES,
    GAUSSIAN_MEANS,
    SUPPORT_SIZES,
    TOY_SETS,
    exact_flow,
    index_noise,
    load_data,
    support_cells,
)
from workbench.emas import ema_suffix
from workbench.fid import ImageScorer, RunningStats, frechet, image_scorer
from workbench.meanflow import sample


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


def samplers(nfe: tuple[int, ...], fm_steps: tuple[int, ...]) -> dict[str, tuple[bool, int]]:
    """Metric-name suffix -> (Flow Matching Euler?, steps): {'1nfe': (False, 1), ..., 'fm50': (True, 50)}."""
    return {f"{k}nfe": (False, k) for k in nfe} | {f"fm{k}": (True, k) for k in fm_steps}


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


def image_metrics(net: nn.Module, scorer: ImageScorer, shape: tuple[int, ...], nfe: tuple[int, ...],
                  fm_steps: tuple[int, ...], num_samples: int, seed: int, quantize: str,
                  decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """clean-fid FID (and KID) of generated images: {'fid_1nfe': ..., 'kid_1nfe': ..., 'fid_fm50': ...}, the
    features computed on the net's device as the samples come. decode: latents -> images in [-1, 1]."""
    scorer.to(next(net.parameters()).device)
    metrics = {}
    for name, (euler, steps) in samplers(nfe, fm_steps).items():
        chunks = sample_chunks(net, shape, euler, steps, num_samples, seed)
        scores = scorer.score_stream(map(decode, chunks) if decode else chunks, seed, quantize)
        metrics |= {f"{metric}_{name}": value for metric, value in scores.items()}
    return metrics


def flat_statistics(chunks: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of flattened tensors, accumulated chunk by chunk (float64 sums on their device)."""
    stats = RunningStats()
    for chunk in chunks:
        stats.update(chunk.flatten(1))
    return stats.mean_cov()


def latent_metrics(net: nn.Module, reference: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...],
                   nfe: tuple[int, ...], fm_steps: tuple[int, ...], num_samples: int, seed: int) -> dict[str, float]:
    """Frechet distance between generated latents and the reference's (mean, covariance) of flattened
    latents: {'fdlatent_1nfe': ...}. A cheap proxy during training; its scale is not FID's."""
    return {f"fdlatent_{name}": frechet(*flat_statistics(sample_chunks(net, shape, euler, steps, num_samples, seed)),
                                        *reference)
            for name, (euler, steps) in samplers(nfe, fm_steps).items()}


HIGHER_IS_BETTER = ("precision", "modes", "labelprec")  # every other evaluation metric: lower is better


def metric_names(config: RunConfig) -> list[str]:
    """The names of the final metrics a run of `config` logs, without loading a model or a scorer: those of
    train.ema_decay's EMA, then each again for every extra EMA (fid_1nfe_ema0.99995) and the raw weights."""
    names = _metric_names(config)
    extra = [ema_suffix(d) for d in config.train.ema_decays] + (["raw"] if config.eval.raw else [])
    return names + [f"{name}_{suffix}" for suffix in extra for name in names]


def _metric_names(config: RunConfig) -> list[str]:
    ev, name = config.eval, config.data.name
    suffixes = list(samplers(ev.nfe, ev.fm_steps))
    if name in TOY_SETS:
        families = ["energy", "swd"]
        if name in EXACT_REFERENCES:
            labelled = config.data.labels and load_data(name, "test").num_classes
            families += ["precision", "tv", "modes", "transport"] + (["labelprec"] if labelled else [])
        return [f"{family}_{s}" for s in suffixes for family in families] + (["uerr"] if name in EXACT_REFERENCES else [])
    if name == "latents" and ev.features != "inception":
        return [f"fdlatent_{s}" for s in suffixes]
    families = ("fid",) if ev.features == "inception" else ("fid", "kid")  # KID needs the reference features
    return [f"{family}_{s}" for s in suffixes for family in families]


@dataclass
class Evaluator:
    """net, num_samples -> metrics; `info` says what the scores are measured with (never compare
    scores across feature sets) and is written beside them."""

    score: Callable[[nn.Module, int], dict[str, float]]
    info: dict

    def __call__(self, net: nn.Module, num_samples: int) -> dict[str, float]:
        return self.score(net, num_samples)


def evaluator_for(config: RunConfig) -> Evaluator:
    """The metrics for this run's data: distribution distances for 2D points, FID/KID for images."""
    ev, name = config.eval, config.data.name
    if name in TOY_SETS:
        mf = config.meanflow
        guidance, interval = mf.cfg_omega / (1 - mf.cfg_kappa), (mf.cfg_t_lo, mf.cfg_t_hi)
        exact = " and the exact flow map (transport, uerr, support scores)" if name in EXACT_REFERENCES else ""
        return Evaluator(lambda net, n: toy_metrics(net, name, ev.nfe, ev.fm_steps, n, ev.seed, guidance, interval),
                         {"features": f"points (energy distance, sliced W2 vs held-out split{exact})", "seed": ev.seed,
                          **({"exact_guidance": guidance} if exact else {})})
    data = load_data(name, "test", path=config.data.path, data_dir=config.data.data_dir)
    if data.kind == "latents" and ev.features == "inception":
        return decoded_image_evaluator(config, data)
    if data.kind == "latents":
        if ev.features != "auto" and ev.features != "latent":
            raise ConfigError(f"eval.features={ev.features!r}: latents are scored as latents (latent) or, decoded "
                              "by eval.vae_path, with Inception (inception)")
        reference = flat_statistics(posterior_samples(data, ev.seed))
        return Evaluator(lambda net, n: latent_metrics(net, reference, data.shape, ev.nfe, ev.fm_steps, n, ev.seed),
                         {"features": "latent (Frechet distance of flattened latents vs the training latents)",
                          "seed": ev.seed})
    kind = ev.features if ev.features != "auto" else ("classifier" if data.labels is not None else "inception")
    scorer = image_scorer(config.data, kind, Path(ev.cache_dir), ev.seed, ev.inception_mode, reference=ev.fid_reference)
    return Evaluator(lambda net, n: image_metrics(net, scorer, data.shape, ev.nfe, ev.fm_steps, n, ev.seed, ev.quantize),
                     {"features": scorer.name, "seed": ev.seed, **scorer.info})


def posterior_samples(data, seed: int, chunk: int = 4096) -> Iterator[torch.Tensor]:
    """The data set's latents in chunks: fixed latents as they are, a posterior's mean and std as one draw each
    (the noise from `seed`), so the reference has the spread the training latents have."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(data.x), chunk):
        x = data.x[start:start + chunk].float()
        if data.std is not None:
            x = x + data.std[start:start + chunk].float() * torch.randn(x.shape, generator=generator)
        yield x


def decoded_image_evaluator(config: RunConfig, data) -> Evaluator:
    """FID of generated latents decoded to images by eval.vae_path (SD-VAE), Inception features against
    eval.fid_reference (ImageNet 256: ADM's statistics), as the official ImageNet evaluation computes it."""
    from workbench.vae import decode, load_vae

    ev = config.eval
    if not ev.fid_reference:
        raise ConfigError("eval.features='inception' on latents needs eval.fid_reference: the statistics of real "
                          "images (ImageNet 256: ADM's VIRTUAL_imagenet256_labeled.npz)")
    vae = load_vae(ev.vae_path)
    scorer = image_scorer(config.data, "inception", Path(ev.cache_dir), ev.seed, ev.inception_mode,
                          reference=ev.fid_reference)
    return Evaluator(lambda net, n: image_metrics(net, scorer, data.shape, ev.nfe, ev.fm_steps, n, ev.seed, ev.quantize,
                                                  decode=lambda z: decode(vae, z, data.scale)),
                     {"features": f"{scorer.name} of images decoded by {ev.vae_path}", "reference": ev.fid_reference,
                      "seed": ev.seed})

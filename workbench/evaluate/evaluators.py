"""The evaluator of a run: what scores a trained model (EMA weights) at each NFE and for the Flow Matching
Euler baseline, chosen by the run's data. 2D points: workbench/evaluate/toy.py. Images: FID and KID through
clean-fid (workbench/evaluate/fid.py). Latents: Frechet distance of the latents themselves, or FID of the
decoded images. Fixed sample counts and per-index noise seeds make scores comparable across cells.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.config import ConfigError, RunConfig
from workbench.data import (
    EXACT_REFERENCES,
    TOY_SETS,
    index_noise,
    load_data,
)
from workbench.evaluate.draw import sample_chunks
from workbench.evaluate.fid import ImageScorer, RunningStats, frechet, image_scorer
from workbench.evaluate.names import samplers
from workbench.evaluate.toy import SAMPLER_KEYS, toy_metrics
from workbench.run.model import sampling_net


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
        guidance, interval = config.sampled_guidance()
        exact = " and the exact flow map (transport, spread, uerr, support scores)" if name in EXACT_REFERENCES else ""
        sampler = tuple((key, getattr(config.meanflow, key)) for key in SAMPLER_KEYS)
        return Evaluator(lambda net, n: toy_metrics(sampling_net(net, config), name, ev.nfe, ev.fm_steps, n, ev.seed,
                                                    guidance, interval, sampler),
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
        return Evaluator(lambda net, n: latent_metrics(sampling_net(net, config), reference, data.shape, ev.nfe,
                                                       ev.fm_steps, n, ev.seed),
                         {"features": "latent (Frechet distance of flattened latents vs the training latents)",
                          "seed": ev.seed})
    scorer = image_scorer(config.data, feature_kind(config, data), Path(ev.cache_dir), ev.seed, ev.inception_mode,
                          reference=ev.fid_reference)
    return Evaluator(lambda net, n: image_metrics(sampling_net(net, config), scorer, data.shape, ev.nfe, ev.fm_steps, n,
                                                  ev.seed, ev.quantize),
                     {"features": scorer.name, "seed": ev.seed, **scorer.info})


def feature_kind(config: RunConfig, test) -> str:
    """The image features a run is scored in: eval.features, or for auto a classifier trained on the labels where the
    data has them, else Inception."""
    if config.eval.features != "auto":
        return config.eval.features
    return "classifier" if test.labels is not None else "inception"


def image_references(config: RunConfig, chunk: int = 1000) -> dict[str, dict[str, float]]:
    """The FID and KID of reference image sets in the features of the classifier trained on the data's labels,
    against the reference statistics evaluator_for scores a model against, to read its scores by:
    'held-out images' (the test split, at most eval.num_samples of them: the sampling floor, measured on fewer
    samples where the split is smaller, which biases FID upwards), 'class means' (sample i the mean training image of
    class i mod classes: the right modes with no spread; labelled data) and 'prior (u = 0)' (the evaluation noise
    itself, clipped: what a one-step model that outputs zero gives). {name: {'fid': ..., 'kid': ..., 'n': ...}}."""
    ev = config.eval
    train = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir,
                      labels=config.data.labels)
    test = load_data(config.data.name, "test", path=config.data.path, data_dir=config.data.data_dir)
    if train.kind != "images":
        raise ConfigError(f"data.name={config.data.name!r} is {train.kind}: image references score images")
    if feature_kind(config, test) != "classifier":
        raise ConfigError("reference image sets are scored in classifier features only (Inception features of "
                          "reference sets on a CPU would take longer than rendering the report)")
    scorer = image_scorer(config.data, "classifier", Path(ev.cache_dir), ev.seed, ev.inception_mode, reference=ev.fid_reference)
    n = ev.num_samples
    held_out = test.x[:n].float()
    sets = {"held-out images": held_out,
            "prior (u = 0)": index_noise(ev.seed, range(n), train.shape).clamp(-1, 1)}
    if train.num_classes:
        means = torch.stack([train.x[train.labels == c].float().mean(0) for c in range(train.num_classes)])
        sets["class means"] = means[torch.arange(n) % train.num_classes]
    return {name: scorer.score_stream(images.split(chunk), ev.seed, ev.quantize) | {"n": len(images)}
            for name, images in sets.items()}


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
    from workbench.evaluate.vae import decode, load_vae

    ev = config.eval
    if not ev.fid_reference:
        raise ConfigError("eval.features='inception' on latents needs eval.fid_reference: the statistics of real "
                          "images (ImageNet 256: ADM's VIRTUAL_imagenet256_labeled.npz)")
    vae = load_vae(ev.vae_path)
    scorer = image_scorer(config.data, "inception", Path(ev.cache_dir), ev.seed, ev.inception_mode,
                          reference=ev.fid_reference)
    return Evaluator(lambda net, n: image_metrics(sampling_net(net, config), scorer, data.shape, ev.nfe, ev.fm_steps, n,
                                                  ev.seed, ev.quantize, decode=lambda z: decode(vae, z, data.scale)),
                     {"features": f"{scorer.name} of images decoded by {ev.vae_path}", "reference": ev.fid_reference,
                      "seed": ev.seed})


def evaluate_saved(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """`wb eval`: scores every EMA a saved run keeps (and the raw weights with eval.raw) under its config with
    eval.* `overrides`; writes run_dir/eval.json and returns the scores."""
    from workbench.config import with_overrides
    from workbench.run.checkpoint import load_ema
    from workbench.run.emas import kept_weights
    from workbench.run.trackers import write_eval

    config = with_overrides(RunConfig.model_validate_json((run_dir / "config.json").read_text()), overrides)
    evaluator = evaluator_for(config)
    metrics = {}
    for which in kept_weights(config):
        scores = evaluator(load_ema(run_dir, config, which), config.eval.num_samples)
        metrics |= {(f"{key}_{which}" if which else key): value for key, value in scores.items()}
    write_eval(run_dir, evaluator.info, config.eval.num_samples, metrics)
    return metrics


def train_scored(config: RunConfig, run_dir: Path, resume: bool):
    """`wb train`: trains (or continues) the run with its evaluator, and on rank 0 saves its sample pictures;
    the TrainResult there, None on the other data-parallel ranks."""
    import os

    from workbench.evaluate.pictures import save_run_pictures
    from workbench.run.train import train

    result = train(config, run_dir, resume=resume, evaluator=evaluator_for(config))
    if os.environ.get("RANK", "0") != "0":
        return None
    save_run_pictures(result.ema, result.data, config, result.run_dir, scored=True)
    return result

"""ImageNet-latent path: the Frechet distance of latents, and the shipped GPU studies smoke-run on CPU."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from workbench.config import ConfigError, with_overrides
from workbench.data import index_noise
from workbench.evaluate.classifier import FeatureError
from workbench.evaluate.evaluators import evaluator_for, flat_statistics, latent_metrics, posterior_samples
from workbench.evaluate.fid import frechet
from workbench.evaluate.pictures import save_run_pictures
from workbench.run.train import train
from workbench.study.study import load_study


class Constant(torch.nn.Module):
    """u = z - c: one MeanFlow step from t = 1 to r = 0 gives z - (z - c) = c for any noise z."""

    num_classes = 0

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t, r, labels=None):
        return z - self.target.expand_as(z)


def test_fd_of_latents_is_the_squared_mean_shift_for_a_point_mass():
    """Generated latents all equal c; reference N(0, I)-like sample: FD = |mu - c|^2 + tr(Sigma)."""
    reference = torch.randn(4000, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    c = torch.full((1, 2, 2, 2), 0.5)
    stats = flat_statistics(reference.split(1000))
    score = latent_metrics(Constant(c), stats, (2, 2, 2), (1,), (), 500, 0)["fdlatent_1nfe"]
    flat = reference.flatten(1).double()
    expected = float((flat.mean(0) - 0.5).pow(2).sum() + torch.cov(flat.T).trace())
    assert math.isclose(score, expected, rel_tol=1e-6)


def test_fd_of_latents_for_every_sampler():
    """Euler on u(z, t, t) = z - c from t = 1 in 2 steps gives 0.25 e + 0.75 c: fm2 scores those latents."""
    reference = torch.randn(4000, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    c = torch.full((1, 2, 2, 2), 0.5)
    stats = flat_statistics(reference.split(1000))
    tilted = Constant(c)  # u = (z - c)(1 + t - r): the same on Euler's r = t, not for MeanFlow's r < t
    tilted.forward = lambda z, t, r, labels=None: (z - c) * (1 + t - r).view(-1, 1, 1, 1)
    scores = latent_metrics(tilted, stats, (2, 2, 2), (1,), (2,), 500, 3)
    assert set(scores) == {"fdlatent_1nfe", "fdlatent_fm2"}
    euler = 0.25 * index_noise(3, range(500), (2, 2, 2)) + 0.75 * c
    assert math.isclose(scores["fdlatent_fm2"], frechet(*flat_statistics([euler]), *stats), rel_tol=1e-6)


def test_posterior_samples_are_the_latents_or_one_draw_of_each_posterior():
    mean = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(0))
    fixed = list(posterior_samples(SimpleNamespace(x=mean.half(), std=None), seed=0, chunk=4))
    assert [len(x) for x in fixed] == [4, 4, 2] and torch.equal(torch.cat(fixed), mean.half().float())
    std = torch.full((10, 2, 3), 0.5)
    torch.manual_seed(0)  # the draws come from the seed, not from torch's global generator
    draws = torch.cat(list(posterior_samples(SimpleNamespace(x=mean, std=std), seed=1, chunk=4)))
    torch.manual_seed(1)
    assert torch.equal(draws, torch.cat(list(posterior_samples(SimpleNamespace(x=mean, std=std), seed=1, chunk=4))))
    whole = torch.cat(list(posterior_samples(SimpleNamespace(x=mean, std=std), seed=1)))  # one chunk: one draw
    assert torch.equal(whole, mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(draws, torch.cat(list(posterior_samples(SimpleNamespace(x=mean, std=std), seed=2, chunk=4))))
    many = torch.cat(list(posterior_samples(SimpleNamespace(x=torch.zeros(20_000, 3), std=torch.full((20_000, 3), 0.5)),
                                            seed=0)))
    assert abs(many.mean().item()) < 0.01 and abs(many.std().item() - 0.5) < 0.01


def latents_file(tmp_path, n=48, classes=3):
    """8x8 instead of 32x32 latents: the Frechet distance over 4096 dimensions alone takes minutes on a CPU."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imagenet256_latents.npz", latents=rng.standard_normal((n, 4, 8, 8)).astype(np.float32),
             labels=rng.integers(0, classes, n))
    return tmp_path / "imagenet256_latents.npz"


def test_imagenet_study_smoke_runs_at_full_network_size(tmp_path):
    """A shipped study's DiT-B/4 and settings (guidance with mixing: the most forward passes), 2 steps
    of batch 2 on a small synthetic latent file; ~20 s on 2 CPU cores. The other studies differ only
    in axis values, which the rest of the suite covers on small networks."""
    study = load_study("imagenet_table5")
    cell = study.cells()[-1]
    assert (cell.config.net.dit.hidden, cell.config.net.dit.depth, cell.config.net.dit.patch_size) == (768, 12, 4)
    # scored by the latent distance here: the study's decoded-image FID needs the VAE and Inception weights
    config = with_overrides(cell.config, {"data.path": str(latents_file(tmp_path)), "train.steps": 2,
                                          "train.batch_size": 2, "train.device": "cpu", "eval.num_samples": 16,
                                          "eval.nfe": "1", "eval.every": 0, "sample.num_images": 4,
                                          "eval.features": "latent"})
    result = train(config, tmp_path / "run", progress=False, evaluator=evaluator_for(config))
    save_run_pictures(result.ema, result.data, config, tmp_path / "run", scored=True)
    assert study.metric == "fid_1nfe" and math.isfinite(result.metrics["fdlatent_1nfe"])
    assert (tmp_path / "run" / "samples.png").is_file()


def test_latents_refuse_classifier_features_and_name_the_missing_vae(tmp_path):
    config = with_overrides(load_study("imagenet_table1a").cells()[0].config,
                            {"data.path": str(latents_file(tmp_path)), "eval.features": "classifier"})
    with pytest.raises(ConfigError) as error:
        evaluator_for(config)
    assert str(error.value) == ("eval.features='classifier': latents are scored as latents (latent) or, decoded by "
                                "eval.vae_path, with Inception (inception)")
    assert evaluator_for(with_overrides(config, {"eval.features": "latent"})).info["features"].startswith("latent")
    with pytest.raises(FeatureError, match="data/sd-vae-ft-mse"):
        evaluator_for(with_overrides(config, {"eval.features": "inception"}))


def test_cifar10_study_smoke_runs_at_full_network_size(tmp_path):
    """A shipped CIFAR-10 study's U-Net and settings, 2 steps of batch 2, on a synthetic 32x32 RGB npz
    (torchvision's CIFAR-10 loader checks checksums, so no fake CIFAR-10 folder can stand in)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 64))
    study = load_study("cifar10_table1a")
    cell = study.cells()[1]  # 25% r != t
    assert cell.config.net.arch == "songunet" and cell.config.data.augment_p == 0.12 and not cell.config.data.labels
    config = with_overrides(cell.config, {"data.name": "npz", "data.path": str(tmp_path / "rgb.npz"),
                                          "train.steps": 2, "train.batch_size": 2, "train.device": "cpu",
                                          "eval.features": "classifier", "eval.cache_dir": str(tmp_path / "cache"),
                                          "eval.num_samples": 16, "eval.nfe": "1", "eval.fm_steps": "",
                                          "eval.every": 0, "sample.num_images": 4, "eval.raw": False,
                                          "train.ema_decays": ""})  # one scored EMA: tests/test_recipes.py scores all
    result = train(config, tmp_path / "run", progress=False, evaluator=evaluator_for(config))
    save_run_pictures(result.ema, result.data, config, tmp_path / "run", scored=True)
    assert math.isfinite(result.metrics["fid_1nfe"]) and (tmp_path / "run" / "samples.png").is_file()

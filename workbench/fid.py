"""Image FID and KID through clean-fid's own feature pipeline and distance functions.

Two feature sets:
- `classifier`: a small CNN trained by the workbench on the data set's labels (deterministic,
  cached by data set and seed), its penultimate layer as clean-fid's custom feature extractor.
  Works offline; CPU studies on digits use it. Scores are only comparable within one feature set.
- `inception`: clean-fid's Inception (clean mode). Needs its weights file on disk.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid
from scipy.linalg import LinAlgWarning
from torch import nn

from workbench.config import DataConfig
from workbench.data import Dataset, load_data

INCEPTION_FILE = Path("/tmp/inception-2015-12-05.pt")  # where clean-fid's feature_extractor() looks on Linux
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


class FeatureError(RuntimeError):
    """A feature extractor or reference statistic that is not available offline; says which file goes where."""


class DigitClassifier(nn.Module):
    """Small CNN for C x H x W images (H, W divisible by 4); features() is the 128-d penultimate layer."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def as_source(data: DataConfig | str) -> DataConfig:
    """A data set name ("digits") or a run's data config (user files need their path)."""
    return DataConfig(name=data) if isinstance(data, str) else data


def load(data: DataConfig, split: str) -> Dataset:
    return load_data(data.name, split, path=data.path, data_dir=data.data_dir)


def data_key(data: DataConfig) -> str:
    """Cache key: the set's name, plus a digest of path, size and mtime for a user's file or folder."""
    if not data.path:
        return data.name
    path = Path(data.path).resolve()
    stat = path.stat()
    digest = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"{data.name}-{digest}"


def train_classifier(data: DataConfig | str, seed: int = 0, epochs: int = 40) -> tuple[DigitClassifier, float]:
    """Trains the classifier on the train split; returns it with its test-split accuracy."""
    data = as_source(data)
    train_set, test_set = load(data, "train"), load(data, "test")
    if train_set.labels is None or train_set.kind != "images":
        raise FeatureError(f"data.name={data.name!r}: the classifier features need labelled images")
    torch.manual_seed(seed)
    model = DigitClassifier(*train_set.shape, train_set.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(train_set.x), generator=generator).split(128):
            x = train_set.x[index]
            x = x + 0.1 * torch.randn(x.shape, generator=generator)  # mild noise: features robust to sample noise
            loss = nn.functional.cross_entropy(model(x), train_set.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_set.x).argmax(1) == test_set.labels).float().mean().item()
    return model, accuracy


def load_classifier(data: DataConfig, cache_dir: Path, seed: int = 0) -> tuple[DigitClassifier, float]:
    """The cached classifier for (data set, seed), training it on first use."""
    path = Path(cache_dir) / f"classifier-{data_key(data)}-seed{seed}.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        model = DigitClassifier(*state["shape"], state["num_classes"])
        model.load_state_dict(state["model"])
        return model.eval(), state["accuracy"]
    model, accuracy = train_classifier(data, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = load(data, "test").shape
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "shape": shape, "num_classes": model.head.out_features,
                "accuracy": accuracy}, tmp)
    os.replace(tmp, path)
    return model, accuracy


def classifier_extractor(model: DigitClassifier, channels: int):
    """clean-fid feature extractor: (B, 3, H, W) floats in [0, 255] (clean-fid makes every image RGB)."""
    def extract(batch: torch.Tensor) -> torch.Tensor:
        x = batch.float() / 127.5 - 1.0
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x
        with torch.no_grad():
            return model.features(x)
    return extract


def keep_size(image: np.ndarray) -> np.ndarray:
    """clean-fid resize step for the classifier: none (it reads the data set's own resolution)."""
    return image.astype(np.float32)


def inception_extractor(device: torch.device):
    if not INCEPTION_FILE.is_file():
        raise FeatureError(f"clean-fid's Inception weights are not at {INCEPTION_FILE}; this machine is offline. "
                           f"Download {INCEPTION_URL} and put it at {INCEPTION_FILE}, or use eval.features=classifier")
    from cleanfid.features import build_feature_extractor

    return build_feature_extractor("clean", device, use_dataparallel=False)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8 RGB (N, 3, H, W), quantized exactly as saving a PNG would."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def features(images: torch.Tensor, extractor, fn_resize, batch_size: int = 250) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, D) features through clean-fid's get_model_features (its resize, then the extractor)."""
    n = images.shape[0]
    padded = images[torch.arange(n + (-n) % batch_size) % n]  # clean-fid wants full batches; extra rows are cut
    batches = iter(padded.split(batch_size))
    return cleanfid.get_model_features(lambda z: next(batches).float(), extractor, mode="clean", z_dim=1,
                                       num_gen=n, batch_size=batch_size, device=torch.device("cpu"),
                                       verbose=False, custom_fn_resize=fn_resize)


def fid_kid(feats: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, ref_feats: np.ndarray | None,
            seed: int = 0) -> dict[str, float]:
    """clean-fid's frechet_distance, and kernel_distance (KID) with its subsets drawn from a fixed seed."""
    mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
    with warnings.catch_warnings():
        # Inside clean-fid: recent scipy deprecates sqrtm(disp=False), and warns on the near-singular
        # covariance of ReLU features with dead units (clean-fid's own eps offset handles a failure).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        scores = {"fid": float(cleanfid.frechet_distance(mu, sigma, ref_mu, ref_sigma))}
    if ref_feats is not None:
        state = np.random.get_state()
        np.random.seed(seed)  # kernel_distance draws subsets from numpy's global generator
        try:
            scores["kid"] = float(cleanfid.kernel_distance(feats, ref_feats))
        finally:
            np.random.set_state(state)
    return scores


def reference_features(data: DataConfig, extractor, fn_resize, cache_file: Path) -> np.ndarray:
    """Features of the whole train split, computed once and cached."""
    if cache_file.exists():
        return np.load(cache_file)
    feats = features(to_uint8(load(data, "train").x), extractor, fn_resize)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache_file, feats)
    return feats


@dataclass
class ImageScorer:
    """FID/KID of generated images against one data set's reference, with one feature set."""

    name: str  # the feature set, recorded with every score
    extractor: Callable[[torch.Tensor], torch.Tensor]
    fn_resize: Callable[[np.ndarray], np.ndarray] | None  # None: clean-fid's clean-mode resize to 299
    ref_mu: np.ndarray
    ref_sigma: np.ndarray
    ref_feats: np.ndarray | None  # None when only precomputed statistics exist (no KID then)
    info: dict = field(default_factory=dict)  # e.g. the classifier's test accuracy

    def score(self, images: torch.Tensor, seed: int = 0) -> dict[str, float]:
        """images (N, C, H, W) in [-1, 1] -> {'fid': ..., 'kid': ...}."""
        return fid_kid(features(to_uint8(images), self.extractor, self.fn_resize),
                       self.ref_mu, self.ref_sigma, self.ref_feats, seed)


def image_scorer(data: DataConfig | str, kind: str, cache_dir: Path, seed: int = 0) -> ImageScorer:
    """kind 'classifier' (offline) or 'inception' (clean-fid; CIFAR-10 uses its precomputed train statistics)."""
    data, cache_dir = as_source(data), Path(cache_dir)
    if kind == "classifier":
        model, accuracy = load_classifier(data, cache_dir, seed)
        extractor, fn_resize, name = classifier_extractor(model, load(data, "test").shape[0]), keep_size, \
            f"classifier-{data_key(data)}-seed{seed}"
        info = {"classifier_test_accuracy": accuracy}
    else:
        extractor, fn_resize, name, info = inception_extractor(torch.device("cpu")), None, "inception-clean", {}
    if kind == "inception" and data.name == "cifar10":
        stats = Path(cleanfid.__file__).parent / "stats" / "cifar10_clean_train_32.npz"
        if not stats.is_file():
            raise FeatureError(f"clean-fid's CIFAR-10 statistics are not at {stats}; this machine is offline. Put "
                               "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_clean_train_32.npz there")
        with np.load(stats) as ref:
            return ImageScorer(name, extractor, fn_resize, ref["mu"], ref["sigma"], None, info)
    ref = reference_features(data, extractor, fn_resize, cache_dir / f"reference-{data_key(data)}-{name}.npy")
    return ImageScorer(name, extractor, fn_resize, ref.mean(axis=0), np.cov(ref, rowvar=False), ref, info)

"""The offline feature set of image FID on CPU studies: a small CNN trained on the data set's labels
(deterministic, cached by data set and seed), its penultimate layer as clean-fid's custom feature extractor.
Scores are only comparable within one feature set (workbench/evaluate/fid.py)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from workbench.config import DataConfig
from workbench.data import Dataset, load_data


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


CLASSIFIER_EPOCHS = 40  # of the cached classifier every digits FID is measured with


def train_classifier(data: DataConfig | str, seed: int, epochs: int) -> tuple[DigitClassifier, float]:
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


def load_classifier(data: DataConfig, cache_dir: Path, seed: int) -> tuple[DigitClassifier, float]:
    """The cached classifier for (data set, seed), training it on first use."""
    path = Path(cache_dir) / f"classifier-{data_key(data)}-seed{seed}.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        model = DigitClassifier(*state["shape"], state["num_classes"])
        model.load_state_dict(state["model"])
        return model.eval(), state["accuracy"]
    model, accuracy = train_classifier(data, seed, CLASSIFIER_EPOCHS)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = load(data, "test").shape
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "shape": shape, "num_classes": model.head.out_features,
                "accuracy": accuracy}, tmp)
    os.replace(tmp, path)
    return model, accuracy


def classifier_extractor(model: DigitClassifier, channels: int):
    """clean-fid feature extractor: (B, 3, H, W) floats in [0, 255] (clean-fid makes every image RGB), on
    the model's device."""
    def extract(batch: torch.Tensor) -> torch.Tensor:
        x = batch.float() / 127.5 - 1.0
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x
        with torch.no_grad():
            return model.features(x)
    return extract

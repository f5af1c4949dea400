"""Data sets as in-memory tensors: toy 2D sets, sklearn digits, torchvision sets, user images, latents.

Points are returned as they are; images as float (N, C, H, W) scaled to [-1, 1]; latents (e.g. SD-VAE
encodings of ImageNet) as stored.
Nothing downloads unless `download=True` is asked for explicitly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from workbench.meanflow.exact import ExactFlow, GaussianMixture, UniformSquares

TOY_SIZES = {"train": 50_000, "test": 10_000}  # fixed so held-out metrics are comparable
TOY_SEEDS = {"train": 0, "test": 1}


def index_noise(seed: int, indices: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(len(indices), *shape) float32 Gaussian noise where row i depends only on (seed, indices[i]).

    Sample i of an evaluation or a picture is then the same across cells, batch sizes and workers.
    numpy's SeedSequence hashes the pair (torch.manual_seed would keep only 32 bits of a combined seed).
    """
    rows = [np.random.default_rng([seed, int(i)]).standard_normal(shape, dtype=np.float32) for i in indices]
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, *shape)


class DataError(ValueError):
    """A data set that cannot be loaded: the message says which file or folder is expected."""


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor  # (N, *shape) float32
    labels: torch.Tensor | None  # (N,) int64 in [0, num_classes), or None when unlabelled
    num_classes: int
    kind: str  # "points", "images" or "latents"
    std: torch.Tensor | None = None  # latents stored as a posterior: x is its mean, a training latent x + std * e
    scale: float = 1.0  # latents: the factor they were multiplied by (SD-VAE 0.18215); the decoder divides it out

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        move = lambda a: None if a is None else a.to(device)
        return replace(self, x=self.x.to(device), labels=move(self.labels), std=move(self.std))


# Toy 2D sets --------------------------------------------------------------------------------

def checkerboard(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
    """Uniform on the 8 black squares of a 4x4 board over [-2, 2]^2 (FFJORD's, scaled by 1/2)."""
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1), None


def moons(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles, label = which moon, centred and scaled to about unit variance."""
    labels = rng.integers(0, 2, n)
    angle = rng.uniform(0, np.pi, n)
    x = np.where(labels[:, None] == 0,
                 np.stack([np.cos(angle), np.sin(angle)], 1),
                 np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], 1))
    x = x + 0.05 * rng.standard_normal((n, 2))
    return (x - [0.5, 0.25]) * 1.5, labels


def spirals(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spiral arms, label = arm."""
    labels = rng.integers(0, 2, n)
    radius = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    angle = radius + np.pi * labels
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1) / (1.5 * np.pi)
    return x + 0.05 * rng.standard_normal((n, 2)), labels


def gaussians(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixture of 8 Gaussians (std 0.1) on a circle of radius 2; label = component."""
    labels = rng.integers(0, 8, n)
    return GAUSSIAN_MEANS.numpy()[labels] + GAUSSIAN_STD * rng.standard_normal((n, 2)), labels


# Where the checkerboard and Gaussian mixture put their mass, for their exact references and support metrics.
CHECKER_CORNERS = torch.tensor([[i, j] for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0],
                               dtype=torch.float64)  # lower-left corners of the 8 unit squares
_ANGLES = 2 * np.pi * np.arange(8) / 8
GAUSSIAN_MEANS = torch.from_numpy(2 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1))  # on a circle of radius 2
GAUSSIAN_STD = 0.1
EXACT_REFERENCES = {  # toy sets whose velocity field is known in closed form (workbench.meanflow.exact)
    "checkerboard": UniformSquares(CHECKER_CORNERS),
    "gaussians": GaussianMixture(GAUSSIAN_MEANS, GAUSSIAN_STD),
}
SUPPORT_SIZES = {"checkerboard": len(CHECKER_CORNERS), "gaussians": len(GAUSSIAN_MEANS)}  # squares, modes
MODE_RADIUS = 3 * GAUSSIAN_STD  # a Gaussian sample is "near a mode" within 3 standard deviations


def exact_flow(name: str, guidance: float = 1.0, interval: tuple[float, float] = (0.0, 1.0)) -> ExactFlow:
    """The exact velocity field and flow map of a toy set, guided by w' (= omega / (1 - kappa)) inside interval."""
    if name not in EXACT_REFERENCES:
        raise DataError(f"data.name={name!r} has no exact reference (have {', '.join(EXACT_REFERENCES)})")
    return ExactFlow(EXACT_REFERENCES[name], guidance, interval)


def support_cells(name: str, x: torch.Tensor) -> torch.Tensor:
    """(N,) index of the square (checkerboard) or mode (gaussians) each point lies in, -1 outside all."""
    x = x.double()
    if name == "checkerboard":
        inside = ((x[:, None] >= CHECKER_CORNERS[None]) & (x[:, None] <= CHECKER_CORNERS[None] + 1)).all(-1)  # (N, 8)
    elif name == "gaussians":
        inside = torch.cdist(x, GAUSSIAN_MEANS) <= MODE_RADIUS
    else:
        raise DataError(f"support_cells: no support defined for data.name={name!r} (have {', '.join(EXACT_REFERENCES)})")
    return torch.where(inside.any(1), inside.int().argmax(1), -1)


def _toy(make, num_classes: int):
    def load(split: str, **_) -> Dataset:
        x, labels = make(np.random.default_rng(TOY_SEEDS[split]), TOY_SIZES[split])
        return Dataset(torch.tensor(x, dtype=torch.float32),
                       None if labels is None else torch.tensor(labels, dtype=torch.long), num_classes, "points")
    return load


# Images -------------------------------------------------------------------------------------

def _images(array: np.ndarray, labels, num_classes: int) -> Dataset:
    """uint8 (N, H, W[, C]) -> Dataset of float images in [-1, 1], channels first."""
    if array.ndim == 3:
        array = array[..., None]
    x = torch.tensor(array, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0
    labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return Dataset(x.contiguous(), labels, num_classes, "images")


def digits(split: str, **_) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits (ships with the package); a fixed 1500/297 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    keep = order[:1500] if split == "train" else order[1500:]
    images = np.round(bunch.images[keep] * 255 / 16).astype(np.uint8)
    return _images(images, bunch.target[keep], 10)


def _torchvision(class_name: str, folder: str):
    def load(split: str, data_dir: str = "data", download: bool = False, **_) -> Dataset:
        import torchvision

        try:
            ds = getattr(torchvision.datasets, class_name)(root=data_dir, train=split == "train", download=download)
        except RuntimeError as err:
            raise DataError(
                f"{class_name} not found under {Path(data_dir) / folder}: put the data set's files there "
                f"(data.data_dir={data_dir!r}), or pass --set data.download=true when online ({err})"
            ) from None
        return _images(np.asarray(ds.data), np.asarray(ds.targets), len(ds.classes))
    return load


def npz(split: str, path: str = "", **_) -> Dataset:
    """A user's .npz with 'images' uint8 (N, H, W[, C]) and optional 'labels' (N,) ints (train split only)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path={path!r}: no such .npz file")
    with np.load(file) as archive:
        if "images" not in archive:
            raise DataError(f"{file}: needs an array 'images' (uint8, N x H x W [x C]); has {sorted(archive)}")
        labels = archive.get("labels")
        return _images(archive["images"], labels, 0 if labels is None else int(labels.max()) + 1)


def latents(split: str, path: str = "", **_) -> Dataset:
    """A .npz of pre-encoded latents, scaled as the model should see them (SD-VAE: x 0.18215): either the
    encoder's posterior, 'mean' and 'std' (N, C, H, W), from which every step draws a fresh latent (the
    official ImageNet recipe; `wb encode` writes such a file), or fixed 'latents' (N, C, H, W); float16 is
    kept as float16 (half the memory). Optional 'labels' (N,) ints and 'scale' (the factor, for decoding).
    One split: evaluation compares with the training latents."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path={path!r}: no such .npz file of latents ('mean' and 'std', or 'latents', N x C x H x W)")
    with np.load(file) as archive:
        keys = "mean" if "mean" in archive else "latents"
        if keys not in archive or archive[keys].ndim != 4 or (keys == "mean" and archive.get("std") is None):
            raise DataError(f"{file}: needs float arrays 'mean' and 'std' (N x C x H x W, a posterior), or 'latents'; "
                            f"has {sorted(archive)}")
        keep = lambda a: torch.from_numpy(np.ascontiguousarray(a if a.dtype == np.float16 else a.astype(np.float32)))
        x = keep(archive[keys])
        std = keep(archive["std"]) if keys == "mean" else None
        if std is not None and std.shape != x.shape:
            raise DataError(f"{file}: 'std' {tuple(std.shape)} must match 'mean' {tuple(x.shape)}")
        labels = torch.as_tensor(archive["labels"], dtype=torch.long) if "labels" in archive else None
        scale = float(archive["scale"]) if "scale" in archive else 1.0
    return Dataset(x, labels, 0 if labels is None else int(labels.max()) + 1, "latents", std, scale)


def folder(split: str, path: str = "", **_) -> Dataset:
    """Same-size PNG/JPEG images in a folder; class subfolders (if any) become labels."""
    from PIL import Image

    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}) if root.is_dir() else []
    if not files:
        raise DataError(f"data.path={path!r}: no folder with .png/.jpg images")
    classes = sorted({p.parent.name for p in files}) if any(p.parent != root for p in files) else []
    mode = "L" if Image.open(files[0]).mode == "L" else "RGB"
    images = [np.asarray(Image.open(p).convert(mode)) for p in files]
    if len({a.shape for a in images}) > 1:
        raise DataError(f"data.path={path!r}: images differ in size; resize them to one size first")
    images = np.stack(images)
    labels = [classes.index(p.parent.name) for p in files] if classes else None
    return _images(images, labels, len(classes))


TOY_SETS = {  # 2D points, scored with distribution metrics (workbench.evaluate.evaluators)
    "checkerboard": _toy(checkerboard, 0),
    "moons": _toy(moons, 2),
    "spirals": _toy(spirals, 2),
    "gaussians": _toy(gaussians, 8),
}
DATASETS = {
    **TOY_SETS,
    "digits": digits,
    "mnist": _torchvision("MNIST", "MNIST/raw"),
    "fashion_mnist": _torchvision("FashionMNIST", "FashionMNIST/raw"),
    "cifar10": _torchvision("CIFAR10", "cifar-10-batches-py"),
    "npz": npz,
    "folder": folder,
    "latents": latents,
}


def load_data(name: str, split: str = "train", *, path: str = "", data_dir: str = "data", download: bool = False,
              labels: bool = True) -> Dataset:
    """Loads a registered data set; split is 'train' or 'test' (user npz/folder: one split).
    labels=False drops the class labels (an unconditional model of a labelled set)."""
    if name not in DATASETS:
        raise DataError(f"data.name={name!r}: not one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: 'train' or 'test'")
    data = DATASETS[name](split, path=path, data_dir=data_dir, download=download)
    return data if labels else replace(data, labels=None, num_classes=0)



"""Image FID and KID through clean-fid's own feature extractors, resizers and distance functions.

Two feature sets:
- `classifier`: a small CNN trained by the workbench on the data set's labels (deterministic,
  cached by data set and seed), its penultimate layer as clean-fid's custom feature extractor.
  Works offline; CPU studies on digits use it. Scores are only comparable within one feature set.
- `inception`: clean-fid's Inception, in its `clean` mode (PIL bicubic resize to 299 on the CPU, then
  the network) or its `legacy_tensorflow` mode (the resize inside the network, as TF-Inception FIDs
  and the official MeanFlow CIFAR-10 evaluation compute it; eval.inception_mode). Needs its weights
  file on disk.

Features are computed where the images are (the training device) in batches, and generated images
are scored as they come: a mean and covariance accumulate in float64 sums (RunningStats), so no
evaluation holds all its images or features, nor a copy of a whole data set.
"""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid
from cleanfid.resize import build_resizer
from scipy.linalg import LinAlgWarning

from workbench.config import DataConfig
from workbench.evaluate.classifier import FeatureError, as_source, classifier_extractor, data_key, load, load_classifier

INCEPTION_FILE = Path("/tmp/inception-2015-12-05.pt")  # where clean-fid's feature_extractor() looks on Linux
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def keep_size(image: np.ndarray) -> np.ndarray:
    """clean-fid resize step for the classifier: none (it reads the data set's own resolution)."""
    return image.astype(np.float32)


INCEPTION_MODES = ("clean", "legacy_tensorflow")


def inception_extractor(device: torch.device, mode: str = "clean"):
    """clean-fid's Inception on `device`; legacy_tensorflow resizes inside the network, clean expects 299x299."""
    if not INCEPTION_FILE.is_file():
        raise FeatureError(f"clean-fid's Inception weights are not at {INCEPTION_FILE}; this machine is offline. "
                           f"Download {INCEPTION_URL} and put it at {INCEPTION_FILE}, or use eval.features=classifier")
    from cleanfid.features import build_feature_extractor

    return build_feature_extractor(mode, device, use_dataparallel=False)


def to_uint8(images: torch.Tensor, quantize: str = "round") -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8 RGB (N, 3, H, W): rounded as saving a PNG would, or floor(255 x') with
    x' in [0, 1] as the official MeanFlow CIFAR-10 evaluation quantises its samples (eval.quantize)."""
    if quantize not in ("round", "floor"):
        raise ValueError(f"quantize={quantize!r}: 'round' or 'floor'")
    if quantize == "floor":
        x = ((images.clamp(-1, 1) + 1) / 2 * 255).floor().to(torch.uint8)
    else:
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def features(images: torch.Tensor, extractor, fn_resize, batch_size: int = 250) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, D) float features on images' device, batch by batch, as clean-fid's
    get_model_features computes them: fn_resize on each image (on the CPU: clean-fid's resizers are
    PIL and numpy), or none (fn_resize None: legacy_tensorflow resizes inside the network)."""
    out = []
    for batch in images.split(batch_size):
        if fn_resize is not None:
            resized = [torch.from_numpy(fn_resize(image.cpu().numpy().transpose(1, 2, 0)).transpose(2, 0, 1))
                       for image in batch]
            batch = torch.stack(resized).to(images.device)
        with torch.no_grad():
            out.append(extractor(batch.float()).float())
    return torch.cat(out)


class RunningStats:
    """Mean and covariance of features seen batch by batch: float64 sums on the features' device (centred
    on the first batch's mean against cancellation); never the features themselves."""

    def __init__(self):
        self.n, self.shift, self.sum, self.outer = 0, None, None, None

    def update(self, feats: torch.Tensor) -> None:
        x = feats.detach().double()
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.outer = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64, device=x.device)
        x = x - self.shift
        self.n += len(x)
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(D,) mean and (D, D) covariance with n - 1 in the denominator, as np.cov."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 rows, got {self.n}")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return (mean + self.shift).cpu().numpy(), cov.cpu().numpy()


def frechet(mu: np.ndarray, sigma: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> float:
    """clean-fid's frechet_distance."""
    with warnings.catch_warnings():
        # Inside clean-fid: recent scipy deprecates sqrtm(disp=False), and warns on the near-singular
        # covariance of ReLU features with dead units (clean-fid's own eps offset handles a failure).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(cleanfid.frechet_distance(mu, sigma, ref_mu, ref_sigma))


def kid(feats: np.ndarray, ref_feats: np.ndarray, seed: int) -> float:
    """clean-fid's kernel_distance (KID), its subsets drawn from a fixed seed."""
    state = np.random.get_state()
    np.random.seed(seed)  # kernel_distance draws subsets from numpy's global generator
    try:
        return float(cleanfid.kernel_distance(feats, ref_feats))
    finally:
        np.random.set_state(state)


def reference_statistics(data: DataConfig, scorer: ImageScorer, cache_file: Path, keep_features: bool,
                         chunk: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mean, covariance (and, for KID, the features) of the whole train split, computed once in chunks
    on the scorer's device and cached."""
    if cache_file.exists():
        with np.load(cache_file) as cached:
            return cached["mu"], cached["sigma"], cached.get("feats")
    images, stats, kept = load(data, "train").x, RunningStats(), []
    for part in images.split(chunk):
        feats = scorer.features(to_uint8(part.to(scorer.device)))
        stats.update(feats)
        if keep_features:
            kept.append(feats.cpu().numpy())
    mu, sigma = stats.mean_cov()
    feats = np.concatenate(kept) if keep_features else None
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, **({"feats": feats} if keep_features else {}))
    os.replace(tmp, cache_file)
    return mu, sigma, feats


@dataclass
class ImageScorer:
    """FID (and KID) of generated images against one data set's reference, with one feature set, computed
    on `device` (move it with .to(device): the feature network is built there on first use)."""

    name: str  # the feature set, recorded with every score
    make_extractor: Callable[[torch.device], Callable[[torch.Tensor], torch.Tensor]]
    fn_resize: Callable[[np.ndarray], np.ndarray] | None  # clean-fid's per-image resize; None: inside the network
    ref_mu: np.ndarray | None = None
    ref_sigma: np.ndarray | None = None
    ref_feats: np.ndarray | None = None  # None when only statistics are kept (no KID then)
    info: dict = field(default_factory=dict)  # e.g. the classifier's test accuracy
    device: torch.device = torch.device("cpu")
    _extractors: dict = field(default_factory=dict, repr=False)

    def to(self, device: torch.device) -> ImageScorer:
        self.device = torch.device(device)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> (N, D) features on the scorer's device."""
        if self.device not in self._extractors:
            self._extractors[self.device] = self.make_extractor(self.device)
        return features(images.to(self.device), self._extractors[self.device], self.fn_resize)

    def score(self, images: torch.Tensor, seed: int) -> dict[str, float]:
        """images (N, C, H, W) in [-1, 1] -> {'fid': ..., 'kid': ...}."""
        return self.score_stream([images], seed)

    def score_stream(self, chunks: Iterable[torch.Tensor], seed: int, quantize: str = "round") -> dict[str, float]:
        """FID (and KID) of the images of all chunks (each (n, C, H, W) in [-1, 1], any device), scored as they
        come: only the features' running sums are kept (and, for KID, the features). quantize: to_uint8's."""
        stats, kept = RunningStats(), []
        for chunk in chunks:
            feats = self.features(to_uint8(chunk, quantize))
            stats.update(feats)
            if self.ref_feats is not None:
                kept.append(feats.cpu().numpy())
        scores = {"fid": frechet(*stats.mean_cov(), self.ref_mu, self.ref_sigma)}
        if self.ref_feats is not None:
            scores["kid"] = kid(np.concatenate(kept), self.ref_feats, seed)
        return scores


def reference_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a user-supplied statistics .npz: 'mu' and 'sigma' (ADM's reference batches, clean-fid's
    stats files) or 'ref_mu' and 'ref_sigma' (the official MeanFlow code's)."""
    file = Path(path)
    if not file.is_file():
        raise FeatureError(f"eval.fid_reference={str(path)!r}: no such file; for ImageNet 256 put ADM's reference batch "
                           "VIRTUAL_imagenet256_labeled.npz (https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
                           "ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz) there")
    with np.load(file) as ref:
        for mu, sigma in (("mu", "sigma"), ("ref_mu", "ref_sigma")):
            if mu in ref and sigma in ref:
                return ref[mu], ref[sigma]
    raise FeatureError(f"{file}: needs arrays 'mu' and 'sigma' (or 'ref_mu' and 'ref_sigma'); has {sorted(ref)}")


def image_scorer(data: DataConfig | str, kind: str, cache_dir: Path, seed: int = 0, mode: str = "clean",
                 device: torch.device | str = "cpu", reference: str = "") -> ImageScorer:
    """kind 'classifier' (offline; FID and KID) or 'inception' (clean-fid in `mode`; FID only). The reference:
    the `reference` statistics file when given; else CIFAR-10 with Inception uses clean-fid's precomputed train
    statistics, other sets their train split's, computed once."""
    data, cache_dir, device = as_source(data), Path(cache_dir), torch.device(device)
    if kind == "classifier":
        model, accuracy = load_classifier(data, cache_dir, seed)
        channels = load(data, "test").shape[0]
        scorer = ImageScorer(f"classifier-{data_key(data)}-seed{seed}",
                             lambda dev: classifier_extractor(copy.deepcopy(model).to(dev), channels), None,
                             info={"classifier_test_accuracy": accuracy}, device=device)
    else:
        if mode not in INCEPTION_MODES:
            raise FeatureError(f"eval.inception_mode={mode!r}: not one of {', '.join(INCEPTION_MODES)}")
        inception_extractor(torch.device("cpu"), mode)  # fails now, naming the file, if the weights are missing
        scorer = ImageScorer(f"inception-{mode}", lambda dev: inception_extractor(dev, mode),
                             build_resizer(mode) if mode == "clean" else None, device=device)
    if reference:
        scorer.ref_mu, scorer.ref_sigma = reference_file(reference)
        scorer.info["reference"] = str(reference)
        return scorer
    if kind == "inception" and data.name == "cifar10":
        stats = Path(cleanfid.__file__).parent / "stats" / f"cifar10_{mode}_train_32.npz"
        if not stats.is_file():
            raise FeatureError(f"clean-fid's CIFAR-10 statistics are not at {stats}; this machine is offline. Put "
                               f"https://www.cs.cmu.edu/~clean-fid/stats/{stats.name} there")
        with np.load(stats) as ref:
            scorer.ref_mu, scorer.ref_sigma = ref["mu"], ref["sigma"]
        return scorer
    cache = cache_dir / f"reference-{data_key(data)}-{scorer.name}.npz"
    scorer.ref_mu, scorer.ref_sigma, scorer.ref_feats = reference_statistics(data, scorer, cache, kind == "classifier")
    return scorer

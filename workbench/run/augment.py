"""The official CIFAR-10 augmentation: EDM's AugmentPipe with the transforms MeanFlow's code enables.

Gsunshine/py-meanflow `training/train_loop.py` builds AugmentPipe(p=0.12, xflip=1e8, yflip=0, scale=1,
rotate_frac=0, aniso=1, translate_frac=1): every image is x-flipped with probability 1/2, and with
probability p each it is scaled isotropically (log2 std 0.2), scaled anisotropically along a random
axis (log2 std 0.2, the axis rotated on half of those) and translated by a fraction of its size
(std 0.125). The network sees 6 numbers that say what was done (the augmentation labels, zeros at
sampling), so it can learn the data without learning the augmentations.

Written from NVlabs/edm `training/augment.py`. The work is split in two so a run stays reproducible
and resumable: `draw_augment` takes the random numbers from the run's CPU generator (a few per
image), `apply_augment` transforms the images on their own device (the GPU when training there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_DIM = 6  # labels: xflip, scale, aniso (2), translate (2)
XFLIP = 1e8  # the official pipe's x-flip multiplier: for any p > 0 a flip is drawn for every image (a fair coin)
SCALE_STD = ANISO_STD = 0.2  # log2 standard deviations
TRANSLATE_STD = 0.125  # relative to the image size
# Symlet-6 low-pass filter: the pipe's 2x up- and downsampling around the geometric transform
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633, 0.4910559419267466,
        0.787641141030194, 0.3379294217276218, -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
        0.0017677118642428036, -0.007800708325034148)


def draw_augment(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 6) float64 parameters: [xflip, scale w, aniso w, aniso angle, translate wx, translate wy].

    Each of scale, aniso and translate is applied with probability p (its w is 0 otherwise); p = 0: all zero."""
    def where(prob: float, value: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < prob, value, torch.zeros_like(value))

    def normal() -> torch.Tensor:
        return torch.randn(n, generator=generator, dtype=torch.float64)

    xflip = where(XFLIP * p, torch.randint(2, (n,), generator=generator).double())
    scale = where(p, normal())
    aniso = where(p, normal())
    angle = where(0.5, (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi)
    angle = torch.where(aniso != 0, angle, 0.0)  # no aniso: its axis changes nothing (labels w cos, w sin are 0)
    keep = torch.rand(n, generator=generator, dtype=torch.float64) < p
    translate = torch.where(keep[:, None], torch.randn(n, 2, generator=generator, dtype=torch.float64), 0.0)
    return torch.stack([xflip, scale, aniso, angle, translate[:, 0], translate[:, 1]], 1)


def augment_labels(params: torch.Tensor) -> torch.Tensor:
    """(n, 6) parameters -> (n, 6) float32 labels the network is conditioned on (EDM's encoding)."""
    xflip, scale, aniso, angle, tx, ty = params.unbind(1)
    return torch.stack([xflip, scale, aniso * angle.cos(), aniso * angle.sin(), tx, ty], 1).float()


def _matrix(rows: list[list]) -> torch.Tensor:
    """rows of scalars or (n,) tensors -> (n, 3, 3)."""
    n = next(x for row in rows for x in row if torch.is_tensor(x)).shape[0]
    return torch.stack([torch.stack([x if torch.is_tensor(x) else torch.full((n,), float(x), dtype=torch.float64)
                                     for x in row], -1) for row in rows], -2)


def _scale_inv(sx, sy):
    return _matrix([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]])


def _rotate_inv(theta):
    return _matrix([[theta.cos(), theta.sin(), 0], [-theta.sin(), theta.cos(), 0], [0, 0, 1]])


def _translate(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def inverse_transform(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, 3, 3) float64 inverse of each image's geometric transform, in pixels about the image centre."""
    _, scale, aniso, angle, tx, ty = params.unbind(1)
    s, a = 2 ** (scale * SCALE_STD), 2 ** (aniso * ANISO_STD)
    g = _scale_inv(s, s)
    g = g @ _rotate_inv(angle) @ _scale_inv(a, 1 / a) @ _rotate_inv(-angle)
    return g @ _translate(-tx * width * TRANSLATE_STD, -ty * height * TRANSLATE_STD)


def apply_augment(images: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (n, C, H, W) and draw_augment's parameters -> (augmented images, (n, 6) labels), on images' device.

    x-flip as a pixel flip; then one bilinear resampling for scale, aniso and translation, done at 2x
    resolution between symlet-6 up- and downsampling with reflect padding (EDM's geometric path)."""
    n, c, h, w = images.shape
    device, dtype = images.device, images.dtype
    params = params.to(device)
    images = torch.where(params[:, 0, None, None, None] > 0, images.flip(3), images)
    g_inv = inverse_transform(params, h, w).to(device)

    # Pad with reflection so that the transformed corners stay inside the image.
    filt = torch.tensor(SYM6, dtype=dtype, device=device)
    pad = len(SYM6) // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float64, device=device)
    cp = g_inv @ corners.t()  # (n, 3, 4)
    margin = cp[:, :2, :].permute(1, 0, 2).flatten(1)
    margin = torch.cat([-margin, margin]).max(dim=1).values + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, device=device)
    upper = torch.tensor([w - 1, h - 1] * 2, dtype=torch.float64, device=device)
    mx0, my0, mx1, my1 = (int(m) for m in margin.clamp(min=0).minimum(upper).ceil().tolist())
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    g_inv = _translate(torch.full((n,), (mx0 - mx1) / 2, dtype=torch.float64), torch.full((n,), (my0 - my1) / 2,
                       dtype=torch.float64)).to(device) @ g_inv

    # Upsample 2x (zero insertion, then the low-pass filter along each axis).
    up = filt.flip(0).view(1, 1, -1).repeat(c, 1, 1)
    images = torch.stack([images, torch.zeros_like(images)], 4).reshape(n, c, images.shape[2], -1)[:, :, :, :-1]
    images = F.conv2d(images, up.unsqueeze(2), groups=c, padding=[0, (len(SYM6) + 1) // 2])
    images = torch.stack([images, torch.zeros_like(images)], 3).reshape(n, c, -1, images.shape[3])[:, :, :-1, :]
    images = F.conv2d(images, up.unsqueeze(3), groups=c, padding=[(len(SYM6) + 1) // 2, 0])
    g_inv = _s(2, n, device) @ g_inv @ _s(0.5, n, device)
    g_inv = _translate(*(torch.full((n,), -0.5, dtype=torch.float64),) * 2).to(device) @ g_inv @ _translate(
        *(torch.full((n,), 0.5, dtype=torch.float64),) * 2).to(device)

    # Resample, then downsample 2x and crop back to (H, W).
    shape = [n, c, (h + pad * 2) * 2, (w + pad * 2) * 2]
    g_inv = _s2(2 / images.shape[3], 2 / images.shape[2], n, device) @ g_inv @ _s2(shape[3] / 2, shape[2] / 2, n, device)
    grid = F.affine_grid(g_inv[:, :2, :].to(dtype), shape, align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    down = filt.view(1, 1, -1).repeat(c, 1, 1)
    images = F.conv2d(images, down.unsqueeze(2), groups=c, stride=[1, 2], padding=[0, (len(SYM6) - 1) // 2])[:, :, :, pad:-pad]
    images = F.conv2d(images, down.unsqueeze(3), groups=c, stride=[2, 1], padding=[(len(SYM6) - 1) // 2, 0])[:, :, pad:-pad, :]
    return images, augment_labels(params).to(device)


def _s(factor: float, n: int, device) -> torch.Tensor:
    return _s2(factor, factor, n, device)


def _s2(sx: float, sy: float, n: int, device) -> torch.Tensor:
    """(n, 3, 3) scaling by (sx, sy)."""
    return torch.diag(torch.tensor([sx, sy, 1.0], dtype=torch.float64, device=device)).expand(n, 3, 3)


def augment_batch(batch: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The batch's images after the official CIFAR-10 transforms (a flip, then the AugmentPipe), and the
    network's extra inputs ({"augment_labels": (B, 6)} with the pipe, else None)."""
    x = batch["x"]
    if batch["hflip"] is not None:
        x = torch.where(batch["hflip"].to(x.device)[:, None, None, None], x.flip(3), x)
    if batch["augment"] is None:
        return x, None
    x, labels = apply_augment(x, batch["augment"])
    return x, {"augment_labels": labels}

"""SD-VAE latents and images: the official ImageNet recipe trains on SD-VAE (ft-MSE) latents and scores
decoded images. The VAE is diffusers' AutoencoderKL, loaded from a local folder (nothing downloads).

`encode_folder` turns a folder of class subfolders of images into the latent file the `latents` data set
reads: each image centre-cropped as ADM does (Gsunshine/meanflow `utils/input_pipeline.py`
center_crop_arr), scaled to [-1, 1], encoded, and the posterior's mean and std times 0.18215 stored
(`utils/data_util.py` stores mean and std; `utils/vae_util.py` samples and multiplies by 0.18215).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from workbench.evaluate.classifier import FeatureError

SD_SCALE = 0.18215  # SD-VAE's latent scale factor (its config's scaling_factor)
VAE_HINT = ("a diffusers AutoencoderKL folder (config.json and diffusion_pytorch_model.safetensors), e.g. "
            "stabilityai/sd-vae-ft-mse: on a machine with internet, AutoencoderKL.from_pretrained("
            "'stabilityai/sd-vae-ft-mse').save_pretrained(FOLDER), then copy FOLDER here")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".JPEG"}


class VAEError(FeatureError):
    """The VAE folder or the image folder is missing or unreadable; the message says what to put where."""


def load_vae(path: str | Path, device: torch.device | str = "cpu"):
    """diffusers' AutoencoderKL from a local folder, in eval mode on device."""
    folder = Path(path)
    if not str(path) or not (folder / "config.json").is_file():
        raise VAEError(f"eval.vae_path / --vae {str(path)!r}: no VAE there; put {VAE_HINT}")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise VAEError("decoding latents needs diffusers: pip install -e '.[imagenet]'") from None
    return AutoencoderKL.from_pretrained(folder, local_files_only=True).to(device).eval()


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scale: float, batch_size: int = 64) -> torch.Tensor:
    """(N, C, h, w) scaled latents -> (N, 3, H, W) images in [-1, 1], on the latents' device, in batches."""
    vae = vae.to(latents.device)
    images = [vae.decode(batch.to(vae.dtype) / scale).sample.float().clamp(-1, 1) for batch in latents.split(batch_size)]
    return torch.cat(images)


def center_crop(image, size: int):
    """ADM's centre crop (guided-diffusion image_datasets.py): halve with a box filter while the short side
    is at least 2 size, resize bicubic so the short side is size, crop the centre. PIL image -> uint8 array."""
    from PIL import Image

    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    ratio = size / min(*image.size)
    image = image.resize(tuple(round(x * ratio) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image.convert("RGB"))
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def image_files(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Images under folder (class subfolders, sorted, give the labels), their labels and the class names."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise VAEError(f"{folder}: no folder of .png / .jpg / .JPEG images (ImageNet's train/ with one subfolder "
                       "per class)")
    classes = sorted({p.parent.name for p in files}) if any(p.parent != folder for p in files) else []
    return files, [classes.index(p.parent.name) for p in files] if classes else [], classes


def _batches(files: list[Path], size: int, batch_size: int) -> Iterator[torch.Tensor]:
    from PIL import Image

    for start in range(0, len(files), batch_size):
        arrays = [center_crop(Image.open(p), size) for p in files[start:start + batch_size]]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_folder(folder: str | Path, vae_path: str | Path, out: str | Path, size: int = 256, batch_size: int = 64,
                  device: torch.device | str = "cpu", progress=None) -> dict:
    """Encodes every image under folder into out (.npz: 'mean', 'std' float16 (N, 4, size/8, size/8) times
    SD_SCALE, 'labels', 'scale', 'classes'); returns a summary. Written to a temporary file, then renamed."""
    files, labels, classes = image_files(Path(folder))
    vae = load_vae(vae_path, device)
    means, stds = [], []
    for i, images in enumerate(_batches(files, size, batch_size)):
        posterior = vae.encode(images.to(device)).latent_dist
        means.append((posterior.mean * SD_SCALE).half().cpu())
        stds.append((posterior.std * SD_SCALE).half().cpu())
        if progress:
            progress(min((i + 1) * batch_size, len(files)), len(files))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, mean=torch.cat(means).numpy(), std=torch.cat(stds).numpy(), scale=np.float64(SD_SCALE),
             **({"labels": np.asarray(labels, dtype=np.int64), "classes": np.asarray(classes)} if classes else {}))
    tmp.replace(out)
    return {"images": len(files), "classes": len(classes), "shape": tuple(means[0].shape[1:]), "out": str(out)}

"""`wb sample`: a trained model's samples written where any external evaluator can read them.

Sample i is drawn from the noise (seed, i) and, for a class-conditional model, label i mod classes,
exactly as the workbench's own evaluation draws it (workbench/evaluate/evaluators.py sample_chunks), so the ADM
evaluation suite or torch-fidelity scores the same images the workbench scored. Images go to an
ADM-format .npz (uint8 NHWC 'arr_0', plus 'labels') or a folder of PNGs; latents are decoded first.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.config import ConfigError, RunConfig
from workbench.data import load_data
from workbench.evaluate.draw import sample_chunks
from workbench.run.checkpoint import load_ema
from workbench.run.model import build_net


def run_model(run: Path, which: str = "") -> tuple[RunConfig, nn.Module]:
    """(config, network) of a run folder (config.json + checkpoint.pt). which: '' train.ema_decay's EMA,
    'ema0.99995' an extra one, 'raw'."""
    if not (run / "config.json").is_file():
        raise ConfigError(f"{run}: no config.json there (is it a run folder?)")
    config = RunConfig.model_validate_json((run / "config.json").read_text())
    return config, load_ema(run, config, which)


def logged_model(config_file: Path, weights: Path, where: str) -> tuple[RunConfig, nn.Module]:
    """(config, network) from a finished run's logged config.json and ema.pt / ema_<which>.pt (`where` names
    the run in errors)."""
    config = RunConfig.model_validate_json(config_file.read_text())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir,
                     labels=config.data.labels)
    net = build_net(config, data)  # ema.pt holds the averaged network's own state dict (workbench/schedule/cell.py)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{where}: {weights.name} does not fit its config.json's network ({err})") from None
    return config, net.eval()


def export_samples(net: nn.Module, shape: tuple[int, ...], num: int, out: Path, steps: int = 1, seed: int = 0,
                   batch_size: int = 500, decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   progress: Callable[[int, int], None] | None = None, quantize: str = "round") -> dict:
    """num samples of net (on its device, in batches) -> out: '.npz' (ADM format) or a folder of PNGs
    (000000.png, ...). decode: latents -> images in [-1, 1]. The .npz is written whole or not at all."""
    from workbench.evaluate.fid import to_uint8

    images, done = [], 0
    png = out.suffix != ".npz"
    if png:
        out.mkdir(parents=True, exist_ok=True)
    for chunk in sample_chunks(net, shape, False, steps, num, seed, batch_size):
        x = to_uint8(decode(chunk) if decode else chunk, quantize).permute(0, 2, 3, 1).cpu().numpy()  # NHWC uint8
        if png:
            from PIL import Image

            for i, image in enumerate(x):
                Image.fromarray(image).save(out / f"{done + i:06d}.png")
        else:
            images.append(x)
        done += len(x)
        if progress:
            progress(done, num)
    labels = np.arange(num) % net.num_classes if net.num_classes else None
    if not png:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, arr_0=np.concatenate(images), **({"labels": labels} if labels is not None else {}))
        Path(tmp.name).replace(out)
    else:
        (out / "samples.json").write_text(json.dumps({"num": num, "steps": steps, "seed": seed, "labels":
                                                      "i mod classes" if labels is not None else None}))
    return {"num": num, "shape": tuple(x.shape[1:]), "out": str(out), "labels": net.num_classes or None}


def sample_shape(config: RunConfig, vae: str | None):
    """The model's input shape and, for latents, the decoder to images (`vae`, else the run's eval.vae_path)."""
    from workbench.evaluate.vae import decode, load_vae

    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir)
    if data.kind == "points":
        raise ConfigError(f"data.name={config.data.name!r}: 2D points are no images; sample them with wb eval's pictures")
    if data.kind != "latents":
        return data.shape, None
    decoder = load_vae(vae or config.eval.vae_path)
    return data.shape, lambda z: decode(decoder.to(z.device), z, data.scale)

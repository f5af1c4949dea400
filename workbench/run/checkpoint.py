"""A run's checkpoint: saved atomically (a full disk or a kill never leaves a broken one), restored exactly
(weights, EMAs, optimizer, every random generator), and the EMA networks read back for sampling."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from workbench.config import ConfigError, RunConfig
from workbench.data import load_data
from workbench.run.emas import ema_model
from workbench.run.model import build_net

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, step: int, net, emas: dict[str, AveragedModel], optimizer,
                    generator: torch.Generator) -> None:
    """'ema' holds train.ema_decay's EMA, 'extra_emas' those of train.ema_decays by suffix."""
    state = {"step": step, "net": net.state_dict(), "ema": emas[""].state_dict(),
             "extra_emas": {name: ema.state_dict() for name, ema in emas.items() if name},
             "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout masks drawn on a GPU: a resumed run draws the same ones
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
    except BaseException:  # a full disk, a kill: the last good checkpoint stays as it was
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken checkpoint


def load_ema(run_dir: Path, config: RunConfig, which: str = "") -> nn.Module:
    """An EMA network of a saved run (CPU), for sampling and evaluation: '' is train.ema_decay's, 'ema0.99995'
    one of train.ema_decays, 'raw' the trained weights themselves."""
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint in this run folder")
    data = load_data(config.data.name, "train", path=config.data.path, data_dir=config.data.data_dir,
                     labels=config.data.labels)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    net = build_net(config, data)
    if which == "raw":
        net.load_state_dict(state["net"])
        return net.eval()
    kept = {"": state["ema"]} | state.get("extra_emas", {})
    if which not in kept:
        raise ConfigError(f"{checkpoint} keeps the EMAs {', '.join(repr(k) for k in kept)} (and 'raw'), not {which!r}")
    ema = ema_model(net, 0.0)
    ema.load_state_dict(kept[which])
    return ema.module


def restore(path: Path, net, emas: dict[str, AveragedModel], optimizer, generator: torch.Generator) -> int:
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(state["net"])
    kept = {"": state["ema"]} | state.get("extra_emas", {})
    if set(kept) != set(emas):
        raise ConfigError(f"--resume: {path} keeps the EMAs {sorted(kept)}, this config asks for {sorted(emas)} "
                          "(train.ema_decays must not change within a run)")
    for name, ema in emas.items():
        ema.load_state_dict(kept[name])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]

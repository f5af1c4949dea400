"""What `wb train` resolves before it trains: the run's config (fresh from overrides, or a saved run's to
resume) and folder, and the torchrun relaunch of a data-parallel run on this machine."""
from __future__ import annotations

import os
import time
from pathlib import Path

from workbench.config import ConfigError, RunConfig, with_overrides


def ranks() -> int:
    """How many processes train this run: > 1 when torchrun started this one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_config(shortcuts: dict, sets: list[str], resume: Path | None, run_dir: Path | None
               ) -> tuple[RunConfig, Path, list[str]]:
    """(config, run folder, overrides as KEY=VALUE) of `wb train`: --resume reads the saved run's config.json
    (and takes no overrides); otherwise the shortcuts (data.name=..., None for unset) and --set pairs over
    the defaults, in runs/DATA-NET-TIME unless run_dir names the folder."""
    if ranks() > 1 and shortcuts.get("train.nproc") is None and resume is None and not any(
            o.startswith("train.nproc=") for o in sets):
        shortcuts = shortcuts | {"train.nproc": ranks()}  # torchrun started this process: the run is data-parallel
    overrides = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + list(sets)
    if resume is not None:
        if not (resume / "config.json").is_file():
            raise ConfigError(f"--resume {resume}: no config.json there (is it a run folder?)")
        if overrides:
            raise ConfigError("--resume continues a run exactly as configured; drop --data/--net/--steps/--seed/--set")
        return RunConfig.model_validate_json((resume / "config.json").read_text()), resume, []
    config = with_overrides(RunConfig(), overrides)
    folder = run_dir or Path("runs") / f"{config.data.name}-{config.net.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    return config, folder, overrides


def torchrun(config: RunConfig, folder: Path, resume: bool, overrides: list[str]) -> int:
    """Runs `wb train` as train.nproc processes under torchrun on this machine; returns its exit code."""
    import subprocess
    import sys

    if not resume and (folder / "config.json").exists():
        raise FileExistsError(f"{folder} already holds a run; continue it with --resume or pick another --run-dir")
    nproc = config.train.nproc
    args = ["--resume", str(folder)] if resume else ["--run-dir", str(folder), *sum((["--set", o] for o in overrides), [])]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "workbench.cli", "train", *args]
    return subprocess.call(command, env=os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))})

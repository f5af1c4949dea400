"""Which GPU each local worker process trains on: `--gpus all|0,1,...` gives worker i the GPU
gpus[i % len(gpus)] as its CUDA_VISIBLE_DEVICES, so that it sees that one device as cuda:0 (without it
every worker would train on the launcher's cuda:0). The default on a CUDA machine: every visible GPU,
one worker each. IDs are CUDA_VISIBLE_DEVICES entries as the launcher sees them: with the launcher's
own CUDA_VISIBLE_DEVICES=2,3 (a scheduler's allocation), `all` is 2,3."""
from __future__ import annotations

import os


class GpuError(ValueError):
    """A --gpus value that names no usable device."""


def visible() -> list[str]:
    """The GPUs this process may hand out: its CUDA_VISIBLE_DEVICES entries, else 0..count-1."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:torch.cuda.device_count()] if listed else [str(i) for i in range(torch.cuda.device_count())]


def parse(spec: str | None) -> list[str]:
    """--gpus -> the GPU of each worker slot; [] means CPU workers (no --gpus on a machine without CUDA)."""
    here = visible()
    if spec is None:
        return here
    if spec.strip() == "all":
        if not here:
            raise GpuError("--gpus all: no CUDA device is visible on this machine (torch.cuda.is_available() is "
                           "False); leave --gpus out to train on the CPU")
        return here
    ids = [g.strip() for g in spec.split(",")]
    if not all(ids) or len(set(ids)) < len(ids):
        raise GpuError(f"--gpus {spec}: expected 'all' or distinct GPU ids separated by commas, e.g. 0,1")
    unknown = [g for g in ids if here and g not in here]
    if unknown:
        raise GpuError(f"--gpus {spec}: GPU {unknown[0]} is not visible here; visible: {','.join(here)}")
    return ids


def slots(spec: str | None, workers: int | None) -> tuple[list[str], int, str | None]:
    """--gpus and --workers -> (the GPU of each worker slot, [] for CPU workers; the worker count; a warning
    when GPUs are named on a machine where CUDA sees none)."""
    import torch

    ids = parse(spec)
    warning = None
    if spec is not None and ids and not torch.cuda.is_available():
        warning = (f"--gpus {spec}: no CUDA device is visible here; the workers get CUDA_VISIBLE_DEVICES "
                   f"{' / '.join(ids)} and train on the CPU")
    return ids, workers or len(ids) or os.cpu_count() or 1, warning


def for_slot(slot: int, gpus: list[str]) -> str | None:
    return gpus[slot % len(gpus)] if gpus else None


def use(gpu: str | None) -> None:
    """In a worker, before anything touches CUDA: see only this GPU (as cuda:0)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu

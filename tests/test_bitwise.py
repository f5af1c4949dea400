"""Refactors keep the MLP's training bit for bit: the weights after a short run hash to what commit
c3243f4 (before the loss, sampler and layering rework) produced for the same configs.

The hashes were recorded by running commit c3243f4 with torch 2.14.1 and one thread on two kinds of
x86-64 machine: one variant on 2026-12-02 (ATen CPU capability AVX2) and again on an AMD EPYC whose
capability is AVX512 (2026-12-04), the other on an Intel Xeon with AVX-512 and AMX (2026-12-03). The
matrix-multiply kernels, and so the rounding, depend on the CPU (vendor and instruction set), not only
on torch.backends.cpu.get_cpu_capability(), so a run must match one of the recorded variants; a
refactor that changes the arithmetic matches neither. On another torch build the test is skipped (under CI=true it fails)."""
import hashlib

import pytest
import torch

from workbench.config import RunConfig, with_overrides
from workbench.run.train import train

from conftest import needs

COMMON = {"net.mlp.width": 32, "net.mlp.depth": 2, "train.steps": 30, "train.batch_size": 64,
          "train.device": "cpu", "sample.num_points": 50}
CASES = {  # name: (overrides, {kernel variant: sha256 prefix of the net and EMA weights after training at c3243f4})
    "checkerboard, ratio 0.25, lognorm, p = 1": (
        {"data.name": "checkerboard"}, {"AVX2 kernels": "acb7de90cd853429", "Intel AVX-512": "568163aa14d86845"}),
    "gaussians by class, CFG w 1.5 kappa 0.5, p = 0.5, tangent (v,1,1), (t,r)": (
        {"data.name": "gaussians", "meanflow.cfg_omega": 1.5, "meanflow.cfg_kappa": 0.5, "meanflow.adaptive_p": 0.5,
         "meanflow.tangent": "(v,1,1)", "net.time_cond": "(t,r)"},
        {"AVX2 kernels": "ec82d8f5381922e1", "Intel AVX-512": "d96b74059b333e4d"}),
}


def weights_hash(state: dict) -> str:
    digest = hashlib.sha256()
    for part in ("net", "ema"):
        for name, tensor in state[part].items():
            if torch.is_tensor(tensor):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("case", list(CASES))
def test_mlp_training_is_bit_identical_to_c3243f4(case, tmp_path):
    needs(torch.__version__.split("+")[0] == "2.14.1", f"the hashes were recorded with torch 2.14.1, this is {torch.__version__}")
    overrides, hashes = CASES[case]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(with_overrides(RunConfig(), COMMON | overrides), tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    got = weights_hash(state)
    assert got in hashes.values(), (
        f"weights hash {got} is none of c3243f4's {hashes} (CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}): the training's arithmetic changed, or this CPU's kernels round "
        "differently from both recorded machines (run the test at c3243f4 here to see which)")

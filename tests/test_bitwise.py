"""Refactors keep the MLP's training bit for bit: the weights after a short run hash to what commit
c3243f4 (before the loss, sampler and layering rework) produced for the same configs.

The hashes were recorded by running commit c3243f4 with torch 2.14.1 and one thread, on x86-64 CPUs
whose ATen CPU capability (torch.backends.cpu.get_cpu_capability()) was AVX2 (2026-12-02) and AVX512
(an Intel Xeon with AVX-512 and AMX, 2026-12-03): the kernels, and so the rounding, differ between
the two. On another torch build or capability there is no recorded value and the test is skipped."""
import hashlib

import pytest
import torch

from workbench.config import RunConfig, with_overrides
from workbench.train import train

COMMON = {"net.mlp.width": 32, "net.mlp.depth": 2, "train.steps": 30, "train.batch_size": 64,
          "train.device": "cpu", "sample.num_points": 50}
CASES = {  # name: (overrides, {CPU capability: sha256 prefix of the net and EMA weights after training at c3243f4})
    "checkerboard, ratio 0.25, lognorm, p = 1": (
        {"data.name": "checkerboard"}, {"AVX2": "acb7de90cd853429", "AVX512": "568163aa14d86845"}),
    "gaussians by class, CFG w 1.5 kappa 0.5, p = 0.5, tangent (v,1,1), (t,r)": (
        {"data.name": "gaussians", "meanflow.cfg_omega": 1.5, "meanflow.cfg_kappa": 0.5, "meanflow.adaptive_p": 0.5,
         "meanflow.tangent": "(v,1,1)", "net.time_cond": "(t,r)"}, {"AVX2": "ec82d8f5381922e1", "AVX512": "d96b74059b333e4d"}),
}
CAPABILITY = torch.backends.cpu.get_cpu_capability()


def weights_hash(state: dict) -> str:
    digest = hashlib.sha256()
    for part in ("net", "ema"):
        for name, tensor in state[part].items():
            if torch.is_tensor(tensor):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.skipif(torch.__version__.split("+")[0] != "2.14.1", reason="hashes recorded with torch 2.14.1")
@pytest.mark.skipif(CAPABILITY not in ("AVX2", "AVX512"), reason=f"no hash recorded for CPU capability {CAPABILITY}")
@pytest.mark.parametrize("case", list(CASES))
def test_mlp_training_is_bit_identical_to_c3243f4(case, tmp_path):
    overrides, hashes = CASES[case]
    expected = hashes[CAPABILITY]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(with_overrides(RunConfig(), COMMON | overrides), tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert weights_hash(state) == expected

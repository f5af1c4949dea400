import contextlib
import os

import pytest
import torch

from workbench.config import MeanFlowConfig, NetConfig
from workbench.meanflow import NETWORKS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mf(**overrides) -> MeanFlowConfig:
    """A MeanFlowConfig with overrides (keyword form of --set meanflow.KEY=VALUE)."""
    return MeanFlowConfig(**overrides)


def small_net(arch: str = "mlp", time_cond: str = "(t,t-r)", num_classes: int = 0, shape=(2,), dtype=torch.float64,
              **options):
    """NETWORKS[arch] with the config's default options (net.<arch>), and `options` over them."""
    defaults = getattr(NetConfig(), arch).model_dump()
    return NETWORKS[arch](shape, num_classes, time_cond, **(defaults | options)).to(dtype)


def tiny_study(steps: int, axis: str, extra_base: str = "", data: str = "moons", name: str = "tiny") -> str:
    """A study file for end-to-end tests: a 32-unit MLP on moons, 2 seeds, the given axis table body."""
    return f"""
name = "{name}"
description = "end-to-end test study"
metric = "energy_1nfe"
seeds = [0, 1]
[base]
"data.name" = "{data}"
"net.mlp.width" = 32
"net.mlp.depth" = 1
"train.steps" = {steps}
"train.batch_size" = 64
"train.log_every" = 10
"train.device" = "cpu"
"eval.num_samples" = 200
"eval.fm_steps" = []
"sample.num_points" = 100
{extra_base}
[[axes]]
key = "meanflow.ratio"
{axis}
"""


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to n inside the block, and restored after it (tests share a process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def needs(condition: bool, reason: str) -> None:
    """Skip the calling test when `condition` is false, saying why; under CI=true (CI installs PostgreSQL and
    Chromium and pins torch) fail instead, since there a skip could only hide a failure."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def numpy_weights(net: torch.nn.Module, rng, std: float) -> None:
    """Every parameter, in the module's order, drawn from numpy's N(0, std^2): weights that do not depend on torch's
    initialisation or its random number generator (the pinned-function tests read outputs stored in tests/data)."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.from_numpy(rng.normal(0, std, tuple(p.shape))))

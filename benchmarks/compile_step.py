"""Does torch.compile pay for the CPU studies? Flow Matching step eager vs compiled (MLP, the Table 1
shape), the compile time, and whether the MeanFlow JVP itself compiles.

    python benchmarks/compile_step.py [--steps 60] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import jvp

from workbench.config import RunConfig, with_overrides
from workbench.data import load_data
from workbench.meanflow import meanflow_loss
from workbench.run.model import build_net, make_optimizer
from workbench.run.train import draw_batch

SHAPE = {"data.name": "checkerboard", "net.mlp.width": 256, "train.batch_size": 512, "meanflow.ratio": 0.0}


def fm_steps(compiled: bool, steps: int) -> tuple[float, float]:
    """(first step seconds, median step seconds after 10) of Flow Matching training."""
    config = with_overrides(RunConfig(), SHAPE)
    data = load_data(config.data.name)
    torch.manual_seed(0)
    net = build_net(config, data)
    optimizer = make_optimizer(net, config)
    model = torch.compile(net) if compiled else net
    model.num_classes = net.num_classes
    generator, times = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        batch = draw_batch(data, config, generator)
        start = time.perf_counter()
        loss, _ = meanflow_loss(model, batch["x"], batch["t"], batch["r"], batch["noise"], config.meanflow)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[10:])


def jvp_compiles() -> str:
    config = with_overrides(RunConfig(), SHAPE)
    net = build_net(config, load_data(config.data.name))
    z, t = torch.randn(64, 2), torch.rand(64)

    def tangent(z, r, t):
        return jvp(lambda a, b, c: net(a, c, b), (z, r, t), (z, torch.zeros_like(r), torch.ones_like(t)))[1]
    try:
        torch.compile(tangent, fullgraph=True)(z, t * 0.5, t)
        return "compiles"
    except Exception as err:  # noqa: BLE001 - report what dynamo says
        return f"does not compile ({type(err).__name__}: {str(err).splitlines()[0][:160]})"


def markdown(steps: int = 60) -> str:
    eager_first, eager = fm_steps(False, steps)
    compiled_first, compiled = fm_steps(True, steps)
    return "\n".join([
        "| Flow Matching step, MLP 3x256, batch 512 | first step s | median ms |", "|---|---|---|",
        f"| eager | {eager_first:.2f} | {1e3 * eager:.1f} |", f"| torch.compile | {compiled_first:.1f} | {1e3 * compiled:.1f} |",
        "", f"Compiled / eager step: {compiled / eager:.2f}x; the compile pays back after "
        f"{compiled_first / max(1e-9, eager - compiled):.0f} steps (a Table 1 cell trains 1500). "
        f"torch.func.jvp of the network under torch.compile(fullgraph=True): {jvp_compiles()}."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(markdown(args.steps))


if __name__ == "__main__":
    main()

"""Training steps per second, MeanFlow vs Flow Matching, same network, batch and process.

    python benchmarks/train_step.py [--steps 60] [--threads 2]

Prints a markdown table of median step times and the MeanFlow / Flow Matching ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.config import RunConfig, with_overrides
from workbench.data import load_data
from workbench.train import build_net, draw_batch, make_optimizer
from workbench.meanflow import meanflow_loss

CASES = {  # name: overrides (the shipped defaults of each network)
    "mlp / checkerboard": {"data.name": "checkerboard", "net.arch": "mlp", "train.batch_size": 512},
    "unet / digits": {"data.name": "digits", "net.arch": "unet", "train.batch_size": 128},
    "dit / digits": {"data.name": "digits", "net.arch": "dit", "train.batch_size": 128},
}


def step_times(config: RunConfig, steps: int) -> list[float]:
    data = load_data(config.data.name)
    torch.manual_seed(0)
    net = build_net(config, data)
    optimizer = make_optimizer(net, config)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        batch = draw_batch(data, config, generator)
        start = time.perf_counter()
        loss, _ = meanflow_loss(net, batch["x"], batch["t"], batch["r"], batch["noise"], config.meanflow,
                                labels=batch["labels"], dropped=batch["dropped"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[steps // 5:]  # drop warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.steps} steps after warm-up\n")
    print("| network / data | batch | Flow Matching steps/s | MeanFlow (ratio 0.25) steps/s | MeanFlow / FM step time |")
    print("|---|---|---|---|---|")
    for name, overrides in CASES.items():
        fm = statistics.median(step_times(with_overrides(RunConfig(), {**overrides, "meanflow.ratio": 0.0}), args.steps))
        mf = statistics.median(step_times(with_overrides(RunConfig(), {**overrides, "meanflow.ratio": 0.25}), args.steps))
        print(f"| {name} | {overrides['train.batch_size']} | {1 / fm:.1f} | {1 / mf:.1f} | {mf / fm:.2f}x |")


if __name__ == "__main__":
    main()

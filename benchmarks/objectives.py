"""Step time of each training objective against Flow Matching, same network, batch and process.

    python benchmarks/objectives.py [--steps 100] [--threads 2]

Prints a markdown table: per network, the median ms per optimizer step (loss, backward, Adam) of Flow Matching
(meanflow.ratio 0) and of each objective at ratio 0.25 through the training loop's own loss function
(workbench/run/train.py loss_function, so each runs on the path `wb train` takes), and its ratio to Flow
Matching. The variants take turns step by step, so a slower spell of this shared machine falls on all alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.config import RunConfig, with_overrides
from workbench.data import load_data
from workbench.run.model import build_net, make_optimizer
from workbench.run.train import draw_batch, loss_function

CASES = {  # the shipped CPU studies' MLP, and the image U-Net
    "mlp 3x256 / gaussians": {"data.name": "gaussians", "net.mlp.width": 256, "train.batch_size": 512},
    "unet / digits": {"data.name": "digits", "net.arch": "unet", "train.batch_size": 128},
}
OBJECTIVES = {  # name: overrides at meanflow.ratio 0.25
    "meanflow (JVP, default)": {},
    "meanflow, finite differences": {"meanflow.dudt": "finite_difference"},
    "meanflow, beta 0.9": {"meanflow.beta": 0.9},
    "mmf, lambda 0.5": {"meanflow.objective": "mmf", "meanflow.mmf_lambda": 0.5},
    "splitmeanflow": {"meanflow.objective": "splitmeanflow"},
    # a flat sigmoid (gamma 1e-6) over a window past the last step: alpha = 0.5 at every step timed
    "alphaflow, alpha 0.5": {"meanflow.objective": "alphaflow", "meanflow.alphaflow.end": 10**9,
                             "meanflow.alphaflow.gamma": 1e-6},
    "imf (boundary tangent)": {"meanflow.objective": "imf"},
    "imf, interval-conditioned": {"meanflow.objective": "imf", "meanflow.imf.guidance": "interval"},
}


def step_times(variants: dict[str, RunConfig], steps: int) -> dict[str, float]:
    """Median seconds per optimizer step of each config, after a warm-up fifth, the variants taking turns."""
    runs = {}
    for name, config in variants.items():
        data = load_data(config.data.name)
        torch.manual_seed(0)
        net = build_net(config, data)
        runs[name] = (config, data, loss_function(net, config), make_optimizer(net, config),
                      torch.Generator().manual_seed(0), [])
    for step in range(steps):
        for config, data, loss_fn, optimizer, generator, times in runs.values():
            batch = draw_batch(data, config, generator)
            start = time.perf_counter()
            loss, _ = loss_fn(batch["x"], batch["t"], batch["r"], batch["noise"], batch["labels"], batch["dropped"],
                              None, None, step, batch["split"], batch["guidance"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    return {name: statistics.median(run[-1][steps // 5:]) for name, run in runs.items()}


def markdown(steps: int) -> str:
    lines = [f"Median ms per optimizer step over {steps} steps after a warm-up fifth, {torch.get_num_threads()} threads; "
             "every objective at meanflow.ratio 0.25, Flow Matching at 0.", "",
             "| network / data | FM ms | " + " | ".join(OBJECTIVES) + " |", "|---|---|" + "---|" * len(OBJECTIVES)]
    for name, overrides in CASES.items():
        variants = {"fm": with_overrides(RunConfig(), {**overrides, "meanflow.ratio": 0.0})} | {
            label: with_overrides(RunConfig(), {**overrides, "meanflow.ratio": 0.25, **extra})
            for label, extra in OBJECTIVES.items()}
        times = step_times(variants, steps)
        fm = times["fm"]
        lines.append(f"| {name} | {1e3 * fm:.1f} | "
                     + " | ".join(f"{1e3 * times[label]:.1f} ({times[label] / fm:.2f}x)" for label in OBJECTIVES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(markdown(args.steps))

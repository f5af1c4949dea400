"""MeanFlow vs Flow Matching cost, same network, batch and process: training steps and sampling.

    python benchmarks/train_step.py [--steps 100] [--threads 2]

Prints markdown tables of medians and ratios:
- training step time at the shapes the shipped CPU studies use: Flow Matching (ratio 0), MeanFlow
  at ratio 0.25 for each jvp_mode of meanflow_loss ("tangent", the default without dropout:
  ordinary forward + gradient-free JVP of the r != t samples, meanflow/jvp.py; "subset": one JVP
  with gradient for the r != t samples; "whole": one JVP over the batch, Eq. 10 as written), and
  MeanFlow at ratio 1.0; the MLP again at one thread, as each `wb ablate` worker runs;
- sampling: 1-NFE MeanFlow vs one forward pass over the same batch, and Flow Matching Euler at
  10 and 50 steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.config import RunConfig, with_overrides
from workbench.data import index_noise, load_data
from workbench.meanflow import JVP_MODES, meanflow_loss, sample
from workbench.run.model import build_net, make_optimizer
from workbench.run.train import draw_batch

CASES = {  # name: overrides (the shapes of the shipped CPU studies and of the README's image runs)
    "mlp 3x256 / checkerboard (table1a-f, table5)": {"data.name": "checkerboard", "net.mlp.width": 256, "train.batch_size": 512},
    "unet / digits": {"data.name": "digits", "net.arch": "unet", "train.batch_size": 128},
    "dit / digits": {"data.name": "digits", "net.arch": "dit", "train.batch_size": 128},
}


def step_times(variants: dict[str, tuple[RunConfig, str]], steps: int) -> dict[str, float]:
    """Median seconds of loss + backward + optimizer step per variant (name: (config, jvp_mode)),
    after a warm-up fifth. The variants take turns step by step, so a slower or faster spell of
    this shared machine falls on all of them alike and their ratios stay comparable."""
    runs = {}
    for name, (config, jvp_mode) in variants.items():
        data = load_data(config.data.name)
        torch.manual_seed(0)
        net = build_net(config, data)
        runs[name] = (config, jvp_mode, data, net, make_optimizer(net, config), torch.Generator().manual_seed(0), [])
    for _ in range(steps):
        for config, jvp_mode, data, net, optimizer, generator, times in runs.values():
            batch = draw_batch(data, config, generator)
            start = time.perf_counter()
            loss, _ = meanflow_loss(net, batch["x"], batch["t"], batch["r"], batch["noise"], config.meanflow,
                                    labels=batch["labels"], dropped=batch["dropped"], dudt=JVP_MODES[jvp_mode])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    return {name: statistics.median(run[-1][steps // 5:]) for name, run in runs.items()}


@torch.no_grad()
def forward_time(config: RunConfig, rows: int, repeats: int = 40) -> float:
    """Median seconds of one no-grad forward over `rows` samples."""
    data = load_data(config.data.name)
    torch.manual_seed(0)
    net = build_net(config, data)
    z, t = torch.randn(rows, *data.shape), torch.rand(rows)
    labels = torch.randint(0, data.num_classes, (rows,)) if data.num_classes else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(z, t, 0.5 * t, labels)
        times.append(time.perf_counter() - start)
    return statistics.median(times[repeats // 5:])


@torch.no_grad()
def sampling_times(config: RunConfig, repeats: int) -> dict[str, float]:
    """Median seconds over one batch of 4x the training batch: forward, 1-NFE, Euler 10 and 50."""
    data = load_data(config.data.name)
    net = build_net(config, data).eval()
    n = 4 * config.train.batch_size
    noise = index_noise(0, range(n), data.shape)
    ones = torch.ones(n)
    jobs = {"forward": lambda: net(noise, ones, 0 * ones, None), "1nfe": lambda: sample(net, noise, 1),
            "euler10": lambda: sample(net, noise, 10, euler=True), "euler50": lambda: sample(net, noise, 50, euler=True)}
    out = {}
    for name, job in jobs.items():
        times = []
        for _ in range(repeats if name != "euler50" else max(2, repeats // 5)):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times[1:] if len(times) > 2 else times)
    return out


def markdown(steps: int = 100) -> str:
    """The tables (training steps, sampling) as markdown; run with the threads already set."""
    threads = torch.get_num_threads()
    lines = [f"Median of {steps} steps after a warm-up fifth, ms per optimizer step (loss, backward, Adam), "
             f"{threads} threads. The default MeanFlow step and Flow Matching take turns step by step; "
             "subset, whole and MF 1.0 take turns with a second Flow Matching run, and their ms are that run's "
             "ratio times the first one's Flow Matching ms. "
             "Last column: the Flow Matching step plus one no-grad forward of a quarter batch (the r != t samples), "
             "what a JVP would cost that reused the primal and did one more forward.", "",
             "| network / data | batch | FM ms/step | MF 0.25 tangent (default) | MF 0.25 subset | MF 0.25 whole "
             "| MF 1.0 | MF 0.25 / FM: tangent | subset | whole | MF 1.0 / FM | FM + 1 forward / FM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, overrides in CASES.items():
        lines.append(_step_row(name, overrides, steps, ("tangent", "subset", "whole")))
    torch.set_num_threads(1)
    mlp = next(iter(CASES))
    lines += ["", f"The MLP at 1 thread (each `wb ablate` worker's setting), {steps} steps:", "",
              "| network / data | batch | FM ms/step | MF 0.25 tangent (default) | MF 1.0 | MF 0.25 / FM "
              "| MF 1.0 / FM | FM + 1 forward / FM |", "|---|---|---|---|---|---|---|---|",
              _step_row(mlp, CASES[mlp], steps, ("tangent",))]
    torch.set_num_threads(threads)
    lines += ["", "Sampling one batch of 4x the training batch, median ms:", "",
              "| network / data | samples | forward ms | 1-NFE ms | 1-NFE / forward | Euler 10 ms | Euler 50 ms "
              "| Euler 50 / 1-NFE |", "|---|---|---|---|---|---|---|---|"]
    for name, overrides in CASES.items():
        config = with_overrides(RunConfig(), overrides)
        t = sampling_times(config, repeats=10)
        lines.append(f"| {name} | {4 * config.train.batch_size} | {1e3 * t['forward']:.1f} | {1e3 * t['1nfe']:.1f} "
                     f"| {t['1nfe'] / t['forward']:.2f}x | {1e3 * t['euler10']:.1f} | {1e3 * t['euler50']:.1f} "
                     f"| {t['euler50'] / t['1nfe']:.0f}x |")
    return "\n".join(lines)


def _step_row(name: str, overrides: dict, steps: int, modes: tuple[str, ...]) -> str:
    """One table row: ms per step of FM, MF 0.25 per jvp_mode, MF 1.0, then the ratios to FM.

    The default mode ("tangent") takes turns with Flow Matching alone; the other variants with their
    own Flow Matching run: interleaved with the memory-hungry "subset" and "whole" steps, every
    variant's time moved with what ran before it (the U-Net's tangent / FM read 1.29x in that
    company and 1.21x in a pair)."""
    def at(ratio: float) -> RunConfig:
        return with_overrides(RunConfig(), {**overrides, "meanflow.ratio": ratio})
    pair = step_times({"fm": (at(0.0), "auto"), "tangent": (at(0.25), "tangent")}, steps)
    fm = pair["fm"]
    ratios = {"tangent": pair["tangent"] / fm}
    others = step_times({"fm": (at(0.0), "auto"), **{mode: (at(0.25), mode) for mode in modes if mode != "tangent"},
                         "full": (at(1.0), "auto")}, steps)
    ratios.update({mode: others[mode] / others["fm"] for mode in others if mode != "fm"})
    one_more = fm + forward_time(at(0.25), round(0.25 * overrides["train.batch_size"]))
    return (f"| {name} | {overrides['train.batch_size']} | {1e3 * fm:.1f} | "
            + " | ".join(f"{1e3 * ratios[mode] * fm:.1f}" for mode in (*modes, "full")) + " | "
            + " | ".join(f"{ratios[mode]:.2f}x" for mode in (*modes, "full")) + f" | {one_more / fm:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print(markdown(args.steps))


if __name__ == "__main__":
    main()

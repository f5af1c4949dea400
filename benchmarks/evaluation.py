"""Evaluation throughput: toy metrics (energy distance, sliced W2) and digits FID/KID with the
offline classifier features.

    python benchmarks/evaluation.py [--num 10000] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from workbench.config import RunConfig, with_overrides
from workbench.data import load_data
from workbench.evaluate.draw import generate
from workbench.evaluate.fid import image_scorer
from workbench.evaluate.toy import energy_distance, sliced_wasserstein, toy_metrics
from workbench.run.model import build_net


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def toy_rows() -> list[str]:
    """The Table 1 studies' evaluation: MLP 3x256 on checkerboard, 2000 samples, 1 and 2 NFE."""
    config = with_overrides(RunConfig(), {"data.name": "checkerboard", "net.mlp.width": 256})
    net = build_net(config, load_data("checkerboard")).eval()
    reference = load_data("checkerboard", "test").x[:2000]
    samples, gen_s = timed(lambda: generate(net, (2,), (1,), (), 2000, seed=0)["1nfe"])
    _, energy_s = timed(lambda: energy_distance(samples, reference))
    _, swd_s = timed(lambda: sliced_wasserstein(samples, reference))
    _, all_s = timed(lambda: toy_metrics(net, "checkerboard", (1, 2), (), 2000, 0, 1.0, (0.0, 1.0)))
    return [f"| toy: generate 2000 1-NFE samples (MLP 3x256) | {gen_s:.2f} |",
            f"| toy: energy distance, 2000 vs 2000 points | {energy_s:.2f} |",
            f"| toy: sliced W2 (256 projections), 2000 vs 2000 | {swd_s:.2f} |",
            f"| toy: `toy_metrics` at 1 and 2 NFE, 2000 samples (a Table 1 cell's final evaluation) | {all_s:.2f} |"]


def digits_rows(num: int) -> tuple[list[str], str]:
    """Timing rows, and the FID of real held-out digits (a floor for generated ones)."""
    with tempfile.TemporaryDirectory() as cache:
        scorer, build_s = timed(lambda: image_scorer("digits", "classifier", Path(cache)))
    config = with_overrides(RunConfig(), {"data.name": "digits", "net.arch": "unet"})
    net = build_net(config, load_data("digits")).eval()
    samples, gen_s = timed(lambda: generate(net, (1, 8, 8), (1,), (), num, seed=0)["1nfe"])
    scores, score_s = timed(lambda: scorer.score(samples, seed=0))
    real = scorer.score(load_data("digits", "test").x, seed=0)
    rows = [f"| digits: train classifier + reference features (first use only, cached after) | {build_s:.1f} |",
            f"| digits: generate {num} 1-NFE samples (U-Net, default size) | {gen_s:.1f} |",
            f"| digits: score {num} samples (features + FID + KID) | {score_s:.1f} |",
            f"| digits: per evaluation (generate + score) | {gen_s + score_s:.1f} |"]
    note = (f"Classifier test accuracy {scorer.info['classifier_test_accuracy']:.4f}; the real test split (297 "
            f"images) scores FID {real['fid']:.1f}, KID {real['kid']:.1f} against the training split.")
    return rows, note


def markdown(num: int = 10_000) -> str:
    rows, note = digits_rows(num)
    return "\n".join(["| step | seconds |", "|---|---|", *toy_rows(), *rows, "", note])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print(markdown(args.num))


if __name__ == "__main__":
    main()

"""Time to score 10k digits samples with the offline classifier features (clean-fid FID and KID).

    python benchmarks/eval_digits.py [--num 10000] [--threads 2]

Prints a markdown table: classifier training (cold cache), reference features, 1-NFE generation
with the default U-Net, and scoring (features + FID + KID).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from workbench.config import RunConfig, with_overrides
from workbench.data import load_data
from workbench.evaluate import generate
from workbench.fid import image_scorer
from workbench.train import build_net


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        scorer, build_s = timed(lambda: image_scorer("digits", "classifier", Path(cache)))
    config = with_overrides(RunConfig(), {"data.name": "digits", "net.arch": "unet"})
    net = build_net(config, load_data("digits")).eval()
    samples, gen_s = timed(lambda: generate(net, (1, 8, 8), (1,), (), args.num, seed=0)["1nfe"])
    scores, score_s = timed(lambda: scorer.score(samples))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.num} samples; classifier test accuracy "
          f"{scorer.info['classifier_test_accuracy']:.4f}\n")
    print("| step | seconds |\n|---|---|")
    print(f"| train classifier + reference features (first use only, cached after) | {build_s:.1f} |")
    print(f"| generate {args.num} 1-NFE samples (U-Net, default size) | {gen_s:.1f} |")
    print(f"| score {args.num} samples: features + FID + KID | {score_s:.1f} |")
    print(f"| total per evaluation (generate + score) | {gen_s + score_s:.1f} |")
    real = scorer.score(load_data("digits", "test").x)
    print(f"\nReal test split (297 images) vs the training split: FID {real['fid']:.1f}, KID {real['kid']:.1f}")


if __name__ == "__main__":
    main()

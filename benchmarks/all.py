"""Every benchmark in one process, written to one markdown file (default benchmarks/RESULTS.md).

    python benchmarks/all.py [--out benchmarks/RESULTS.md] [--steps 100]

Sections: MeanFlow vs Flow Matching training step per network (and per jvp_mode of the loss); each training
objective (meanflow.objective, the finite-difference d/dt u, beta) against Flow Matching;
1-NFE sampling vs one forward pass and vs Euler; torch.compile's payback; evaluation throughput; one study laid out as 1
worker x all threads vs one worker per core, with the tracking overhead per cell. Takes about 7
minutes on 2 cores; run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import compile_step  # noqa: E402
import evaluation  # noqa: E402
import objectives  # noqa: E402
import study_workers  # noqa: E402
import train_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "RESULTS.md")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    sections = [("Training step and sampling", lambda: train_step.markdown(args.steps)),
                ("Training step per objective", lambda: objectives.markdown(args.steps)),
                ("torch.compile", compile_step.markdown),
                ("Evaluation throughput", evaluation.markdown),
                ("A study: workers and tracking overhead", study_workers.markdown)]
    body = []
    for title, job in sections:
        print(f"{title} ...", flush=True)
        body += [f"## {title}", "", job(), ""]
    torch.set_num_threads(threads)
    header = ["# Benchmarks", "",
              f"`python benchmarks/all.py` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {threads} threads, {time.strftime('%Y-%m-%d')}; "
              f"{(time.perf_counter() - started) / 60:.1f} min in all. Medians; ratios are what to read, the "
              "machine is shared.", ""]
    args.out.write_text("\n".join(header + body))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

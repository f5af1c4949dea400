"""One study, two ways of using the cores: 1 worker x all threads vs N workers x 1 thread each.

    python benchmarks/study_workers.py [--steps 400] [--cells 4]

Runs the same small study (MLP 3x256 on checkerboard, the shape of the Table 1 CPU studies) in fresh
stores under a temporary folder, once per layout, and prints wall times, their ratio, and the
tracking overhead per cell (wb_tracking_seconds / wb_wall_seconds, recorded by every cell).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mlflow

from workbench.schedule.ablation import AblationQueue
from workbench.schedule.launcher import launch
from workbench.stores.urls import Stores
from workbench.study.study import load_study

STUDY = """
name = "bench"
metric = "energy_1nfe"
seeds = [{seeds}]
[base]
"data.name" = "checkerboard"
"net.mlp.width" = 256
"train.steps" = {steps}
"train.batch_size" = 512
"train.device" = "cpu"
"eval.num_samples" = 2000
"eval.fm_steps" = []
[[axes]]
key = "meanflow.ratio"
values = [0.25, 1.0]
"""


def run(folder: Path, workers: int, steps: int, cells: int) -> tuple[float, list[float]]:
    folder.mkdir()
    study_file = folder / "bench.toml"
    study_file.write_text(STUDY.format(steps=steps, seeds=", ".join(map(str, range(cells // 2)))))
    stores = Stores(f"sqlite:///{folder / 'optuna.db'}", f"sqlite:///{folder / 'mlflow.db'}", (folder / "art").as_uri())
    start = time.perf_counter()
    launch(AblationQueue(load_study(study_file), stores), workers, progress=lambda line: None)
    wall = time.perf_counter() - start
    mlflow.set_tracking_uri(stores.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["bench"])
    runs = runs[runs["tags.wb.role"] != "study"]
    return wall, list(runs["metrics.wb_tracking_seconds"] / runs["metrics.wb_wall_seconds"])


def markdown(steps: int = 400, cells: int = 4) -> str:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        one, overhead = run(Path(folder) / "one", 1, steps, cells)
        many, more = run(Path(folder) / "many", cores, steps, cells)
    overhead += more
    return "\n".join([
        f"{cells} cells of {steps} steps (MLP 3x256, checkerboard), {cores} cores, fresh stores:", "",
        "| layout | wall s |", "|---|---|", f"| 1 worker x {cores} threads | {one:.1f} |",
        f"| {cores} workers x 1 thread (the default) | {many:.1f} |", "",
        f"{cores} workers / 1 worker wall time: {many / one:.2f}x. Tracking overhead per cell (MLflow time / cell "
        f"wall time, {len(overhead)} cells): median {100 * sorted(overhead)[len(overhead) // 2]:.2f}%, "
        f"max {100 * max(overhead):.2f}%."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--cells", type=int, default=4)
    args = parser.parse_args()
    print(markdown(args.steps, args.cells))


if __name__ == "__main__":
    main()

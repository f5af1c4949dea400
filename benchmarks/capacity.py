"""How the shared stores hold up as workers are added: cell-pop latency (Optuna's storage on PostgreSQL)
and MLflow logging latency (an `mlflow server` backed by PostgreSQL), with 2, 4, 8, 16 worker processes.

    python benchmarks/capacity.py [--workers 2,4,8,16] [--cells-per-worker 4] [--rows 200] [--train-s 1.0]

For each worker count: a fresh PostgreSQL database pair and MLflow server (workbench/stores/servers.py), one
study with workers x cells-per-worker cells enqueued up front, as `wb ablate` does. Each worker process
runs the real claim path (stores.trials.storage: heartbeats and claim lock, optimize(n_trials=1) on a
queued trial) and sends what a cell sends to MLflow: a child run with the flattened config as params and
tags, `rows` metric rows of 8 values through MlflowTracker (one log_batch per 20 rows), and the run's end.
Training is a sleep (train-s per cell, spread between the flushes), so the numbers are the stores' latency
under N concurrent clients and not the training's use of this machine's CPU cores; the workers, both
servers and the clients still share those cores. The workers wait at a barrier after their imports.

Prints, per worker count: pop latency (optimize() called -> the objective runs with a claimed trial),
flush latency (one log_batch of 20 rows x 8 metrics), run start latency (create run + params), each as
median / 95th percentile in ms, and the cells finished per second.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # inherited by the spawned workers
warnings.filterwarnings("ignore", message=r".*(is experimental|is an experimental feature)")

METRICS = ("loss", "mse", "weight_mean", "frac_r_neq_t", "lr", "steps_per_s", "grad_norm", "uerr")


def worker(storage: str, tracking_uri: str, experiment_id: str, parent_id: str, rows: int, train_s: float,
           ready, go, out) -> None:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    warnings.filterwarnings("ignore", message=r".*(is experimental|is an experimental feature)")

    from workbench.config import RunConfig, flatten
    from workbench.stores import layout
    from workbench.stores.tracker import MlflowTracker
    from workbench.stores.trials import storage as optuna_storage
    from workbench.stores.urls import Stores

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stores = Stores(storage, tracking_uri, None)
    study = optuna.load_study(study_name="capacity", storage=optuna_storage(stores, max_retry=3))
    client, params = MlflowClient(tracking_uri), flatten(RunConfig())
    pops, flushes, starts, cells = [], [], [], 0
    flushes_per_cell = max(1, rows // 20)
    ready.release()
    go.wait()

    def objective(trial: optuna.Trial) -> float:
        nonlocal cells
        pops.append(time.perf_counter() - began)
        if "cell" not in trial.user_attrs:  # another worker took the last queued cell
            raise optuna.TrialPruned()
        t0 = time.perf_counter()
        tags = layout.cell_tags("capacity", (("cell", trial.user_attrs["cell"]),), 0, trial.user_attrs["cell"],
                                  parent_id)
        run_id = layout.start_run(client, experiment_id, trial.user_attrs["cell"], tags)
        layout.log_cell(client, run_id, params)
        starts.append(time.perf_counter() - t0)
        tracker = MlflowTracker(client, run_id, flush_rows=10**9)  # flushed by hand, every 20 rows
        for step in range(1, rows + 1):
            tracker.log_metrics({name: step * 1e-3 for name in METRICS}, step)
            if step % 20 == 0 or step == rows:
                time.sleep(train_s / flushes_per_cell)
                t0 = time.perf_counter()
                tracker.flush()
                flushes.append(time.perf_counter() - t0)
        layout.end_run(client, run_id, "FINISHED")
        cells += 1
        return 0.0

    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        began = time.perf_counter()
        study.optimize(objective, n_trials=1, catch=(Exception,))
    out.put({"pops": pops, "flushes": flushes, "starts": starts, "cells": cells, "end": time.time()})


def measure(n: int, cells_per_worker: int, rows: int, train_s: float, postgres, folder: Path) -> dict:
    import optuna
    from mlflow import MlflowClient

    from workbench.stores import layout
    from workbench.stores.servers import MlflowServer
    from workbench.stores.trials import storage as optuna_storage
    from workbench.stores.urls import Stores

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = postgres.database(f"optuna_{n}")
    server = MlflowServer(postgres.database(f"mlflow_{n}"), folder / f"artifacts_{n}", folder / f"mlflow_{n}.log",
                          workers=2)
    try:
        stores = Stores(storage, server.url, None)
        client = MlflowClient(server.url)
        experiment_id = layout.experiment_id(client, "capacity", None)
        parent_id = layout.parent_run(client, experiment_id, "capacity", "capacity benchmark", "")
        study = optuna.create_study(study_name="capacity", storage=optuna_storage(stores, max_retry=3))
        for cell in range(n * cells_per_worker):
            study.enqueue_trial({}, user_attrs={"cell": f"cell{cell:03d}"})
        context = multiprocessing.get_context("spawn")
        ready, go, out = context.Semaphore(0), context.Event(), context.Queue()
        processes = [context.Process(target=worker, args=(storage, server.url, experiment_id, parent_id, rows, train_s,
                                                          ready, go, out)) for _ in range(n)]
        for process in processes:
            process.start()
        for _ in processes:
            ready.acquire()
        started = time.time()
        go.set()
        results = [out.get(timeout=1800) for _ in processes]
        for process in processes:
            process.join()
        finished = [r for r in client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
                    if r.info.run_id != parent_id]
        assert len(finished) == n * cells_per_worker, f"{len(finished)} runs finished of {n * cells_per_worker}"
        wall = max(r["end"] for r in results) - started
    finally:
        server.stop()
    pops = [p for r in results for p in r["pops"]]
    flushes = [f for r in results for f in r["flushes"]]
    starts = [s for r in results for s in r["starts"]]
    return {"workers": n, "cells": sum(r["cells"] for r in results), "pop": quantiles(pops), "flush": quantiles(flushes),
            "start": quantiles(starts), "cells_per_s": sum(r["cells"] for r in results) / wall,
            "flushes_per_s": len(flushes) / wall, "wall_s": wall}


def quantiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,4,8,16")
    parser.add_argument("--cells-per-worker", type=int, default=4)
    parser.add_argument("--rows", type=int, default=200, help="metric rows per cell (train.steps / train.log_every)")
    parser.add_argument("--train-s", type=float, default=1.0, help="seconds of 'training' per cell (a sleep)")
    args = parser.parse_args()
    from workbench.stores.servers import Postgres

    with tempfile.TemporaryDirectory() as scratch:
        postgres = Postgres()
        try:
            print("| workers | cells | pop ms (median / p95) | flush ms (median / p95) | run start ms (median / p95) "
                  "| cells/s | flushes/s | wall s |")
            print("|---|---|---|---|---|---|---|---|")
            for n in (int(w) for w in args.workers.split(",")):
                m = measure(n, args.cells_per_worker, args.rows, args.train_s, postgres, Path(scratch))
                print(f"| {n} | {m['cells']} | {m['pop'][0]:.0f} / {m['pop'][1]:.0f} | {m['flush'][0]:.0f} / "
                      f"{m['flush'][1]:.0f} | {m['start'][0]:.0f} / {m['start'][1]:.0f} | {m['cells_per_s']:.2f} | "
                      f"{m['flushes_per_s']:.1f} | {m['wall_s']:.1f} |", flush=True)
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()

"""The one launcher of `wb ablate` and `wb search` (and `wb calibrate`'s studies): prepare the queue, start
local worker processes, replace dead ones, show progress until nothing runs here or elsewhere, finish."""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from dataclasses import dataclass, field

import mlflow
import optuna
from mlflow import MlflowClient

from workbench.run.stopping import Launcher
from workbench.schedule import gpus
from workbench.schedule.queue import Parent, Progress, Queue, finish, prepare, status_line, work
from workbench.stores import trials


@dataclass
class Summary:
    """What a launch ended with: the progress, where it is recorded, and the queue's conclusion."""

    progress: Progress
    parent: Parent
    seconds: float
    stopped_by: str | None  # the signal that stopped the launch
    conclusion: dict = field(default_factory=dict)  # setting means; a search's best trial and confirmation file


def launch(queue: Queue, workers: int, progress=print, threads: int | None = None,
           gpu_ids: list[str] | None = None) -> Summary:
    """Prepares, starts `workers` local processes (`threads` torch threads each, default: the CPU cores split
    between them; worker i on GPU gpu_ids[i % len] when given), shows progress until no trial runs, here or
    elsewhere, and finishes the study."""
    mlflow.set_tracking_uri(queue.stores.tracking_uri)
    parent, trials_study = prepare(queue)
    started = time.time()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    wanted = min(workers, len(trials.waiting(trials_study)))  # new and left over

    def status() -> None:
        now = queue.progress(trials_study)
        left = queue.time_left(trials_study, wanted) if now.complete < now.total else None
        progress(status_line(queue, now, time.time() - started, left))

    stopped_by = supervise(
        trials_study, lambda slot: context.Process(target=work, args=(
            queue, parent, threads, gpus.for_slot(slot, gpu_ids or []))),
        wanted, running=lambda: bool(queue.progress(trials_study).running), status=status)
    client = MlflowClient(queue.stores.tracking_uri)
    # nothing ran: the parent run keeps its end time
    now, conclusion = finish(queue, trials_study, client, parent, stopped_by, keep_end_time=not wanted)
    if now.idle and not stopped_by and os.path.isdir(queue.stores.cells) and not os.listdir(queue.stores.cells):
        os.rmdir(queue.stores.cells)  # every cell finished: no checkpoint left to continue from
    return Summary(now, parent, time.time() - started, stopped_by, conclusion)


def supervise(trials_study: optuna.Study, new_worker, wanted: int, running, status) -> str | None:
    """Starts `wanted` local worker processes (new_worker(slot) makes the one of slot 0..wanted-1; a
    replacement gets its dead predecessor's slot, and so its GPU) and calls status() every 2 s, and when a
    worker exits, while one lives or running() says trials run elsewhere (other launchers, machines), so that this
    launcher's exit status covers the whole study. A trial whose worker died (here or elsewhere) turns
    stale after the storage's grace period: it is failed and its copy queued, which a live worker takes
    or a replacement started here (at most `wanted` replacements). On SIGINT or SIGTERM the workers are
    asked to checkpoint and stop. Returns the name of the signal that stopped the launch, or None."""
    slots = {slot: new_worker(slot) for slot in range(wanted)}  # the latest process of each slot
    processes, replaced = list(slots.values()), 0
    launcher = Launcher()
    try:
        launcher.start(processes)
        while not launcher.requested and (any(p.is_alive() for p in processes) or running()):
            status()
            alive = [p.sentinel for p in processes if p.is_alive()]
            # up to 2 s, less when a worker exits: the last one out ends the launch at once
            if alive:
                multiprocessing.connection.wait(alive, timeout=2)
            else:
                time.sleep(2)
            optuna.storages.fail_stale_trials(trials_study)
            dead = [slot for slot, process in slots.items() if not process.is_alive()]
            if dead and replaced < wanted and trials.waiting(trials_study):
                slots[dead[0]] = new_worker(dead[0])
                processes.append(slots[dead[0]])
                launcher.start(processes[-1:])
                replaced += 1
        if launcher.requested:
            launcher.stop(processes)
    finally:
        launcher.restore()
    return launcher.requested


def terminal_progress():
    """One status line rewritten in place on a terminal; in a log, a new line only when the counts change."""
    last = [""]

    def counts(line: str) -> str:
        return line.split(" min elapsed")[0].rsplit(",", 1)[0]

    def show(line: str) -> None:
        if sys.stderr.isatty():
            print("\r" + line.ljust(len(last[0])), end="", file=sys.stderr, flush=True)
        elif counts(line) != counts(last[0]):
            print(line, file=sys.stderr, flush=True)
        last[0] = line
    return show


def prepared_queue(study, stores) -> tuple[Queue, Parent | None]:
    """The queue of a study prepared with --prepare-only (a search when it has a [search] section and no axes,
    else an ablation), and its parent run; None when it was not prepared in these stores."""
    from workbench.schedule.ablation import AblationQueue
    from workbench.schedule.search import SearchQueue
    from workbench.stores.layout import find_parent

    queue = SearchQueue(study, stores) if study.search is not None and not study.axes else AblationQueue(study, stores)
    parent = find_parent(MlflowClient(stores.tracking_uri), study.name, queue.role)
    return queue, parent and Parent(parent.info.experiment_id, parent.info.run_id)

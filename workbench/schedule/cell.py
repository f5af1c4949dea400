"""One cell of a study or one seed of a search trial: train -> pictures -> evaluate, recorded as an MLflow
child run of the study's (or search's) parent run."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path

import torch
from mlflow import MlflowClient

from workbench.config import RunConfig, flatten
from workbench.evaluate.evaluators import evaluator_for
from workbench.evaluate.pictures import save_run_pictures
from workbench.run.checkpoint import CHECKPOINT
from workbench.run.model import device_label
from workbench.run.stopping import Interrupted
from workbench.run.train import Diverged, TrainResult, training
from workbench.stores import layout, queries, tracker
from workbench.study.study import Cell, Study

RUN_ID = "mlflow_run_id"  # in a cell folder: the MLflow run its checkpoint belongs to


class CellRun:
    """A training run as an MLflow child run: created (params logged) on construction; `training()` is
    the train generator (metric curves go to the run); `finish(result)` uploads the pictures, eval.json and
    EMA weights and marks it FINISHED; `end(status, tags)` closes it otherwise (FAILED, KILLED).

    With a `folder` (a cell's own, kept across attempts) the run trains there; if an earlier attempt left
    a checkpoint and its unfinished MLflow run, this attempt reopens that run and continues from the
    checkpoint (exactly: train's resume), logging only the steps the run does not hold yet. The folder is
    removed once the run has finished. Without one it trains in a temporary folder, from step 0.

    With share_checkpoints every checkpoint is also uploaded to the run; an attempt on a machine whose
    folder holds nothing continues from the last uploaded checkpoint of the cell's unfinished run."""

    def __init__(self, client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str],
                 config: RunConfig, folder: Path | None = None, share_checkpoints: bool = False):
        self.started = time.perf_counter()
        self.client, self.config = client, config
        tags = tags | {layout.DEVICE: device_label(config.train.device)}
        self._folder = tempfile.TemporaryDirectory() if folder is None else None
        self.kept_folder = folder is not None
        self.folder = Path(self._folder.name) if folder is None else folder
        self.run_dir = self.folder / "run"
        earlier = self._earlier_attempt(experiment_id)
        if earlier is None and share_checkpoints and self._folder is None:
            earlier = self._shared_attempt(experiment_id, tags)
        if earlier is not None:
            self.run_id, self.resume = earlier.info.run_id, True
            attempts = int(earlier.data.tags.get(layout.ATTEMPTS, "1")) + 1
            layout.reopen(client, self.run_id, {layout.ATTEMPTS: str(attempts), **{
                k: tags[k] for k in (layout.WORKER, layout.GPUS, layout.DEVICE, layout.TRIAL, layout.TRIAL_STATE) if k in tags}})
            logged = queries.last_steps(client, self.run_id)
        else:
            self.resume, logged = False, None
            if self.run_dir.exists():  # an attempt that left no checkpoint: start over
                shutil.rmtree(self.run_dir)
            self.run_id = layout.start_run(client, experiment_id, run_name, tags)
            layout.log_cell(client, self.run_id, flatten(config))
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / RUN_ID).write_text(self.run_id)
        self.tracker = tracker.MlflowTracker(client, self.run_id, logged=logged, share_checkpoints=share_checkpoints)
        self.tracker.seconds = time.perf_counter() - self.started  # run creation and params count as tracking
        self.ended = False
        on_gpu = tags[layout.DEVICE].startswith("cuda")
        self.system = tracker.system_metrics(client, self.run_id, on_gpu, resume=self.resume)

    def _earlier_attempt(self, experiment_id: str):
        if self._folder is not None or not (self.run_dir / CHECKPOINT).is_file() or not (self.folder / RUN_ID).is_file():
            return None
        return queries.resumable_run(self.client, (self.folder / RUN_ID).read_text().strip(), experiment_id)

    def _shared_attempt(self, experiment_id: str, tags: dict[str, str]):
        """The cell's unfinished run with an uploaded checkpoint, downloaded into this folder."""
        run = queries.shared_attempt(self.client, experiment_id, tags[layout.PARENT], tags[layout.CONFIG_HASH])
        if run is None:
            return None
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as scratch:
            path = queries.download(self.client, run.info.run_id, f"{queries.SHARED_CHECKPOINT}/{CHECKPOINT}", Path(scratch))
            shutil.move(path, self.run_dir / CHECKPOINT)
        (self.run_dir / "config.json").write_text(self.config.model_dump_json(indent=2))
        (self.folder / RUN_ID).write_text(run.info.run_id)
        return run

    def training(self) -> Generator[tuple[int, dict[str, float]], None, TrainResult]:
        return training(self.config, self.run_dir, resume=self.resume, tracker=self.tracker, progress=False,
                        evaluator=evaluator_for(self.config))

    def finish(self, result: TrainResult, tags: dict[str, str] | None = None) -> dict[str, float]:
        save_run_pictures(result.ema, result.data, self.config, self.run_dir, scored=True)
        uploads = time.perf_counter()
        self.tracker.flush()
        torch.save(result.ema.state_dict(), self.run_dir / "ema.pt")
        for name, ema in result.extra_emas.items():  # train.ema_decays: ema_ema0.99995.pt, ...
            torch.save(ema.state_dict(), self.run_dir / f"ema_{name}.pt")
        layout.log_cell(self.client, self.run_id, {}, self.run_dir)
        self.tracker.seconds += time.perf_counter() - uploads
        layout.log_cell(self.client, self.run_id, {}, finals={
            "wb_wall_seconds": time.perf_counter() - self.started, "wb_tracking_seconds": self.tracker.seconds})
        self.end("FINISHED", tags)
        shutil.rmtree(self.folder, ignore_errors=True)  # finished: nothing to resume
        return result.metrics

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        """Flushes the curves logged so far, sets `tags`, terminates the run with `status` (once)."""
        if self.ended:
            return
        self.ended = True
        if self.system is not None:
            self.system.finish()
        try:
            if self.tracker.lost is None:  # a store that stayed away is not waited for twice
                self.tracker.flush()
            layout.end_run(self.client, self.run_id, status, tags)
        except Exception as err:
            if status == "FINISHED":
                raise
            # The store is away: the run stays RUNNING until the next launch marks it (its trial failed).
            print(f"warning: could not mark MLflow run {self.run_id} {status} ({layout.reason(err)})", file=sys.stderr)
        finally:
            if self._folder is not None:
                self._folder.cleanup()


def open_run(cell: Cell, client: MlflowClient, experiment_id: str, parent_run_id: str, cells_dir: str | None = None,
             share_checkpoints: bool = False, folder_name: str | None = None, run_name: str | None = None,
             tags: dict[str, str] | None = None) -> CellRun:
    """The MLflow child run of a cell, training in <cells_dir>/<folder_name> (default: the cell's config hash):
    a new run, or the unfinished run whose checkpoint an earlier attempt left there (or, with share_checkpoints,
    uploaded from whichever machine)."""
    tags = layout.cell_tags(cell.study, cell.settings, cell.seed, cell.key, parent_run_id) | (tags or {})
    folder = Path(cells_dir) / (folder_name or cell.key) if cells_dir else None
    return CellRun(client, experiment_id, run_name or cell.run_name, tags, cell.config, folder, share_checkpoints)


def side_by_side(runs: list[CellRun], on_eval=None) -> list[TrainResult] | None:
    """Trains the runs to the end, advancing whichever is behind to its next evaluation, so that several
    seeds of a search trial reach each evaluation together; on_eval(step, [scores of each run]) is called at
    every step all runs evaluated (a run continued from a later checkpoint skips the steps it holds) and
    stops them all by returning True. Returns the runs' TrainResults, or None when stopped."""
    steps = [run.training() for run in runs]
    at, results, scores = [-1] * len(runs), [None] * len(runs), {}
    while any(result is None for result in results):
        behind = min(s for s, result in zip(at, results) if result is None)
        for i, run in enumerate(steps):
            if results[i] is not None or at[i] != behind:
                continue
            try:
                at[i], reached = next(run)
                scores.setdefault(at[i], {})[i] = reached
            except StopIteration as done:
                results[i] = done.value
        for step in sorted(s for s, by_run in scores.items() if len(by_run) == len(runs)):
            by_run = scores.pop(step)
            if on_eval is not None and on_eval(step, [by_run[i] for i in range(len(runs))]):
                for run in steps:
                    run.close()
                return None
    return results


class Attempt:
    """Closes the runs opened inside it the way the attempt ended: stopped on request -> KILLED with the reason
    (its checkpoints kept: the copy of its trial continues them), any other exception -> FAILED with the
    reason; the folders of runs that cannot continue are removed (diverged, or keep_failed False).
    state_tag: also tag each run wb.trial_state (a search's runs)."""

    def __init__(self, keep_failed: bool = True, state_tag: bool = False):
        self.runs: list[CellRun] = []
        self.keep_failed, self.state_tag = keep_failed, state_tag

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind, err, traceback) -> None:
        if err is None:
            return
        interrupted = isinstance(err, Interrupted)
        state = {layout.TRIAL_STATE: "interrupted" if interrupted else "failed"} if self.state_tag else {}
        for run in self.runs:
            run.end("KILLED" if interrupted else "FAILED", {layout.FAIL_REASON: layout.reason(err), **state})
            if not interrupted and (isinstance(err, Diverged) or not self.keep_failed) and run.kept_folder:
                shutil.rmtree(run.folder, ignore_errors=True)  # it would end the same way again: nothing to resume


def run_cell(study: Study, cell: Cell, client: MlflowClient, experiment_id: str, parent_run_id: str,
             on_start=None, cells_dir: str | None = None, share_checkpoints: bool = False) -> dict[str, float]:
    """Trains and evaluates one cell as an MLflow child run; returns its final metrics. In cells_dir the
    cell trains in <cells_dir>/<config hash>, and continues there from a dead attempt's checkpoint (or,
    with share_checkpoints, from the checkpoint the attempt uploaded, from whichever machine).

    on_start([run_id]) is called once the MLflow run exists (the scheduler records it with the trial).
    """
    with Attempt() as attempt:
        attempt.runs.append(open_run(cell, client, experiment_id, parent_run_id, cells_dir, share_checkpoints))
        if on_start:
            on_start([run.run_id for run in attempt.runs])
        (result,) = side_by_side(attempt.runs)
        return attempt.runs[0].finish(result)

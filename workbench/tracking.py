"""Where runs are recorded: metric trackers for a training run, and every access to the MLflow tracking
store (with the Optuna storage URL) for studies. Training calls a Tracker, never MLflow.

Layout of a study in MLflow: an experiment named after the study; one parent run tagged
wb.role = study (its description as the run note, the study file as run as the artifact study.toml);
one child run per cell (tag mlflow.parentRunId), tagged with the cell's config hash, seed, axis labels,
commit and worker, holding params, metric curves, final scores and artifacts (config.json, eval.json,
ema.pt, samples*.png). A search (`wb search`) has its own parent run in the same experiment, tagged
wb.role = search, and one child run per (trial, seed), tagged wb.trial and wb.trial_state (complete,
pruned, failed; a failed one also wb.fail_reason). ablate, search, runs, report and calibrate go through
the functions here.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run

# Tag names.
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"
ROLE = "wb.role"  # "study" on an ablation's parent run, "search" on a search's
STUDY = "wb.study"
CONFIG_HASH = "wb.config_hash"  # a cell's identity (studies.config_hash)
SEED = "wb.seed"
COMMIT = "wb.git_commit"
WORKER = "wb.worker"  # host:pid that trained the cell
GPUS = "wb.gpus"  # the worker's CUDA_VISIBLE_DEVICES (wb ablate/search --gpus), when set
DEVICE = "wb.device"  # the device the cell trained on, e.g. "cuda:0 (NVIDIA H200)" or "cpu"
AXIS = "wb.axis"  # comma-joined axis names; wb.axis.<name> = the cell's label on that axis
VALUE = "wb.value"  # comma-joined labels
TRIAL = "wb.trial"  # a search's child run: its Optuna trial number
TRIAL_STATE = "wb.trial_state"  # complete | pruned | failed (the Optuna state; MLflow: FINISHED, KILLED, FAILED)
FAIL_REASON = "wb.fail_reason"  # why a run failed: the exception, one line ("Diverged: ..." for NaN/inf)
DIVERGED = "Diverged"  # the start of a diverged run's fail reason (workbench.train.Diverged)
ATTEMPTS = "wb.attempts"  # a cell's run continued from a dead attempt's checkpoint: how many attempts it took
STUDY_FILE = "study.toml"  # the parent run's artifact: the study file as run


class StoreError(ValueError):
    """A storage or tracking URL that cannot work here; the message says what to install or change."""


@dataclass(frozen=True)
class Stores:
    storage: str  # Optuna RDB URL
    tracking_uri: str  # MLflow tracking URI
    # artifact root for a new experiment: ./mlartifacts beside a database store; None with a tracking
    # server, which then chooses it (mlflow-artifacts:/ when it proxies artifacts), so that workers on
    # every machine upload through the server instead of into a folder on the launcher's machine
    artifacts: str | None
    # A RUNNING trial with no heartbeat for grace_s seconds is stale (its worker died): the next launch
    # fails it and runs the cell again.
    heartbeat_s: int = 10
    grace_s: int = 30
    # Where a cell trains (<cells>/<config hash>/run) and keeps its checkpoint until it has finished, so
    # that a cell whose worker died continues from its last checkpoint (on the same machine).
    cells: str = "wb-cells"
    # Also upload every checkpoint to the cell's MLflow run (artifact checkpoint/checkpoint.pt), so that a
    # cell whose machine is lost continues from it on another machine (costs one upload per checkpoint).
    share_checkpoints: bool = False


def default_stores(storage: str | None = None, tracking_uri: str | None = None, heartbeat_s: int = 10,
                   grace_s: int = 30, share_checkpoints: bool = False) -> Stores:
    """The given URLs, or SQLite files in the working directory; a missing database driver fails here."""
    # Absolute paths: MLflow caches one store per URI string, so a relative sqlite URI would keep
    # pointing at the first working directory it was used in.
    tracking_uri = tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
    server = tracking_uri.split(":", 1)[0] in ("http", "https")
    stores = Stores(storage or f"sqlite:///{Path('optuna.db').resolve()}", tracking_uri,
                    None if server else Path("mlartifacts").resolve().as_uri(),
                    heartbeat_s, grace_s, str(Path("wb-cells").resolve()), share_checkpoints)
    for option, url, schemes in (("--storage", stores.storage, STORAGE_SCHEMES),
                                 ("--tracking-uri", stores.tracking_uri, TRACKING_SCHEMES)):
        check_scheme(option, url, schemes)
        check_driver(option, url)
        check_reachable(option, url)
    return stores


# Optuna's RDB storage takes SQLAlchemy URLs; MLflow's tracking URI also takes a server and a file store
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file")


def url_scheme(url: str) -> str:
    """'postgresql+psycopg://...' -> 'postgresql'; '' for a string that is not a URL."""
    return url.split(":", 1)[0].split("+")[0] if "://" in url else ""


def check_scheme(option: str, url: str, schemes: tuple[str, ...]) -> None:
    """An unknown URL scheme fails before any store or folder is created, listing the supported ones."""
    scheme = url_scheme(url)
    if scheme not in schemes:
        raise StoreError(f"{option} {url}: unsupported scheme {scheme or '(none)'!r}; use one of "
                         f"{', '.join(s + '://' for s in schemes)}")


def check_reachable(option: str, url: str, timeout_s: float = 5.0) -> None:
    """A store that cannot be reached fails here, within seconds and naming the URL, not minutes later
    in a worker: a SQLite file's folder must exist, a database server must accept a connection, an MLflow
    server must answer its /health endpoint."""
    scheme = url_scheme(url)
    if scheme == "sqlite":
        folder = Path(url.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise StoreError(f"{option} {url}: the folder {folder} does not exist")
    elif scheme in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        args = {"connect_timeout": int(timeout_s)} if scheme in ("postgresql", "mysql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        try:
            with engine.connect():
                pass
        except sqlalchemy.exc.SQLAlchemyError as err:
            first = str(err.orig if getattr(err, "orig", None) else err).strip().splitlines()[0]
            raise StoreError(f"{option} {url}: cannot connect to the database ({first})") from None
        finally:
            engine.dispose()
    elif scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as answer:
                answer.read()
        except (urllib.error.URLError, OSError) as err:
            raise StoreError(f"{option} {url}: no MLflow tracking server answers there ({err}); start one "
                             "(mlflow server --host 127.0.0.1 --port 5000) or pass another --tracking-uri") from None


def check_driver(option: str, url: str) -> None:
    """A database URL whose driver is missing fails here, before anything is created, not deep in a worker.
    SQLAlchemy names the driver (its default for postgresql:// depends on its version)."""
    if url_scheme(url) not in ("postgresql", "mysql", "mssql"):
        return  # sqlite (built in), or an MLflow server / file store: no driver
    import sqlalchemy

    try:
        sqlalchemy.engine.make_url(url).get_dialect().import_dbapi()
    except ImportError as err:
        raise StoreError(f"{option} {url}: its database driver {err.name!r} is not installed "
                         "(for PostgreSQL: pip install -e '.[postgres]')") from None


def require_store(tracking_uri: str) -> None:
    """Reading from a SQLite store that is not there would create an empty one; say so instead."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        if not path.exists():
            raise StoreError(f"no MLflow store at {path} (tracking URI {tracking_uri}); run the study first, "
                             "or pass --tracking-uri")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# MLflow 3's UI opens an experiment in the view this tag names; without it, in the GenAI view (traces)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, artifacts: str | None) -> str:
    """The experiment of study `name`, created with its artifacts under `artifacts`/<name> if new (None:
    where the tracking server puts them), tagged to open in the MLflow UI's model-training view."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=f"{artifacts}/{name}" if artifacts else None,
                                        tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


VIEW_KEY = "wb"  # the experiment's shared runs-table view (tag mlflow.sharedViewState.wb), opened by view_url()


def share_view(client: MlflowClient, experiment_id: str, metric: str, axis_keys: list[str], labels: list[str]) -> None:
    """The runs table as a study is read: every run flat, sorted by the metric, with columns for the
    metric (and its 2-NFE score), each setting's mean on the parent run, the axes' params and the seed.
    MLflow 3's table shows no metric column until one is ticked; its shared views (a JSON experiment tag,
    opened with ?viewStateShareKey=) are how a link opens with them."""
    columns = ["attributes.`Run Name`", f"metrics.`{metric}`", f"metrics.`{metric.replace('_1nfe', '_2nfe')}`",
               *(f"metrics.`{metric}/{metric_key(label)}`" for label in labels),
               *(f"params.`{key}`" for key in axis_keys), f"tags.`{SEED}`"]
    state = {"selectedColumns": columns, "orderByKey": f"metrics.`{metric}`", "orderByAsc": True}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))


def view_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in the MLflow UI at `base`: the model-training view, the shared table view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def metric_key(text: str) -> str:
    """A setting's label as part of an MLflow metric name (letters, digits, _ - . / and spaces)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text.replace("%", "pct"))


def log_setting_means(client: MlflowClient, parent_id: str, metric: str) -> dict[str, float]:
    """On the study's parent run: the mean of `metric` over the finished cells of each setting (tag
    wb.value), as metrics `<metric>/<setting>`, so the parent row of the runs table shows the result."""
    by_setting: dict[str, list[float]] = {}
    for run in child_runs(client, parent_id, status="FINISHED"):
        if metric in run.data.metrics and VALUE in run.data.tags:
            by_setting.setdefault(run.data.tags[VALUE], []).append(run.data.metrics[metric])
    means = {f"{metric}/{metric_key(setting)}": sum(v) / len(v) for setting, v in by_setting.items()}
    if means:
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in means.items()])
    return means


def find_parent(client: MlflowClient, name: str, role: str = "study") -> Run | None:
    """The parent run `wb ablate` (role "study") or `wb search` (role "search") recorded for study `name`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = '{role}'", max_results=1)
    return parents[0] if parents else None


def parent_run(client: MlflowClient, experiment: str, name: str, description: str, study_text: str,
               role: str = "study") -> str:
    """The study's (or search's) parent run id, created if new; the study file as run now is (re)logged
    with it, so a report can be rendered from the tracking store alone."""
    parent = find_parent(client, name, role)
    run_name = name if role == "study" else f"{name} ({role})"
    run_id = parent.info.run_id if parent else client.create_run(experiment, run_name=run_name, tags={
        ROLE: role, STUDY: name, COMMIT: git_commit(), NOTE: description}).info.run_id
    client.log_text(run_id, study_text, STUDY_FILE)
    return run_id


def start_run(client: MlflowClient, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """A new (child) run; returns its id."""
    return client.create_run(experiment, run_name=run_name, tags=tags).info.run_id


def end_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str] | None = None,
            keep_end_time: bool = False) -> None:
    """Sets `tags`, then the run's status (FINISHED, FAILED, KILLED); keep_end_time leaves its end time as it
    was (a parent run whose study had nothing left to run still spans the study's wall time)."""
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    if keep_end_time:
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status)


def reopen(client: MlflowClient, run_id: str, tags: dict[str, str] | None = None) -> None:
    """A parent run whose study (or search) is running again, or a cell's run continued by a new attempt
    (its earlier fail reason dropped, `tags` set)."""
    run = client.get_run(run_id)
    if FAIL_REASON in run.data.tags:
        client.delete_tag(run_id, FAIL_REASON)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status="RUNNING")


def is_running(client: MlflowClient, run_id: str) -> bool:
    return client.get_run(run_id).info.status == "RUNNING"


def resumable_run(client: MlflowClient, run_id: str, experiment: str) -> Run | None:
    """The run `run_id` if it exists in `experiment` and has not finished (a dead attempt to continue)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.experiment_id == experiment and run.info.status != "FINISHED" else None


SHARED_CHECKPOINT = "checkpoint"  # the artifact folder of a cell's last checkpoint (--share-checkpoints)


def shared_attempt(client: MlflowClient, experiment: str, parent_id: str, key: str) -> Run | None:
    """An unfinished child run of the parent with config hash `key` that uploaded a checkpoint (a cell
    whose machine was lost), or None."""
    runs = client.search_runs([experiment], f"tags.`{PARENT}` = '{parent_id}' and tags.`{CONFIG_HASH}` = '{key}' "
                              "and attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"])
    for run in runs:
        if any(a.path == f"{SHARED_CHECKPOINT}/checkpoint.pt" for a in client.list_artifacts(run.info.run_id,
                                                                                               SHARED_CHECKPOINT)):
            return run
    return None


def last_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """Metric name -> the last step at which the run logged it (a resumed run logs only later steps)."""
    metrics = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=0) for key in metrics}


def reason(err: BaseException) -> str:
    """An exception as the one line a failed run's wb.fail_reason tag holds."""
    text = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return text[:500]


def metric_history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric of a run."""
    return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]


def download(client: MlflowClient, run_id: str, name: str, folder: Path) -> Path | None:
    """A run's artifact `name` downloaded into folder, or None if the run has none by that name."""
    folder_name = name.rsplit("/", 1)[0] if "/" in name else None
    if name not in {a.path for a in client.list_artifacts(run_id, folder_name)}:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, name, str(folder)))


def study_text(client: MlflowClient, parent: Run) -> str | None:
    """The study file logged with a parent run, or None (recorded by an older wb ablate)."""
    if STUDY_FILE not in {a.path for a in client.list_artifacts(parent.info.run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(parent.info.run_id, STUDY_FILE, folder)).read_text()


def child_runs(client: MlflowClient, parent_id: str, status: str | None = None) -> list[Run]:
    """Every child run of a parent run (optionally only those with `status`), all pages."""
    experiment = client.get_run(parent_id).info.experiment_id
    query = f"tags.`{PARENT}` = '{parent_id}'" + (f" and attributes.status = '{status}'" if status else "")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_child(client: MlflowClient, parent_id: str, key: str) -> Run | None:
    """The FINISHED child run of the parent with config hash `key`, or None."""
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`{PARENT}` = '{parent_id}' and tags.`{CONFIG_HASH}` = '{key}' "
                              "and attributes.status = 'FINISHED'", max_results=1)
    return runs[0] if runs else None


def cell_tags(study: str, settings: tuple[tuple[str, str], ...], seed: int, key: str, parent_id: str) -> dict[str, str]:
    """The tags of a cell's child run."""
    tags = {PARENT: parent_id, STUDY: study, SEED: str(seed), CONFIG_HASH: key, COMMIT: git_commit(),
            WORKER: f"{socket.gethostname()}:{os.getpid()}"}
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        tags[GPUS] = os.environ["CUDA_VISIBLE_DEVICES"]
    tags |= {f"{AXIS}.{name}": label for name, label in settings}
    return tags | {AXIS: ",".join(name for name, _ in settings), VALUE: ",".join(label for _, label in settings)}


def axis_label(run: Run, axis_name: str) -> str | None:
    return run.data.tags.get(f"{AXIS}.{axis_name}")


CELL_ARTIFACTS = ("config.json", "eval.json", "ema.pt")  # and every samples*.png and ema_*.pt (train.ema_decays)


def log_cell(client: MlflowClient, run_id: str, params: dict, run_dir: Path | None = None,
             finals: dict[str, float] | None = None) -> None:
    """A cell's params (values cut to MLflow's 500 characters), or its artifacts from run_dir and its
    final bookkeeping metrics (step 0)."""
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    if run_dir is not None:
        for name in CELL_ARTIFACTS:
            client.log_artifact(run_id, str(run_dir / name))
        for picture in sorted(run_dir.glob("samples*.png")):  # samples.png, samples_2nfe.png, ...
            client.log_artifact(run_id, str(picture))
        for weights in sorted(run_dir.glob("ema_*.pt")):
            client.log_artifact(run_id, str(weights))
    if finals:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in finals.items()])


# Trackers ----------------------------------------------------------------------------------------

class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...  # called before every checkpoint

    def checkpointed(self, path: Path) -> None: ...  # called after every checkpoint


class JsonlTracker:
    """Appends one JSON row per log call to run_dir/metrics.jsonl.

    On resume from step s, rows after s are dropped first: they are about to be recomputed.
    """

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [row for row in rows if row["step"] <= resume_step]
            path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        elif resume_step is None:
            path.write_text("")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def flush(self) -> None:
        """Rows are written as they come."""

    def checkpointed(self, path: Path) -> None:
        """The checkpoint stays in the run folder."""


class NullTracker:
    """Logs nothing: the tracker of a data-parallel rank other than 0 (rank 0 logs for the run)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def checkpointed(self, path: Path) -> None:
        pass


def write_eval(run_dir: Path, info: dict, num_samples: int, metrics: dict[str, float]) -> None:
    """run_dir/eval.json: the scores with the feature set and sample count they were measured with."""
    record = {**info, "num_samples": num_samples, "metrics": metrics}
    (run_dir / "eval.json").write_text(json.dumps(record, indent=2))


_sleep = time.sleep  # the tracker's backoff (the fault tests count the pauses instead of waiting)


class TrackingLost(RuntimeError):
    """The tracking store did not take the buffered metric values for longer than the tracker waits."""


def retry_seconds() -> float:
    """How long a tracker keeps retrying a tracking store that does not answer (WB_TRACKING_RETRY_S)."""
    return float(os.environ.get("WB_TRACKING_RETRY_S", 300))


def system_metrics(client: MlflowClient, run_id: str, on_gpu: bool, resume: bool = False):
    """MLflow's own system-metrics monitor on a run that trains on a GPU (GPU utilisation and memory, CPU, disk,
    network, as system/... metrics every 10 s), started; None on the CPU unless WB_SYSTEM_METRICS=1 asks for it.
    Stop it with .finish()."""
    if not (on_gpu or os.environ.get("WB_SYSTEM_METRICS") == "1"):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=client.tracking_uri)
    monitor.start()
    return monitor


class MlflowTracker:
    """Buffers metric rows and sends them with MlflowClient.log_batch every `flush_rows` rows.

    One synchronous call per training step would cost more than the step itself on small models;
    `seconds` accumulates the time spent here so the overhead can be reported.

    A store that fails a flush (a server restarting, a network drop, a locked database) is retried with
    exponential backoff (1 s, 2 s, ... 30 s) for up to `retry_s` seconds while training waits; the values
    stay buffered. Past that, TrackingLost: the cell fails, its checkpoint (saved only after a flush went
    through) is kept, and a rerun logs what the store does not hold.
    """

    def __init__(self, client, run_id: str, flush_rows: int = 20, logged: dict[str, int] | None = None,
                 retry_s: float | None = None, share_checkpoints: bool = False):
        """logged: a resumed run's last logged step per metric; values up to it are in the store already
        (a run resumes from a checkpoint at or before it), so they are not logged twice. share_checkpoints:
        upload every checkpoint to the run (artifact checkpoint/checkpoint.pt)."""
        self.client, self.run_id, self.flush_rows, self.logged = client, run_id, flush_rows, logged or {}
        self.share_checkpoints = share_checkpoints
        self.retry_s = retry_seconds() if retry_s is None else retry_s
        self.buffer: list = []
        self.rows = 0
        self.seconds = 0.0
        self.lost: TrackingLost | None = None  # set once the store stayed away past retry_s

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        now = int(time.time() * 1000)
        self.buffer += [Metric(key, float(value), now, step) for key, value in metrics.items()
                        if step > self.logged.get(key, 0)]
        self.rows += 1
        self.seconds += time.perf_counter() - start
        if self.rows % self.flush_rows == 0:
            self.flush()  # counts its own time

    def flush(self) -> None:
        start = time.perf_counter()
        while self.buffer:
            self._retrying(lambda: self.client.log_batch(self.run_id, metrics=self.buffer[:1000]),
                           f"{len(self.buffer)} metric values")  # MLflow takes at most 1000 per batch
            del self.buffer[:1000]
        self.seconds += time.perf_counter() - start

    def checkpointed(self, path: Path) -> None:
        if self.share_checkpoints:
            start = time.perf_counter()
            self._retrying(lambda: self.client.log_artifact(self.run_id, str(path), SHARED_CHECKPOINT), "a checkpoint")
            self.seconds += time.perf_counter() - start

    def _retrying(self, call, what: str) -> None:
        waited, delay = 0.0, 1.0
        while True:
            try:
                return call()
            except Exception as err:
                if getattr(err, "error_code", "") == "INVALID_PARAMETER_VALUE":  # a bad value: retrying cannot help
                    raise
                if waited >= self.retry_s:
                    self.lost = TrackingLost(
                        f"the tracking store did not take {what} of run {self.run_id} for {waited:.0f} s "
                        f"({reason(err)}); the cell's last checkpoint is kept, rerun to continue")
                    raise self.lost from err
                pause = min(delay, self.retry_s - waited)
                _sleep(pause)
                waited, delay = waited + pause, min(2 * delay, 30.0)

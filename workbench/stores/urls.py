"""Where a study is recorded: the Optuna storage URL and the MLflow tracking URI, checked before anything
is created (a known scheme, its driver installed, the store reachable)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def default_stores(storage: str | None = None, tracking_uri: str | None = None, heartbeat_s: int | None = None,
                   grace_s: int | None = None, share_checkpoints: bool = False) -> Stores:
    """The given URLs, or SQLite files in the working directory; a missing database driver fails here."""
    # Absolute paths: MLflow caches one store per URI string, so a relative sqlite URI would keep
    # pointing at the first working directory it was used in.
    tracking_uri = tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
    server = tracking_uri.split(":", 1)[0] in ("http", "https")
    # WB_HEARTBEAT_S and WB_GRACE_S (seconds) tune how fast a dead worker's trials are found (tests shorten them)
    heartbeat_s = heartbeat_s or int(os.environ.get("WB_HEARTBEAT_S", 10))
    grace_s = grace_s or int(os.environ.get("WB_GRACE_S", 30))
    stores = Stores(storage or f"sqlite:///{Path('optuna.db').resolve()}", tracking_uri,
                    None if server else Path("mlartifacts").resolve().as_uri(), heartbeat_s, grace_s,
                    str(Path("wb-cells").resolve()), share_checkpoints)
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

"""The pages of what a store holds for a study name: its ablation page, its search page, or both."""
from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from workbench.report.ablation import render
from workbench.report.record import ReportError
from workbench.report.search import render_search
from workbench.stores.layout import find_parent
from workbench.stores.urls import Stores, require_store
from workbench.study.study import available, did_you_mean


def render_recorded(name: str, stores: Stores, out: Path, wb: str = "wb") -> list[Path]:
    """Renders every page the store holds for `name`; a name it does not hold fails naming what it holds
    (and, for a study file not run yet, the command that runs it: `wb` as the user runs it)."""
    require_store(stores.tracking_uri)
    client = MlflowClient(stores.tracking_uri)
    pages = []
    if find_parent(client, name, "study") is not None:
        pages.append(render(name, stores.tracking_uri, out))
    if find_parent(client, name, "search") is not None:
        pages.append(render_search(name, stores.tracking_uri, stores.storage, out))
    if not pages:
        recorded = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = (f"; recorded there: {', '.join(recorded)}{did_you_mean(name, recorded)}" if recorded
                else "; it holds no study yet")
        run = f" (run `{wb} ablate {name}` or `{wb} search {name}` first, or pass --tracking-uri)" if name in available() else ""
        raise ReportError(f"study {name!r}: no runs in the tracking store {stores.tracking_uri}{run}{hint}")
    return pages


def render_suite_studies(tracking_uri: str, out: Path) -> list[tuple[str, str]]:
    """Each Table 1 study's page at each operating point, or why it was skipped (the suite page lists it as not
    run)."""
    from workbench.report.suite import suite_names

    pages = []
    for name, command in suite_names():
        try:
            pages.append((name, str(render(name, tracking_uri, out))))
        except ReportError:
            pages.append((name, f"skipped: not in the store yet (`{command}` runs it)"))
    return pages

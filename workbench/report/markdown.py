"""The markdown table every page writes: a header with its rule, then one line per row."""
from __future__ import annotations

from collections.abc import Iterable


def row(cells: Iterable[object]) -> str:
    """One table line: '| a | b |'; a '|' inside a cell (a label such as 'u(z, t, t | c)') is escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def header(titles: Iterable[object]) -> list[str]:
    """The header line and its rule: ['| a | b |', '|---|---|']."""
    titles = list(titles)
    return [row(titles), "|" + "---|" * len(titles)]


def table(titles: Iterable[object], rows: Iterable[Iterable[object]]) -> list[str]:
    """A whole table's lines."""
    return header(titles) + [row(cells) for cells in rows]

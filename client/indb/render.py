"""How the CLI shows results: rows as a table (rich), documents as indented JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, separators=(", ", ": "))
    return str(v)


def table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None, title: str | None = None) -> None:
    """Print ``rows`` (dicts) as a table on stdout; "(no rows)" when empty."""
    from rich.console import Console
    from rich.table import Table

    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    console = Console(file=sys.stdout, soft_wrap=False)
    if not rows:
        console.print("(no rows)" if title is None else f"{title}: (no rows)")
        return
    t = Table(title=title, show_lines=False, header_style="bold")
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in cols))
    console.print(t)


def document(doc: Any) -> None:
    """Print one JSON document (a function's jsonb result) indented."""
    print(json.dumps(doc, indent=2, default=str))

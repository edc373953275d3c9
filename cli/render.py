"""Rendering shared by every `sak-cache` command: readable at 80 columns, no identifier ever cut.

Why: rich tables cut every cell that does not fit with an ellipsis (``tin…``), so the store name a
user needs for the next command was unreadable even at 200 columns. The rules here:

* identifiers (store, teacher, dataset names, paths) are printed on lines of their own with
  ``soft_wrap`` (one unbroken line that the terminal wraps: copy-paste and grep keep working), or in
  table cells with ``overflow="fold"`` (broken across lines, never shortened);
* numbers never wrap (``no_wrap``); no column ever uses ``ellipsis``;
* one record per block (a name line, then ``key  value`` pairs that fold) is the default for
  listings; :func:`fits` tells whether a one-row-per-record table (``--wide``) fits the terminal;
* ``--json`` prints one JSON object on stdout with :func:`emit_json` (progress and logs go to
  stderr), carrying the same data as the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .common import out

NUMERIC = "numeric"  # a column kind: right-aligned, never wrapped
NAME = "name"  # a column kind: folded across lines when it does not fit, never shortened
TEXT = "text"  # free text: wraps at spaces, folds long words


def table(title: str | None, columns: Sequence[tuple[str, str]], *, show_header: bool = True) -> Table:
    """A table whose columns follow the rules above: ``columns`` is ``[(header, NUMERIC | NAME | TEXT), ...]``."""
    t = Table(title=escape(title) if title else None, title_justify="left", show_header=show_header)
    for header, kind in columns:
        if kind == NUMERIC:
            t.add_column(header, justify="right", no_wrap=True, overflow="fold")
        else:
            t.add_column(header, overflow="fold")
    return t


def line(text: str, *, style: str | None = None, console: Console | None = None) -> None:
    """One line holding an identifier: printed unbroken (the terminal wraps it), never read as markup."""
    (console or out).print(text, style=style, highlight=False, markup=False, soft_wrap=True)


def block(name: str | None, pairs: Iterable[tuple[str, str]], *, console: Console | None = None, style: str = "bold") -> None:
    """One record: ``name`` on its own line, then ``key  value`` lines indented by two, keys aligned.

    Each line is printed unbroken (a long value wraps in the terminal, never cut) and as plain text (never
    markup): a path or an error with ``[...]`` in it stays visible.
    """
    target = console or out
    if name is not None:
        line(name, style=style, console=target)
    pairs = list(pairs)
    pad = max((len(key) for key, _ in pairs), default=0)
    for key, value in pairs:
        line(f"  {key:<{pad}}  {value}", console=target)


def cell(value: Any, style: str | None = None) -> Text:
    """A table cell shown as is (never read as markup: ``[...]`` in a name or an error stays visible)."""
    return Text(str(value), style=style or "")


def fits(renderable: Any, console: Console | None = None) -> bool:
    """Whether ``renderable`` fits the console's width without folding any cell (for ``--wide``)."""
    target = console or out
    natural = Measurement.get(target, target.options.update(width=1 << 16), renderable)  # unclamped by the terminal
    return natural.maximum <= target.width


def emit_json(data: Any) -> None:
    """One JSON object on stdout (indented, UTF-8 kept): what ``--json`` prints. Nothing else goes to stdout."""
    out.file.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    out.file.flush()


def mb(n: int) -> str:
    """Bytes as MB with one decimal (the unit every sak-cache table uses)."""
    return f"{n / 1e6:,.1f} MB"

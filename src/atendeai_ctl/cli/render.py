"""One place that decides how results reach the user.

Data goes to stdout (a JSON document with --json, a table or lines otherwise); progress, logs
and errors go to stderr. Rich styling only on a terminal and when NO_COLOR is unset.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from atendeai_ctl.errors import AtendeaiError


def fancy(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    if fancy(sys.stdout):
        from rich.console import Console
        from rich.table import Table

        rich_table = Table(*columns, title=title)
        for row in rows:
            rich_table.add_row(*("" if cell is None else str(cell) for cell in row))
        Console().print(rich_table)
        return
    cells = [list(columns)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def error(err: AtendeaiError, *, as_json: bool) -> None:
    if as_json:
        print_json({"error": err.to_dict()})
    line = f"Error: {err.message}"
    if err.hint:
        line += f" ({err.hint})"
    if fancy(sys.stderr):
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]Error:[/] {escape(line[len('Error: ') :])}")
    else:
        info(line)

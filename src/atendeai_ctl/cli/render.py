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


MAX_ERROR_LINE = 500
"""An error line quoting a hostile 100 KB argument back is cut here; the JSON keeps it all."""


def error(err: AtendeaiError, *, as_json: bool) -> None:
    if as_json:
        print_json({"error": err.to_dict()})
    line = f"Error: {err.message}"
    if err.hint:
        line += f" ({err.hint})"
    if len(line) > MAX_ERROR_LINE:
        line = f"{line[:MAX_ERROR_LINE]}... ({len(line)} characters)"
    if fancy(sys.stderr):
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]Error:[/] {escape(line[len('Error: ') :])}")
    else:
        info(line)


def confirm(question: str, *, yes: bool) -> None:
    """Go on only with --yes or an explicit 'y' at a terminal; refuse in scripts without --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise AtendeaiError("refused", f"{question} needs confirmation", "pass --yes")
    import typer

    if not typer.confirm(question, default=False, err=True):
        raise AtendeaiError("refused", "cancelled", None)


class LiveProgress:
    """Per-service lines (waiting / starting / healthy, elapsed seconds) and pull/build steps.

    On a terminal it redraws in place (byte counts as bars); otherwise each change is one
    plain line on stderr.
    """

    FINAL = frozenset({"healthy", "started", "completed", "failed"})

    def __init__(self, services: Sequence[str], *, enabled: bool = True) -> None:
        import time

        self.enabled = enabled
        self.clock = time.monotonic
        self.t0 = self.clock()
        self.rows: dict[str, tuple[str, float, str]] = {s: ("pending", 0.0, "") for s in services}
        self.steps: dict[str, str] = {}
        self.fancy = enabled and fancy(sys.stderr)
        self._live: Any = None
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_line: dict[str, str] = {}

    def __enter__(self) -> LiveProgress:
        if self.fancy:
            from rich.console import Console
            from rich.live import Live
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn())
            self._live = Live(
                console=Console(stderr=True), refresh_per_second=8, get_renderable=self._render
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        icons = {"healthy": "[green]✔[/]", "started": "[green]✔[/]", "completed": "[green]✔[/]",
                 "failed": "[red]✘[/]"}  # fmt: skip
        for topic, message in self.steps.items():
            table.add_row("[cyan]•[/]", escape(topic), "", "", escape(message[:70]))
        now = self.clock() - self.t0
        for name, (phase, elapsed, detail) in self.rows.items():
            shown = elapsed if phase in self.FINAL or phase == "pending" else now
            table.add_row(icons.get(phase, "[yellow]…[/]"), name, phase, f"{shown:5.1f}s", detail)
        return Group(self._bars, table) if self._tasks else table

    def event(self, service: str, phase: str, elapsed: float, detail: str) -> None:
        if not self.enabled:
            return
        self.rows[service] = (phase, elapsed, detail)
        if self._live is None:
            info(f"{service}: {phase}{' ' + detail if detail else ''} ({elapsed:.1f}s)")

    def progress(
        self, topic: str, message: str, completed: float | None, total: float | None
    ) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            if total is None:
                self.steps[topic] = message
                return
            task = self._tasks.get(topic)
            if task is None:
                task = self._tasks[topic] = self._bars.add_task(topic, total=total)
            self._bars.update(task, completed=completed or 0, total=total)
        elif self._last_line.get(topic) != message and total is None:
            self._last_line[topic] = message
            info(f"{topic}: {message}")

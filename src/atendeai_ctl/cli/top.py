"""`atendeai top`: a live terminal view of the stack, or one snapshot (`--once [--json]`).

Drawn with rich.live (rich is already a dependency): one frame is a Group of small tables,
redrawn on the alternate screen every --interval seconds; keys are read from the terminal in
cbreak mode with select(), so `q` quits at once and Ctrl-C leaves the same way, with the
terminal's modes restored in `finally`. Textual would bring an app framework, its own event
loop and a new pinned dependency for what is a read-only page of eleven rows.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Annotated, Any

import typer

from atendeai_ctl.cli.options import JsonOption, ProjectDirOption
from atendeai_ctl.cli.render import print_json
from atendeai_ctl.cli.stack import RuntimeOption, _config

WIDTH, HEIGHT = 80, 24
BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40


def console(file: IO[str] | None = None, **kwargs: Any) -> Any:
    """A Console that honours NO_COLOR (set at all, as render.fancy reads it): no colour and
    no styles, so a frame carries no escape codes beyond the terminal's cursor moves."""
    from rich.console import Console

    plain = "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb"
    return Console(
        file=file,
        color_system=None if plain else "auto",
        no_color=plain,
        highlight=False,
        emoji=False,
        **kwargs,
    )


def sparkline(values: Sequence[float | None], width: int = SPARK_WIDTH) -> str:
    """The last `width` points as block characters, scaled from 0 (or the minimum, if
    negative) to the maximum; a missing point is a space."""
    if len(values) > width:
        values = values[-width:]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(values)
    low, high = min(0.0, *finite), max(finite)
    span = high - low
    out = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(" ")
        elif span <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int((value - low) / span * (len(BARS) - 1) + 0.5))])
    return "".join(out)


def human(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "ratio":
        return f"{value * 100:.2f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        size = value
        for suffix in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or suffix == "GiB":
                return f"{size:.0f} {suffix}" if suffix == "B" else f"{size:.1f} {suffix}"
            size /= 1024
    if unit == "connections":
        return f"{value:.0f}"
    return f"{value:.1f}/s" if value < 100 else f"{value:.0f}/s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def frame(document: dict[str, Any], *, width: int = WIDTH, height: int = HEIGHT) -> Any:
    """One screen from a snapshot document (Snapshot.to_dict()): the same data --json
    prints, drawn in at most `width` x `height`."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from atendeai_ctl.observe.snapshot import FIGURES

    at = datetime.fromtimestamp(document["at"]).strftime("%H:%M:%S")
    title = f"atendeai top · {document['project']} · {document['source']} · {at}"
    parts: list[Any] = [Text(_clip(title, width), style="bold")]
    services = Table.grid(padding=(0, 2))
    per_row, most = 3, 9
    # Trouble first: with more services than cells, the healthy ones are the ones folded.
    listed = sorted(document["services"], key=lambda s: s["ok"])
    cells = [
        f"{'[green]✔[/]' if s['ok'] else '[red]✘[/]'} {escape(_clip(s['name'], 14))} "
        f"{escape(_condition(s))}"
        for s in listed
    ]
    if len(cells) > most:
        cells = [*cells[: most - 1], f"… {len(cells) - most + 1} more"]
    rows = [cells[i : i + per_row] for i in range(0, len(cells), per_row)]
    for row in rows:
        services.add_row(*row)
    if rows:
        parts.append(services)
    metrics = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    metrics.add_column("figure", width=14, no_wrap=True)
    metrics.add_column("now", width=10, justify="right", no_wrap=True)
    minutes = "last 5 min" if document["source"] == "prometheus" else "since started"
    metrics.add_column(minutes, width=SPARK_WIDTH, no_wrap=True)
    for figure in FIGURES:
        entry = document["metrics"][figure.key]
        spark = sparkline([v for _, v in entry["history"]])
        metrics.add_row(figure.label, human(entry["value"], figure.unit), f"[cyan]{spark}[/]")
    parts.append(metrics)
    totals = document["totals"]
    logins = ", ".join(f"{k} {_n(v)}" for k, v in totals["logins"].items() if v) or "none"
    for line in (
        f"since start: {_n(totals['requests'])} requests, {_n(totals['errors_5xx'])} 5xx, "
        f"{_n(totals['rate_limited'])} 429",
        f"logins since start: {logins}",
    ):
        parts.append(Text(_clip(line, width), style="dim"))
    used = 1 + len(rows) + 1 + len(FIGURES) + 2 + 1  # title, services, header, rows, totals, keys
    room = max(0, height - used)
    errors = list(document["errors"].items())
    if len(errors) > room:
        errors = errors[: max(0, room - 1)]
        hidden = len(document["errors"]) - len(errors)
        errors.append(("…", f"{hidden} more (atendeai top --once --json shows them all)"))
    for part, message in errors[:room]:
        parts.append(Text(_clip(f"! {part}: {message}", width), style="yellow"))
    keys = f"q quit · every {document.get('interval', 2):g}s · {document['where']}"
    parts.append(Text(_clip(keys, width), style="dim"))
    return Group(*parts)


def _condition(service: dict[str, Any]) -> str:
    if service["state"] != "running":
        return str(service["state"])
    return "running" if service["health"] == "none" else str(service["health"])


def _n(value: float | int | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:g}"


@contextmanager
def keys() -> Iterator[Any]:
    """A reader of single key presses from the terminal (cbreak: no Enter needed, Ctrl-C
    still raises), the terminal's modes restored however the view ends. Without a terminal on
    stdin it only waits."""
    import select

    stdin = sys.stdin
    if not stdin.isatty():
        yield lambda timeout: time.sleep(timeout)
        return
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)

        def wait(timeout: float) -> str:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 32).decode(errors="replace") if ready else ""

        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def top(
    once: Annotated[
        bool, typer.Option("--once", help="Print one snapshot and exit (for scripts).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", "-n", min=0.2, help="Seconds between refreshes.", metavar="S"),
    ] = 2.0,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            metavar="NAME",
            help="prometheus, metrics (the services' /metrics, PostgreSQL and Redis), or auto "
            "(Prometheus when the monitoring profile runs).",
        ),
    ] = "auto",
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    as_json: JsonOption = False,
) -> None:
    """A live view of the stack: health, request rate, errors, p99, logins, 429s, PostgreSQL
    and Redis, with sparklines. `q` or Ctrl-C quits. --json implies --once."""
    from atendeai_ctl.observe.top import open_watch

    cfg = _config(project_dir).with_secrets(generate=True)
    watch = open_watch(cfg, source=source, runtime=runtime)
    try:
        if as_json or once or not sys.stdout.isatty():
            document = watch.first(interval).to_dict()
            if as_json:
                print_json(document)
            else:
                console().print(frame({**document, "interval": interval}, width=WIDTH))
            return
        _live(watch, interval)
    finally:
        watch.close()


def _live(watch: Any, interval: float) -> None:
    from rich.live import Live

    screen = console()
    try:
        with keys() as wait, Live(console=screen, screen=True, auto_refresh=False) as live:
            while True:
                # The first frame comes at once; rates a source computes from two reads
                # show from the second on.
                document = {**watch.snapshot().to_dict(), "interval": interval}
                size = screen.size
                live.update(
                    frame(document, width=min(size.width, 120), height=size.height), refresh=True
                )
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if "q" in wait(left).lower():
                        return
    except KeyboardInterrupt:
        return  # Ctrl-C is how top is often left: the terminal is restored, exit 0


def register(app: typer.Typer) -> None:
    from atendeai_ctl.cli.options import examples

    app.command(
        "top",
        epilog=examples(
            "atendeai top",
            "atendeai top --source metrics --interval 5",
            "atendeai top --once --json | jq .metrics.request_rate.value",
        ),
    )(top)

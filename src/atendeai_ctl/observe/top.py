"""A running view of one project: service health as `atendeai status` asks it, and the
figures of a Source; what `atendeai top` redraws and `top --once --json` prints.

The source is chosen once, like the runtime: `auto` reads Prometheus when the project's
`prometheus` service runs (the monitoring profile), else the services themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from atendeai_ctl.config import Config, connect_host
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.observe.snapshot import ServiceLine, Snapshot
from atendeai_ctl.observe.sources import DirectSource, PrometheusSource, Source

SOURCES = ("auto", "prometheus", "metrics")
PROMETHEUS_SERVICE = "prometheus"
DEFAULT_PROMETHEUS_PORT = "9090"

StatusReader = Callable[[], list[ServiceLine]]


def stack_status(config: Config, runtime: str | None) -> StatusReader:
    """The services' state and health, read afresh on every call (orchestrator.status: the
    engine or the processes, never a cache)."""
    from atendeai_ctl.stack import orchestrator
    from atendeai_ctl.stack.project import load_stack, open_runtime

    spec = load_stack(config)
    engine = open_runtime(config, runtime)

    def read() -> list[ServiceLine]:
        report = orchestrator.status(spec, engine, project=config.project)
        return [ServiceLine(s.name, s.state, s.health, report.healthy(s)) for s in report.services]

    return read


def prometheus_url(config: Config) -> str:
    host = connect_host(config.get("ATENDEAI_BIND") or "127.0.0.1")
    port = config.get("ATENDEAI_PROMETHEUS_PORT") or DEFAULT_PROMETHEUS_PORT
    return f"http://{host}:{port}"


def open_source(config: Config, choice: str, services: list[ServiceLine] | None) -> Source:
    """`services` is the first status read (None if it failed): with `auto`, a running
    `prometheus` service means the monitoring profile is on."""
    _check_choice(choice)
    if choice == "auto":
        running = any(s.name == PROMETHEUS_SERVICE and s.state == "running" for s in services or [])
        choice = "prometheus" if running else "metrics"
    if choice == "prometheus":
        if config.get("ATENDEAI_PROMETHEUS_PORT"):
            config.port("ATENDEAI_PROMETHEUS_PORT")  # a bad value: one line, not a bad URL
        return PrometheusSource(prometheus_url(config))
    host = connect_host(config.get("ATENDEAI_BIND") or "127.0.0.1")
    auth_url = f"http://{host}:{config.port('ATENDEAI_AUTH_PORT')}"
    missing: dict[str, str] = {}
    urls: dict[str, str | None] = {}
    for part, make in (("postgres", config.database_url), ("redis", config.redis_url)):
        try:
            urls[part] = make()
        except AtendeaiError as exc:
            urls[part], missing[part] = None, exc.message
    return DirectSource(auth_url, urls["postgres"], urls["redis"], missing=missing)


def _check_choice(choice: str) -> None:
    if choice not in SOURCES:
        raise AtendeaiError(
            "invalid", f"unknown source {choice!r}", f"use one of: {', '.join(SOURCES)}"
        )


@dataclass
class Watch:
    """One project watched from one source; `snapshot()` reads both afresh."""

    project: str
    source: Source
    status: StatusReader | None
    status_error: str | None = None

    def snapshot(self) -> Snapshot:
        services: list[ServiceLine] = []
        error = self.status_error
        if self.status is not None:
            try:
                services, error = self.status(), None
            except AtendeaiError as exc:
                error = exc.message
        at = time.time()
        reading = self.source.read(at)
        if error:
            reading.errors["services"] = error
        return Snapshot(
            self.project,
            self.source.name,
            self.source.where,
            at,
            self.source.window_seconds,
            services,
            reading,
        )

    def first(self, interval: float) -> Snapshot:
        """A snapshot with rates: a source that needs two reads is read, then again after
        `interval` seconds."""
        if self.source.needs_two_reads:
            self.source.read(time.time())
            time.sleep(interval)
        return self.snapshot()

    def close(self) -> None:
        self.source.close()


def open_watch(config: Config, *, source: str = "auto", runtime: str | None = None) -> Watch:
    """The stack's status reader (if the stack's description loads and a runtime answers)
    and the source, chosen from what runs."""
    _check_choice(source)
    status: StatusReader | None = None
    services: list[ServiceLine] | None = None
    status_error: str | None = None
    try:
        status = stack_status(config, runtime)
        services = status()
    except AtendeaiError as exc:
        status_error = exc.message
    if status_error and source == "auto":
        source = "metrics"
    return Watch(config.project, open_source(config, source, services), status, status_error)

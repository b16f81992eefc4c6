"""What `atendeai top` shows: the catalogue of figures and the snapshot document.

Each figure has a stable key (the JSON key scripts read), a unit and the PromQL that defines
it. With Prometheus that expression is what is asked; without it, sources.DirectSource
computes the same quantity from two scrapes of the services (exposition.py follows
Prometheus's arithmetic), so the numbers mean the same thing whichever source answered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1
WINDOW_SECONDS = 60
WINDOW = f"{WINDOW_SECONDS}s"
"""The range of rate() in the Prometheus queries: four scrapes at Prometheus's default 15 s
interval (the stack's config scrapes every 5 s)."""

REQUESTS = "atendeai_auth_requests_total"
LATENCY = "atendeai_auth_request_duration_seconds"
LOGINS = "atendeai_auth_logins_total"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    promql: str


def _r(expr: str) -> str:
    return f"rate({expr}[{WINDOW}])"


# `or 0 * sum(...)`: 0, not "no data", when the service counts requests but none were 5xx or
# 429 (their series do not exist until the first one); still no data when nothing is scraped.
_ANY = f"sum({_r(REQUESTS)})"
_5XX = _r(REQUESTS + '{status=~"5.."}')
_429 = _r(REQUESTS + '{status="429"}')
_ALL_BUCKETS = _r(LATENCY + "_bucket")
_LOGIN_BUCKETS = _r(LATENCY + '_bucket{route="/auth/login"}')
_XACTS = _r("pg_stat_database_xact_commit"), _r("pg_stat_database_xact_rollback")
FIGURES: tuple[Figure, ...] = (
    Figure("request_rate", "requests/s", "1/s", _ANY),
    Figure("error_ratio", "5xx ratio", "ratio", f"(sum({_5XX}) or 0 * {_ANY}) / {_ANY}"),
    Figure("p99_seconds", "p99", "s", f"histogram_quantile(0.99, sum by (le) ({_ALL_BUCKETS}))"),
    Figure(
        "login_p99_seconds",
        "login p99",
        "s",
        f"histogram_quantile(0.99, sum by (le) ({_LOGIN_BUCKETS}))",
    ),
    Figure("login_rate", "logins/s", "1/s", f"sum({_r(LOGINS)})"),
    Figure("rate_limited_rate", "429/s", "1/s", f"sum({_429}) or 0 * {_ANY}"),
    Figure(
        "postgres_connections", "pg connections", "connections", "sum(pg_stat_database_numbackends)"
    ),
    Figure("postgres_tps", "pg TPS", "1/s", f"sum({_XACTS[0]}) + sum({_XACTS[1]})"),
    Figure("redis_ops_rate", "redis ops/s", "1/s", f"sum({_r('redis_commands_processed_total')})"),
    Figure("redis_memory_bytes", "redis memory", "bytes", "sum(redis_memory_used_bytes)"),
)
KEYS = tuple(figure.key for figure in FIGURES)

TOTALS: dict[str, str] = {
    "requests": f"sum({REQUESTS})",
    "errors_5xx": f'sum({REQUESTS}{{status=~"5.."}}) or 0 * sum({REQUESTS})',
    "rate_limited": f'sum({REQUESTS}{{status="429"}}) or 0 * sum({REQUESTS})',
}
LOGIN_TOTALS = f"sum by (outcome) ({LOGINS})"
"""Counts since each auth process started (what /metrics holds), summed over replicas: a
snapshot taken after a burst still shows it, when the rates have gone back to 0."""

Point = tuple[float, float | None]


@dataclass
class Reading:
    """What a source read at one moment: a value per figure key (None: no data), recent
    history per key, totals, and why a part is missing (source name -> one line)."""

    values: dict[str, float | None] = field(default_factory=dict)
    history: dict[str, list[Point]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceLine:
    name: str
    state: str
    health: str
    ok: bool


@dataclass
class Snapshot:
    project: str
    source: str
    where: str
    at: float
    window_seconds: float
    services: list[ServiceLine]
    reading: Reading

    def to_dict(self) -> dict[str, Any]:
        """The `top --once --json` document (README: "top --json"); keys only ever added."""
        units = {figure.key: figure.unit for figure in FIGURES}
        return {
            "schema": SCHEMA,
            "project": self.project,
            "source": self.source,
            "where": self.where,
            "at": round(self.at, 3),
            "window_seconds": self.window_seconds,
            "services": [
                {"name": s.name, "state": s.state, "health": s.health, "ok": s.ok}
                for s in self.services
            ],
            "metrics": {
                key: {
                    "value": finite(self.reading.values.get(key)),
                    "unit": units[key],
                    "history": [
                        [round(t, 3), finite(v)] for t, v in self.reading.history.get(key, [])
                    ],
                }
                for key in KEYS
            },
            "totals": {
                "requests": count(self.reading.totals.get("requests")),
                "errors_5xx": count(self.reading.totals.get("errors_5xx")),
                "rate_limited": count(self.reading.totals.get("rate_limited")),
                "logins": {
                    k: count(v) for k, v in sorted(self.reading.totals.get("logins", {}).items())
                },
            },
            "errors": dict(sorted(self.reading.errors.items())),
        }


def finite(value: float | None) -> float | None:
    """JSON has no NaN: a quantile of no requests, or a ratio of none, is null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def count(value: float | None) -> int | float | None:
    value = finite(value)
    if value is None:
        return None
    return int(value) if value.is_integer() else value

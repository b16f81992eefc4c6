"""Where `atendeai top` reads its figures: the Source interface and its two implementations.

    PrometheusSource   the monitoring profile's Prometheus: each figure's PromQL, evaluated at
                       one instant (so a script can ask Prometheus the same and compare), and
                       query_range for the sparklines
    DirectSource       no Prometheus: the auth service's /metrics, pg_stat_database over the
                       admin connection and Redis INFO, read on each refresh; rates are the
                       difference between two reads, history is what this process has seen

A failing part (Prometheus down, PostgreSQL refusing) is one line in Reading.errors and
None for its figures; the rest still shows.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.observe import exposition as ex
from atendeai_ctl.observe.prometheus import PrometheusAPI, Series, http_get
from atendeai_ctl.observe.snapshot import (
    FIGURES,
    LATENCY,
    LOGIN_TOTALS,
    LOGINS,
    REQUESTS,
    TOTALS,
    WINDOW_SECONDS,
    Point,
    Reading,
)

HISTORY_S = 300.0
"""How far back the sparklines go."""
HISTORY_POINTS = 60


class Source(Protocol):
    name: str
    """"prometheus" or "metrics" (the JSON document's `source`)."""
    where: str
    """What was read, for the operator: a URL, or the services' addresses."""
    window_seconds: float
    """The span a rate covers (for DirectSource, the time since the previous read)."""
    needs_two_reads: bool
    """Whether rates exist only from the second read on."""

    def read(self, at: float) -> Reading: ...

    def close(self) -> None: ...


def _value(series: list[Series]) -> float | None:
    """An instant answer as one number: None for no series (no data), else their sum."""
    if not series:
        return None
    if len(series) == 1:
        return series[0].points[-1][1]
    return math.fsum(s.points[-1][1] for s in series)


class PrometheusSource:
    name = "prometheus"
    needs_two_reads = False
    window_seconds = float(WINDOW_SECONDS)

    def __init__(self, url: str, *, history_s: float = HISTORY_S) -> None:
        self.api = PrometheusAPI(url)
        self.where = self.api.url
        self.history_s = history_s

    def read(self, at: float) -> Reading:
        """Every query evaluated at `at`: the first alone (if Prometheus does not answer, that
        is one line and one timeout, not 25), then the rest in parallel."""
        reading = Reading(totals={"logins": {}})
        step = max(1.0, round(self.history_s / HISTORY_POINTS))
        jobs: list[tuple[str, str, Callable[[], list[Series]]]] = []
        for figure in FIGURES:
            jobs.append(("value", figure.key, partial(self.api.query, figure.promql, at)))
            jobs.append(
                (
                    "history",
                    figure.key,
                    partial(self.api.query_range, figure.promql, at - self.history_s, at, step),
                )
            )
        for key, expr in TOTALS.items():
            jobs.append(("total", key, partial(self.api.query, expr, at)))
        jobs.append(("total", "logins", partial(self.api.query, LOGIN_TOTALS, at)))
        first, rest = jobs[0][2], jobs[1:]
        try:
            answers: list[list[Series] | AtendeaiError] = [first()]
        except AtendeaiError as exc:
            if exc.code == "unavailable":
                reading.errors["prometheus"] = exc.message
                reading.values = {f.key: None for f in FIGURES}
                return reading
            answers = [exc]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers += list(pool.map(_answer, [call for _, _, call in rest]))
        for (kind, key, _), answer in zip(jobs, answers, strict=True):
            if isinstance(answer, AtendeaiError):
                part = "prometheus" if answer.code == "unavailable" else key
                reading.errors.setdefault(part, answer.message)
                answer = []
            if kind == "value":
                reading.values[key] = _value(answer)
            elif kind == "history":
                reading.history[key] = list(answer[0].points) if answer else []
            elif key == "logins":
                reading.totals["logins"] = {
                    s.labels.get("outcome", ""): s.points[-1][1] for s in answer
                }
            else:
                reading.totals[key] = _value(answer)
        return reading

    def close(self) -> None:
        pass


def _answer(call: Callable[[], list[Series]]) -> list[Series] | AtendeaiError:
    try:
        return call()
    except AtendeaiError as exc:
        return exc


@dataclass
class Raw:
    """One read of the services: what the next read's rates are computed against."""

    at: float
    auth: ex.Scrape | None = None
    pg_backends: float | None = None
    pg_xacts: float | None = None
    redis_commands: float | None = None
    redis_memory: float | None = None


def _per_second(before: float | None, after: float | None, seconds: float) -> float | None:
    """A server-wide counter's rate; a lower value means a restart (counted from 0)."""
    if before is None or after is None or seconds <= 0:
        return None
    return (after - before if after >= before else after) / seconds


class DirectSource:
    """Reads the services themselves. `pg_url` / `redis_url` None (no secrets, say) leave
    those figures out with the reason in `missing`."""

    name = "metrics"
    needs_two_reads = True

    def __init__(
        self,
        auth_url: str,
        pg_url: str | None,
        redis_url: str | None,
        *,
        missing: dict[str, str] | None = None,
        history_s: float = HISTORY_S,
    ) -> None:
        self.auth_url = auth_url.rstrip("/")
        self.pg_url, self.redis_url = pg_url, redis_url
        self.missing = dict(missing or {})
        self.history_s = history_s
        self.where = f"{self.auth_url}/metrics, PostgreSQL, Redis"
        self.window_seconds = 0.0
        self.previous: Raw | None = None
        self.points: dict[str, deque[Point]] = {f.key: deque() for f in FIGURES}
        self._pg: Any = None
        self._redis: Any = None

    def read(self, at: float) -> Reading:
        reading = Reading(errors=dict(self.missing))
        raw = Raw(at)
        for part, fetch in (("auth", self._auth), ("postgres", self._postgres),
                            ("redis", self._redis_info)):  # fmt: skip
            try:
                fetch(raw)
            except AtendeaiError as exc:
                reading.errors[part] = exc.message
        before, self.previous = self.previous, raw
        reading.values = self._values(before, raw)
        self.window_seconds = round(raw.at - before.at, 3) if before else 0.0
        reading.totals = self._totals(raw)
        for key, value in reading.values.items():
            points = self.points[key]
            if before is not None:
                points.append((raw.at, value))
            while points and points[0][0] < raw.at - self.history_s:
                points.popleft()
            reading.history[key] = list(points)
        return reading

    def _auth(self, raw: Raw) -> None:
        body = http_get(self.auth_url + "/metrics", what="the auth service")
        # Taken when the answer came: the service counted up to about then.
        raw.auth = ex.parse_exposition(body.decode("utf-8", "replace"), time.time())

    def _postgres(self, raw: Raw) -> None:
        if self.pg_url is None:
            return
        import psycopg

        try:
            if self._pg is None or self._pg.closed:
                self._pg = psycopg.connect(self.pg_url, autocommit=True, connect_timeout=3)
            row = self._pg.execute(
                "SELECT coalesce(sum(numbackends), 0)::float8,"
                " coalesce(sum(xact_commit + xact_rollback), 0)::float8 FROM pg_stat_database"
            ).fetchone()
        except psycopg.Error as exc:
            self._close_pg()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AtendeaiError("unavailable", f"PostgreSQL: {detail}") from exc
        raw.pg_backends, raw.pg_xacts = float(row[0]), float(row[1])

    def _redis_info(self, raw: Raw) -> None:
        if self.redis_url is None:
            return
        import redis

        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    self.redis_url, socket_timeout=3, socket_connect_timeout=3
                )
            info = self._redis.info()
        except redis.RedisError as exc:
            raise AtendeaiError("unavailable", f"Redis: {exc}") from exc
        raw.redis_commands = float(info["total_commands_processed"])
        raw.redis_memory = float(info["used_memory"])

    def _values(self, before: Raw | None, after: Raw) -> dict[str, float | None]:
        values: dict[str, float | None] = {f.key: None for f in FIGURES}
        values["postgres_connections"] = after.pg_backends
        values["redis_memory_bytes"] = after.redis_memory
        if before is None:
            return values
        seconds = after.at - before.at
        values["postgres_tps"] = _per_second(before.pg_xacts, after.pg_xacts, seconds)
        values["redis_ops_rate"] = _per_second(before.redis_commands, after.redis_commands, seconds)
        if before.auth is None or after.auth is None:
            return values
        values.update(auth_rates(before.auth, after.auth))
        return values

    @staticmethod
    def _totals(raw: Raw) -> dict[str, Any]:
        if raw.auth is None:
            return {"logins": {}}
        scrape = raw.auth
        return {
            "requests": scrape.total(REQUESTS),
            "errors_5xx": _or_zero(scrape, scrape.total(REQUESTS, _is_5xx)),
            "rate_limited": _or_zero(scrape, scrape.total(REQUESTS, _is_429)),
            "logins": scrape.by_label(LOGINS, "outcome"),
        }

    def _close_pg(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to save
                self._pg.close()
            self._pg = None

    def close(self) -> None:
        self._close_pg()
        if self._redis is not None:
            self._redis.close()
            self._redis = None


def _is_5xx(labels: dict[str, str] | Any) -> bool:
    status = labels.get("status", "")
    return len(status) == 3 and status.startswith("5")


def _is_429(labels: dict[str, str] | Any) -> bool:
    return bool(labels.get("status") == "429")


def _is_login(labels: dict[str, str] | Any) -> bool:
    return bool(labels.get("route") == "/auth/login")


def _or_zero(scrape: ex.Scrape, value: float | None) -> float | None:
    """0 rather than None while the service counts requests but none of this kind yet (the
    PromQL's `or 0 * sum(...)`)."""
    if value is None and scrape.total(REQUESTS) is not None:
        return 0.0
    return value


def auth_rates(before: ex.Scrape, after: ex.Scrape) -> dict[str, float | None]:
    """The auth figures from two scrapes of /metrics: the same quantities as the figures'
    PromQL (snapshot.FIGURES), over the time between the scrapes instead of [1m]."""
    requests = ex.counter_rate(before, after, REQUESTS)
    errors = ex.counter_rate(before, after, REQUESTS, _is_5xx)
    limited = ex.counter_rate(before, after, REQUESTS, _is_429)
    if requests is not None:
        errors = errors or 0.0
        limited = limited or 0.0
    ratio = None if not requests or errors is None else errors / requests
    return {
        "request_rate": requests,
        "error_ratio": ratio,
        "p99_seconds": _quantile(ex.bucket_increase(before, after, LATENCY)),
        "login_p99_seconds": _quantile(ex.bucket_increase(before, after, LATENCY, _is_login)),
        "login_rate": ex.counter_rate(before, after, LOGINS),
        "rate_limited_rate": limited,
    }


def _quantile(counts: dict[float, float]) -> float | None:
    value = ex.histogram_quantile(0.99, counts)
    return None if math.isnan(value) else value

"""The auth service's Prometheus metrics, summed across uvicorn workers by prometheus_client.

`atendeai auth serve` gives every run a private, empty PROMETHEUS_MULTIPROC_DIR before any
worker starts (`multiprocess_dir`), and removes it when the run ends. Each worker writes its
values to memory-mapped files there, and /metrics, in whichever worker answers, reads them all
(prometheus_client's MultiProcessCollector): no Redis, no PostgreSQL, so a scrape still answers
when either is down. Without that variable (the library used in-process, as the tests do), each
Service counts in a registry of its own.

Cost on the hot path: a multiprocess-mode increment takes a lock and writes the mapped file.
A request's counter + histogram observation written straight to the files measured 2.5-7 us
(label lookup, lock, mmap write), 3-9% of the ~75 us of CPU a cached /auth/verify costs; the
per-request budget for metrics is well under 5%. So requests (and 429s, which come at request
rates too) are tallied in plain dicts (one event loop per worker, no locks; 0.35 us) and
folded into prometheus_client every FLUSH_S by a task (~30 us per fold), by the worker
answering a scrape, and at shutdown: another worker's requests show at most FLUSH_S late, far
inside any scrape interval. Rare events (logins, the
bcrypt queue, dependency errors) go to prometheus_client directly; pool gauges are sampled
at each fold.

Gauges are `livesum` (the sum over live workers). A worker that stops marks itself dead; one
that died without stopping is marked dead by the next scrape (its pid is gone), so its gauges
stop counting while its counters keep adding up.
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
FLUSH_S = 1.0
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BCRYPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES = ("success", "failure", "rate_limited")
LIMITERS = ("requests_per_ip", "failed_logins_per_account", "failed_logins_per_ip")
_ORPHAN = re.compile(r"^atendeai-metrics-(\d+)-")
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live(?:sum|all|max|min|mostrecent)_(\d+)\.db$")


@contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """A fresh private directory for one serve run, in the environment before workers start.

    Workers inherit it (uvicorn spawns them; they import prometheus_client afresh). This
    process imported it already, and prometheus_client picks its value class (in memory or
    in the files) at import, so the choice is made again here, for `--workers 1`, which
    serves in this process. A directory left by an earlier run is never reused (its counters
    would add to this run's); this one is removed at the end.
    """
    _remove_orphans()
    path = Path(tempfile.mkdtemp(prefix=f"atendeai-metrics-{os.getpid()}-"))
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    values.ValueClass = values.get_value_class()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        values.ValueClass = values.get_value_class()


def _remove_orphans() -> None:
    """Remove the directories of earlier runs that were killed before they could."""
    root = Path(tempfile.gettempdir())
    for path in root.glob("atendeai-metrics-*-*"):
        found = _ORPHAN.match(path.name)
        try:
            mine = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if found and mine and not _alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """One worker's metrics: cheap counting on the hot path, exposition for /metrics."""

    def __init__(self) -> None:
        self.directory = os.environ.get(ENV) or None
        if self.directory is not None and not values.ValueClass._multiprocess:
            raise RuntimeError(
                f"{ENV} was set after prometheus_client was imported: metrics would not be shared"
            )
        # In multiprocess mode values live in the files; the registry is only for one process.
        registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.requests = Counter(
            "atendeai_auth_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "atendeai_auth_request_duration_seconds",
            "Request latency by route.",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.logins = Counter(
            "atendeai_auth_logins",
            "Login attempts by outcome (success, failure, rate_limited).",
            ["outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "atendeai_auth_rate_limited",
            "Requests refused by a rate limiter.",
            ["limiter"],
            registry=registry,
        )
        self.bcrypt_queue = Gauge(
            "atendeai_auth_bcrypt_queue_depth",
            "Logins waiting for a bcrypt thread.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.bcrypt_wait = Histogram(
            "atendeai_auth_bcrypt_wait_seconds",
            "Time a login waited for a bcrypt thread.",
            buckets=BCRYPT_BUCKETS,
            registry=registry,
        )
        pool_gauges = {
            "in_use": "Database connections lent out, by pool.",
            "waiting": "Requests waiting for a database connection, by pool.",
            "size": "The most connections the pool may hold, by pool.",
        }
        self.pool = {
            key: Gauge(
                f"atendeai_auth_db_pool_{key}",
                text,
                ["pool"],
                registry=registry,
                multiprocess_mode="livesum",
            )
            for key, text in pool_gauges.items()
        }
        self.redis_errors = Counter(
            "atendeai_auth_redis_errors",
            "Redis calls that failed (connection, timeout, error).",
            registry=registry,
        )
        self.db_errors = Counter(
            "atendeai_auth_db_errors",
            "PostgreSQL calls that failed (connection, pool timeout).",
            registry=registry,
        )
        # Known label values start at 0, so their series exist (and rate() works) from the
        # first scrape, not from the first event.
        for outcome in OUTCOMES:
            self.logins.labels(outcome)
        for limiter in LIMITERS:
            self.rate_limited.labels(limiter)
        # Hot-path tallies, folded into the metrics above by flush().
        self._requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, list[float]] = {}
        self._limited: defaultdict[str, int] = defaultdict(int)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request (called for every request: dict work only)."""
        self._requests[(route, status)] += 1
        row = self._latency.get(route)
        if row is None:
            row = self._latency[route] = [0.0] * (len(BUCKETS) + 2)
        # bucket i counts observations <= BUCKETS[i], as prometheus_client's observe() does;
        # the last slot holds the sum.
        row[bisect.bisect_left(BUCKETS, seconds)] += 1
        row[-1] += seconds

    def limited(self, limiter: str) -> None:
        self._limited[limiter] += 1

    def login(self, outcome: str) -> None:
        self.logins.labels(outcome).inc()

    def set_pool(self, pool: str, *, in_use: int, waiting: int, size: int) -> None:
        self.pool["in_use"].labels(pool).set(in_use)
        self.pool["waiting"].labels(pool).set(waiting)
        self.pool["size"].labels(pool).set(size)

    def flush(self) -> None:
        """Fold the hot-path tallies into prometheus_client (and so into the shared files)."""
        requests, self._requests = self._requests, defaultdict(int)
        latency, self._latency = self._latency, {}
        limited, self._limited = self._limited, defaultdict(int)
        for (route, status), count in requests.items():
            self.requests.labels(route, str(status)).inc(count)
        for route, row in latency.items():
            child = self.duration.labels(route)
            # prometheus_client's Histogram adds one observation at a time; a batch goes to
            # its per-bucket values (non-cumulative, as observe() keeps them) and its sum.
            for bucket, observed in zip(child._buckets, row[:-1], strict=True):
                if observed:
                    bucket.inc(observed)
            child._sum.inc(row[-1])
        for limiter, count in limited.items():
            self.rate_limited.labels(limiter).inc(count)

    def render(self) -> bytes:
        """The exposition text of every worker of this run (or of this Service alone)."""
        self.flush()
        if self.directory is None:
            return generate_latest(self.registry)
        self.reap()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry)

    def reap(self) -> None:
        """Mark workers that died without stopping as dead, so their gauges stop counting."""
        assert self.directory is not None
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            found = _LIVE_GAUGE_FILE.match(name)
            if found and not _alive(int(found.group(1))):
                multiprocess.mark_process_dead(int(found.group(1)), self.directory)

    def stop(self) -> None:
        """Fold the last tallies and take this worker's gauges out of the sum."""
        self.flush()
        if self.directory is not None:
            multiprocess.mark_process_dead(os.getpid(), self.directory)

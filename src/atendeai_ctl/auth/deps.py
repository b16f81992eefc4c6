"""When PostgreSQL or Redis is gone, answer 503 at once, and notice by itself when it is back.

Two mechanisms, both per worker process:

- `Dependency` is a breaker. The first failed call marks the dependency down; from then on
  the request paths that need it answer 503 without trying (no connect, no pool wait), and a
  background probe asks the dependency every PROBE_INTERVAL_S, on a connection of its own,
  until it answers; then the dependency is up again. Nobody restarts the service.
- `Leases` puts a deadline on every pooled PostgreSQL connection a request borrows. A server
  that is stopped (SIGSTOP, a frozen VM) or whose packets are dropped leaves a query waiting
  forever: the kernel still accepts the bytes, so TCP keepalives and `tcp_user_timeout` do not
  fire, and a psycopg query cannot be timed out from its own thread. When a lease passes its
  deadline, its socket is shut down from outside (shutdown(2), not close: the descriptor stays
  the connection's), the waiting query fails at once with OperationalError, and the pool
  discards that connection.

Pool acquisition (psycopg_pool's `timeout`) and Redis socket timeouts bound the rest, so
every request that needs a missing dependency is answered within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from atendeai_ctl.auth.log import JsonLog

PROBE_INTERVAL_S = 0.2
"""How often a dependency marked down is asked again: recovery is noticed this fast."""
REBUILD_AFTER_S = 1.0
"""An outage longer than this rebuilds the PostgreSQL pools on recovery: psycopg_pool retries
failed connections with an exponential backoff (1 s, 2 s, 4 s ...), so after a longer outage
the old pools could take that long again to refill."""


class Dependency:
    """One backing service's state as this worker last saw it (see the module doc)."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[object]],
        *,
        timeout: float,
        log: JsonLog,
        on_recovered: Callable[[float], Awaitable[None]] | None = None,
        interval: float = PROBE_INTERVAL_S,
    ) -> None:
        self.name = name
        self.probe = probe
        self.timeout = timeout
        self.log = log
        self.on_recovered = on_recovered
        self.interval = interval
        self.down_since: float | None = None
        self.outages = 0
        self._watch: asyncio.Task[None] | None = None
        self._recovering: asyncio.Lock | None = None  # made on the loop, when first needed

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: BaseException | None = None) -> None:
        """Mark it down (once) and start probing it. Call on the event loop."""
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.outages += 1
        self.log.warning(
            "dependency_down", dependency=self.name, error=type(error).__name__ if error else ""
        )
        # Readiness may have ended the last outage (check_now) while its probe still
        # sleeps: that one sees this outage too, so it is not doubled.
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._until_back())

    async def check(self, work: Callable[[], Awaitable[object]] | None = None) -> bool:
        """Run `work` (default: the probe) within the timeout; a failure marks it down.
        True when it answered; False at once while it is down."""
        if self.down:
            return False
        try:
            await asyncio.wait_for((work or self.probe)(), self.timeout)
        except Exception as exc:
            self.failed(exc)
            return False
        return True

    async def check_now(self, work: Callable[[], Awaitable[object]] | None = None) -> bool:
        """For readiness: like `check`, but a dependency marked down is probed now rather than
        answered False until the background probe's next turn. Readiness is asked what the
        server is like now: `up` judged a stack healthy on the worker that answered its probe,
        while `status` right after met the other worker, still marked down from a probe made
        during the outage, and said unhealthy (a CI flake in test_local_runtime)."""
        if self.down:
            try:
                await asyncio.wait_for(self.probe(), self.timeout)
            except Exception:
                return False
            await asyncio.shield(self._recover())
        return await self.check(work)

    async def _until_back(self) -> None:
        while self.down:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.wait_for(self.probe(), self.timeout)
            except Exception:
                continue
            await self._recover()

    async def _recover(self) -> None:
        """Once per outage, whoever saw the probe answer first (the background probe or a
        readiness check): the recovery hook, then up again."""
        if self._recovering is None:
            self._recovering = asyncio.Lock()
        async with self._recovering:
            if self.down_since is None:
                return
            outage = time.monotonic() - self.down_since
            if self.on_recovered is not None:
                try:
                    await self.on_recovered(outage)
                except Exception as exc:
                    self.log.error(
                        "dependency_recovery_failed", dependency=self.name, error=str(exc)
                    )
            self.down_since = None
            self.log.info("dependency_up", dependency=self.name, outage_ms=round(outage * 1000))

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


def _sever(conn: Connection[Any] | AsyncConnection[Any]) -> None:
    """Shut the connection's socket down, so whatever waits on it wakes with an error."""
    try:
        fd = conn.pgconn.socket
    except Exception:  # already closed or broken: nothing waits on it
        return
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class Leases:
    """Pooled connections out on loan, each with the time it was lent (see the module doc).

    The lock makes "sever" and "give back" exclusive: a connection is never shut down after
    its borrower returned it (its descriptor could by then belong to another socket)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.severed = 0
        self._out: dict[int, tuple[Connection[Any] | AsyncConnection[Any], float]] = {}
        self._lock = threading.Lock()

    def lend(self, conn: Connection[Any] | AsyncConnection[Any]) -> None:
        self._out[id(conn)] = (conn, time.monotonic())

    def back(self, conn: Connection[Any] | AsyncConnection[Any]) -> None:
        with self._lock:
            self._out.pop(id(conn), None)

    def expire(self) -> int:
        """Sever every loan older than the limit; how many were."""
        deadline = time.monotonic() - self.limit
        count = 0
        for key, (conn, since) in list(self._out.items()):
            if since > deadline:
                continue
            with self._lock:
                if self._out.pop(key, None) is None:
                    continue
                _sever(conn)
            count += 1
        self.severed += count
        return count

    async def run(self) -> None:
        """Check the loans every tenth of the limit (at most every 0.1 s) until cancelled."""
        while True:
            await asyncio.sleep(min(0.1, self.limit / 10))
            self.expire()


class LeasedPool(ConnectionPool):
    """A psycopg_pool ConnectionPool whose loans carry a deadline (Leases), and that lends
    nothing while its server is marked down: PoolTimeout at once, which callers already
    answer with 503."""

    def __init__(self, *args: Any, leases: Leases, health: Dependency, **kwargs: Any) -> None:
        self.leases = leases
        self.health = health
        super().__init__(*args, **kwargs)

    def getconn(self, timeout: float | None = None) -> Connection[Any]:
        if self.health.down:
            raise PoolTimeout(f"{self.health.name} is down")
        conn = super().getconn(timeout)
        self.leases.lend(conn)
        return conn

    def putconn(self, conn: Connection[Any]) -> None:
        self.leases.back(conn)
        super().putconn(conn)


class LeasedAsyncPool(AsyncConnectionPool):
    """The same for the event loop's pool (refresh, readiness)."""

    def __init__(self, *args: Any, leases: Leases, health: Dependency, **kwargs: Any) -> None:
        self.leases = leases
        self.health = health
        super().__init__(*args, **kwargs)

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        if self.health.down:
            raise PoolTimeout(f"{self.health.name} is down")
        conn = await super().getconn(timeout)
        self.leases.lend(conn)
        return conn

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        self.leases.back(conn)
        await super().putconn(conn)

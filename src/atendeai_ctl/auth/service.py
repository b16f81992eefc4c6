"""One worker's auth service state: settings, key ring, pools, Redis clients, limiter.

The HTTP layer (http.py) only parses and renders; everything it needs per request (the
request gate, bearer-token checks, thread and bcrypt offloading, denylist writes) is here.
Configuration comes from the environment, so `uvicorn --workers N` children all build the
same service: ATENDEAI_DATABASE_URL (the RLS-bound app role), ATENDEAI_REDIS_URL,
ATENDEAI_JWT_KEYS_DIR or ATENDEAI_JWT_PRIVATE_KEY_FILE, and ATENDEAI_AUTH_* (settings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import psycopg
import redis
import redis.asyncio as aioredis
from anyio import CapacityLimiter
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from starlette.responses import JSONResponse
from starlette.types import Scope

from atendeai_ctl.auth import audit, identity, sessions
from atendeai_ctl.auth._db import clinic_by_slug, run_simple, set_tenant
from atendeai_ctl.auth._resp import PipelinedRedis
from atendeai_ctl.auth.deps import REBUILD_AFTER_S, Dependency, LeasedAsyncPool, LeasedPool, Leases
from atendeai_ctl.auth.forwarding import client_address
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.log import JsonLog
from atendeai_ctl.auth.metrics import FLUSH_S, Metrics
from atendeai_ctl.auth.ratelimit import Decision, RateLimiter
from atendeai_ctl.auth.redis_ha import RedisTarget
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.auth.tokens import Claims, TokenError, Verifier
from atendeai_ctl.errors import AtendeaiError

T = TypeVar("T")
REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)
REDIS_GONE = (redis.ConnectionError, redis.TimeoutError, OSError, asyncio.TimeoutError)
"""The Redis errors that say the server is unreachable, not that it refused a command."""
CONNECT_TIMEOUT_S = 2
"""libpq's connect_timeout for new connections (2 is its minimum); requests never wait
for a connect: they wait at most db_timeout_s for the pool."""
DB_ERRORS = (psycopg.OperationalError, PoolTimeout)


class ApiError(Exception):
    """An error answer: {"error": code, "message"} with a status and optional headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.code, "message": self.message}, self.status, headers=self.headers
        )


UNAUTHORIZED = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def unavailable(what: str) -> ApiError:
    return ApiError(503, "unavailable", f"{what} is unavailable; try again shortly")


class Service:
    """Everything one worker process holds: settings, keys, pools, limiter, metrics."""

    def __init__(
        self,
        *,
        settings: AuthSettings,
        ring: KeyRing,
        database_url: str,
        redis_url: str,
        pool_max: int = 10,
        log: JsonLog | None = None,
        redis_target: RedisTarget | None = None,
    ) -> None:
        self.settings = settings
        self.ring = ring
        self.verifier = Verifier(ring, settings)
        self.client_ip = client_address(settings.trusted_proxies)
        self.database_url = database_url
        self.redis_url = redis_url
        # Where the Redis primary is: this URL, or Sentinel's answer (profile `ha`).
        self.redis_target = redis_target or RedisTarget(url=redis_url)
        self.pool_max = pool_max
        self.log = log or JsonLog()
        self.metrics = Metrics()
        cores = os.cpu_count() or 2
        self.bcrypt_slots = CapacityLimiter(cores)
        self.bcrypt_threads = ThreadPoolExecutor(
            cores, thread_name_prefix="bcrypt", initializer=_yield_cpu
        )
        self.db_slots = CapacityLimiter(pool_max)
        # Refreshes queue here for one of the async pool's connections (see db_turn).
        self.db_turns = asyncio.Semaphore(pool_max)
        self.db_turns_waiting = 0
        self.pool: ConnectionPool | None = None
        self.apool: AsyncConnectionPool | None = None
        self.redis: aioredis.Redis | None = None
        self.fast_redis: PipelinedRedis | None = None
        self.limiter: RateLimiter | None = None
        self.denylist: sessions.Denylist | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Dependencies gone: 503 at once, probed until back (deps.py).
        self.leases = Leases(settings.db_timeout_s)
        self.db_health = Dependency(
            "postgresql",
            self._probe_db,
            timeout=settings.db_timeout_s,
            log=self.log,
            on_recovered=self._db_recovered,
        )
        self.redis_health = Dependency(
            "redis", self._probe_redis, timeout=settings.redis_timeout_s, log=self.log
        )
        self._db_seen = False
        """Whether PostgreSQL has let this worker in yet (see _first_db_check)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Service:
        env = os.environ if environ is None else environ
        key_file = env.get("ATENDEAI_JWT_PRIVATE_KEY_FILE")
        keys_dir = env.get("ATENDEAI_JWT_KEYS_DIR")
        if key_file:
            ring = KeyRing(private_key_file=Path(key_file))
        elif keys_dir:
            ring = KeyRing(directory=Path(keys_dir))
        else:
            raise AtendeaiError(
                "invalid", "set ATENDEAI_JWT_KEYS_DIR or ATENDEAI_JWT_PRIVATE_KEY_FILE"
            )
        for key in ("ATENDEAI_DATABASE_URL", "ATENDEAI_REDIS_URL"):
            if not env.get(key):
                raise AtendeaiError("invalid", f"{key} is not set")
        return cls(
            settings=AuthSettings.from_env(env),
            ring=ring,
            database_url=env["ATENDEAI_DATABASE_URL"],
            redis_url=env["ATENDEAI_REDIS_URL"],
            redis_target=RedisTarget.from_env(env),
            pool_max=int(env.get("ATENDEAI_AUTH_DB_POOL_MAX") or 10),
            log=JsonLog(
                env.get("ATENDEAI_AUTH_LOG_LEVEL", "info"),
                access=env.get("ATENDEAI_AUTH_ACCESS_LOG", "1") != "0",
            ),
        )

    async def _open_db_pools(self) -> None:
        """Both PostgreSQL pools, opened without waiting. A borrower waits at most
        db_timeout_s for a connection and keeps it at most that long (self.leases)."""
        wait = self.settings.db_timeout_s
        self.pool = LeasedPool(
            self.database_url,
            min_size=1,
            max_size=self.pool_max,
            timeout=wait,
            open=False,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            name="atendeai-auth",
            leases=self.leases,
            health=self.db_health,
        )
        self.pool.open(wait=False)
        self.apool = LeasedAsyncPool(
            self.database_url,
            min_size=self.pool_max,
            max_size=self.pool_max,
            timeout=wait,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            name="atendeai-auth-async",
            leases=self.leases,
            health=self.db_health,
        )
        await self.apool.open(wait=False)

    async def start(self) -> None:
        await self._open_db_pools()
        self._spawn(self._first_db_check())
        self._spawn(self.leases.run())
        target = self.redis_target
        rt = self.settings.redis_timeout_s
        self.redis = target.async_client(
            max_connections=128, pool_timeout=rt, socket_timeout=rt, connect_timeout=rt
        )
        self.fast_redis = PipelinedRedis(target.url, resolver=target.resolver(), timeout=rt)
        self.limiter = RateLimiter(self.fast_redis, self.settings.rate)
        wait_replicas, wait_ms = target.denylist_wait()
        # A revocation's WAIT may take up to wait_ms before the reply starts.
        sync_client = target.sync_client(socket_timeout=rt + wait_ms / 1000, connect_timeout=rt)
        self.denylist = sessions.Denylist(
            sync_client, wait_replicas=wait_replicas, wait_timeout_ms=wait_ms
        )
        self._spawn(self._fold_metrics())
        # Long-lived objects built so far (modules, keys, pools) leave the GC's view, and
        # fewer young-generation passes run: shorter pauses on the request path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        self.log.info("started", pid=os.getpid(), signing_kid=self.ring.signing_kid)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.db_health.stop()
        self.redis_health.stop()
        self.metrics.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.fast_redis is not None:
            await self.fast_redis.aclose()
        if self.denylist is not None:
            self.denylist.client.close()
        if self.apool is not None:
            await self.apool.close()
        if self.pool is not None:
            await anyio.to_thread.run_sync(self.pool.close)
        self.bcrypt_threads.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fold_metrics(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.refresh_metrics()

    def refresh_metrics(self) -> None:
        """Sample the pool gauges and fold the hot-path tallies into the shared metrics.

        Each pool's waiting count includes the requests queued in front of it (the sync
        pool's for a thread slot, db_slots; the async pool's for a turn, db_turns): they wait
        for a connection just the same.
        """
        for name, pool, queued in (
            ("sync", self.pool, self.db_slots.statistics().tasks_waiting),
            ("async", self.apool, self.db_turns_waiting),
        ):
            if pool is not None:
                stats = pool.get_stats()
                self.metrics.set_pool(
                    name,
                    in_use=stats["pool_size"] - stats["pool_available"],
                    waiting=stats.get("requests_waiting", 0) + queued,
                    size=stats["pool_max"],
                )
        self.metrics.flush()

    def redis_down(self) -> ApiError:
        """Count a failed Redis call; the 503 to raise for it. Called in an `except`: when
        what failed was the connection (not a refused command, nor a revocation a replica did
        not confirm), Redis is marked down: 503 at once until it answers again (deps.py)."""
        self.metrics.redis_errors.inc()
        error = sys.exc_info()[1]
        if isinstance(error, REDIS_GONE):
            self.redis_health.failed(error)
        return unavailable("Redis")

    def db_down(self) -> ApiError:
        """Count a failed PostgreSQL call; the 503 to raise for it. PostgreSQL is marked
        down as well (every DB_ERRORS is about the connection): 503 at once until it
        answers again."""
        self.metrics.db_errors.inc()
        error = sys.exc_info()[1]
        if isinstance(error, DB_ERRORS):
            self.db_health.failed(error)
        return unavailable("the database")

    async def _probe_db(self) -> None:
        """A connection of its own: the pools lend nothing while PostgreSQL is down."""
        conn = await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )
        async with conn:
            await run_simple(conn, "SELECT 1")

    async def _probe_redis(self) -> None:
        assert self.redis is not None
        await self.redis.ping()

    async def _first_db_check(self) -> None:
        """One probe as the worker starts. `up` may start auth before the migrate job has
        created its role (orchestrator.starts_early), and the pools then retry on
        psycopg_pool's backoff (1 s, 2 s, 4 s ...): found absent now, PostgreSQL is marked
        down, so the worker notices it within PROBE_INTERVAL_S of its arrival and opens
        fresh pools then."""
        if await self.db_health.check():
            self._db_seen = True

    def _pool_connect_errors(self) -> int:
        """Failed connection attempts of both pools so far (psycopg_pool's own counter)."""
        return sum(
            pool.get_stats().get("connections_errors", 0)
            for pool in (self.pool, self.apool)
            if pool is not None
        )

    async def _db_recovered(self, outage: float) -> None:
        """Fresh pools after a long outage, when PostgreSQL had never let this worker in, or
        when a pool failed to connect since they were made: each failed attempt puts
        psycopg_pool's refill on its backoff (1 s, 2 s, 4 s ...), REBUILD_AFTER_S says more.
        A short outage alone is not enough: the readiness probe that met it had dropped the
        broken connections, the refill failed on the server still down, and the kept pools
        then lent nothing for a second after it was back (503s after `up` said healthy).
        The old pools close in the background, their stuck borrowers' connections with them."""
        seen, self._db_seen = self._db_seen, True
        backing_off = self._pool_connect_errors() > 0  # new pools count from zero
        if outage < REBUILD_AFTER_S and seen and not backing_off:
            # The same pools, without the connections a restart broke (each would otherwise
            # fail one request before the pool noticed).
            await self._drop_broken_connections()
            return
        old = (self.pool, self.apool)
        await self._open_db_pools()
        self._spawn(_close_pools(*old))

    async def _drop_broken_connections(self) -> None:
        """Both pools check their idle connections and discard the broken ones (psycopg_pool
        otherwise finds each only when it lends it, and the borrower fails)."""
        if self.apool is not None:
            await self.apool.check()
        if self.pool is not None:
            await anyio.to_thread.run_sync(self.pool.check)

    async def ready(self) -> list[str]:
        """The dependencies that do not answer now (empty: ready): a SELECT 1 on the async
        pool and a PING on the hot path's Redis connection, at once, each within its timeout;
        one marked down is probed again now (Dependency.check_now)."""

        async def database() -> None:
            pool = self.apool
            assert pool is not None
            try:
                async with pool.connection() as conn:
                    await run_simple(conn, "SELECT 1")
            except psycopg.OperationalError:
                # A restarted server leaves every pooled connection broken, and the pool
                # learns of each only when it is lent: without this, readiness failed once
                # per pooled connection (ten times a worker) after PostgreSQL came back.
                # Ready means the server answers now: drop the broken ones (the sync pool's
                # too, so the request paths meet none) and ask again.
                await self._drop_broken_connections()
                async with pool.connection() as conn:
                    await run_simple(conn, "SELECT 1")

        async def cache() -> None:
            assert self.fast_redis is not None
            await self.fast_redis.call("PING")

        checks = ((self.db_health, database), (self.redis_health, cache))
        answered = await asyncio.gather(*(health.check_now(work) for health, work in checks))
        return [health.name for (health, _), ok in zip(checks, answered, strict=True) if not ok]

    async def db_turn(self) -> None:
        """Wait (at most db_timeout_s, then PoolTimeout, as the pool would) for one of
        pool_max turns; the caller borrows from the async pool only while holding one, and
        gives it back with `db_turns.release()`.

        Under load most refreshes find every connection lent, and psycopg_pool's wait for one
        wraps each in asyncio.wait_for, a Task per request (about a tenth of a refresh's CPU
        in the worker). Queued here instead, on the semaphore's plain future, they reach the
        pool only when a connection is free, and take it without waiting.
        """
        turns = self.db_turns
        if not turns.locked():
            await turns.acquire()  # free: returns without suspending
            return
        self.db_turns_waiting += 1
        try:
            async with asyncio.timeout(self.settings.db_timeout_s):
                await turns.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"no database connection within {self.settings.db_timeout_s:g} s"
            ) from None
        finally:
            self.db_turns_waiting -= 1

    async def in_thread(self, func: Callable[..., T], *args: Any) -> T:
        if self.db_health.down:  # 503 without the thread hop (the pool would refuse anyway)
            raise self.db_down()
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self.db_slots)
        except DB_ERRORS:
            raise self.db_down() from None

    @contextlib.asynccontextmanager
    async def bcrypt_slot(self) -> AsyncIterator[None]:
        """Hold one of the bcrypt slots (one per core), counting the queue and the wait."""
        queued = time.perf_counter()
        self.metrics.bcrypt_queue.inc()
        try:
            await self.bcrypt_slots.acquire()
        finally:
            self.metrics.bcrypt_queue.dec()
        self.metrics.bcrypt_wait.observe(time.perf_counter() - queued)
        try:
            yield
        finally:
            self.bcrypt_slots.release()

    async def bcrypt(self, func: Callable[[], T]) -> T:
        """Run a login (bcrypt plus its two short transactions) on the niced bcrypt threads."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.bcrypt_threads, func)
        except DB_ERRORS:
            raise self.db_down() from None

    async def login_finished(self, clinic: str, email: str, ip: str, *, failed: bool) -> None:
        """Release a login's in-flight reservation and count (or clear) its outcome.

        Runs as its own task, shielded: a request cancelled mid-login (client gone, server
        stopping) still gives its reservation back and still counts as a failure.
        """
        assert self.limiter is not None
        limiter = self.limiter

        async def finish() -> None:
            try:
                await limiter.login_finished(clinic, email, ip, failed=failed)
            except REDIS_ERRORS as exc:
                # The reservation expires on its own (60 s); the failure is lost, which is
                # what Redis being down already means for every limit.
                self.metrics.redis_errors.inc()
                self.log.error("login_finish_failed", error=type(exc).__name__, ip=ip)

        task: asyncio.Task[None] = asyncio.ensure_future(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def gate(self, ip: str, claims: Claims | None = None) -> Decision:
        """The per-IP request limit (and, for a token, its revocation) in one Redis call."""
        assert self.limiter is not None
        if self.redis_health.down:
            raise self.redis_down()
        try:
            decision = await self.limiter.request(ip, claims)
        except REDIS_ERRORS:
            raise self.redis_down() from None
        if not decision.allowed:
            self.blocked(decision, ip)
        return decision

    def blocked(self, decision: Decision, ip: str, *, clinic: str = "", email: str = "") -> None:
        """Count a 429, audit the first one of each window, and raise it."""
        self.metrics.limited(decision.limiter)
        self.log.warning("rate_limited", limiter=decision.limiter, ip=ip)
        if decision.first_block:
            self._spawn(self._audit_block(decision.limiter, ip, clinic, email))
        raise ApiError(429, "rate_limited", "too many requests", decision.headers())

    async def _audit_block(self, limiter: str, ip: str, clinic: str, email: str) -> None:
        def write() -> None:
            assert self.pool is not None
            with self.pool.connection() as conn, conn.transaction():
                found = clinic_by_slug(conn, clinic) if clinic else None
                set_tenant(conn, found[0] if found else None)
                audit.record(
                    conn,
                    action="rate_limited",
                    actor="anonymous",
                    outcome="denied",
                    clinic_id=found[0] if found else None,
                    target=f"email:{identity.normalize(email)}" if email else None,
                    ip=ip,
                    detail={"limiter": limiter},
                )

        try:
            await self.in_thread(write)
        except Exception as exc:
            self.log.error("audit_failed", action="rate_limited", error=type(exc).__name__)

    async def deny_sessions(self, revoked: list[tuple[str, float]]) -> None:
        """Through the denylist's own connection, not the shared pipelined one: with a
        replica the write ends in WAIT, which would hold up every request queued behind it."""
        assert self.denylist is not None
        try:
            await anyio.to_thread.run_sync(self.denylist.deny_sessions, revoked)
        except REDIS_ERRORS:
            raise self.redis_down() from None

    def bearer_claims(self, scope: Scope) -> Claims:
        return self.bearer(scope)[0]

    def bearer(self, scope: Scope) -> tuple[Claims, bytes]:
        """The bearer token's claims, and their signed JSON (the body /auth/verify sends)."""
        token = bearer_token(scope)
        if token is None:
            raise ApiError(401, "invalid_token", "missing bearer token", UNAUTHORIZED)
        try:
            return self.verifier.verify_with_payload(token)
        except TokenError as exc:
            self.log.info("token_refused", reason=exc.reason)
            raise ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED) from None


async def _close_pools(pool: ConnectionPool | None, apool: AsyncConnectionPool | None) -> None:
    with contextlib.suppress(Exception):
        if apool is not None:
            await apool.close(timeout=1.0)
    with contextlib.suppress(Exception):
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close, 1.0)


def _yield_cpu() -> None:
    """bcrypt threads run at nice +10: when logins saturate the cores, the event loop (verify,
    refresh) still gets the CPU first; with idle cores logins lose nothing."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None

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
import threading
from collections.abc import Awaitable, Callable, Mapping
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
from atendeai_ctl.auth._db import clinic_by_slug, set_tenant
from atendeai_ctl.auth._resp import PipelinedRedis
from atendeai_ctl.auth.forwarding import client_address
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.log import JsonLog
from atendeai_ctl.auth.metrics import Metrics
from atendeai_ctl.auth.ratelimit import Decision, RateLimiter
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.auth.tokens import Claims, TokenError, Verifier
from atendeai_ctl.errors import AtendeaiError

T = TypeVar("T")
REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)
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
    ) -> None:
        self.settings = settings
        self.ring = ring
        self.verifier = Verifier(ring, settings)
        self.client_ip = client_address(settings.trusted_proxies)
        self.database_url = database_url
        self.redis_url = redis_url
        self.pool_max = pool_max
        self.log = log or JsonLog()
        self.metrics = Metrics()
        cores = os.cpu_count() or 2
        self.bcrypt_slots = CapacityLimiter(cores)
        self.bcrypt_threads = ThreadPoolExecutor(
            cores, thread_name_prefix="bcrypt", initializer=_yield_cpu
        )
        self.db_slots = CapacityLimiter(pool_max)
        self.pool: ConnectionPool | None = None
        self.apool: AsyncConnectionPool | None = None
        self.redis: aioredis.Redis | None = None
        self.fast_redis: PipelinedRedis | None = None
        self.limiter: RateLimiter | None = None
        self.denylist: sessions.Denylist | None = None
        self._tasks: set[asyncio.Task[None]] = set()

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
            pool_max=int(env.get("ATENDEAI_AUTH_DB_POOL_MAX") or 10),
            log=JsonLog(
                env.get("ATENDEAI_AUTH_LOG_LEVEL", "info"),
                access=env.get("ATENDEAI_AUTH_ACCESS_LOG", "1") != "0",
            ),
        )

    async def start(self) -> None:
        self.pool = ConnectionPool(
            self.database_url,
            min_size=1,
            max_size=self.pool_max,
            timeout=5,
            open=False,
            name="atendeai-auth",
        )
        self.pool.open(wait=False)
        self.apool = AsyncConnectionPool(
            self.database_url,
            min_size=self.pool_max,
            max_size=self.pool_max,
            timeout=5,
            open=False,
            kwargs={"autocommit": True},
            name="atendeai-auth-async",
        )
        await self.apool.open(wait=False)
        pool = aioredis.BlockingConnectionPool.from_url(
            self.redis_url, max_connections=128, timeout=2, socket_timeout=2,
            socket_connect_timeout=1,
        )  # fmt: skip
        self.redis = aioredis.Redis(connection_pool=pool)
        self.fast_redis = PipelinedRedis(self.redis_url)
        self.limiter = RateLimiter(self.fast_redis, self.settings.rate)
        sync_client = redis.Redis.from_url(
            self.redis_url, socket_timeout=2, socket_connect_timeout=1
        )
        self.denylist = sessions.Denylist(sync_client)
        self._spawn(self._flush_metrics())
        # Long-lived objects built so far (modules, keys, pools) leave the GC's view, and
        # fewer young-generation passes run: shorter pauses on the request path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        self.log.info("started", pid=os.getpid(), signing_kid=self.ring.signing_kid)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.metrics.flush(self.redis)
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

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(*REDIS_ERRORS):
                assert self.redis is not None
                await self.metrics.flush(self.redis)

    async def in_thread(self, func: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self.db_slots)
        except DB_ERRORS:
            raise unavailable("the database") from None

    async def bcrypt(self, func: Callable[[], T]) -> T:
        """Run a login (bcrypt plus its two short transactions) on the niced bcrypt threads."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.bcrypt_threads, func)
        except DB_ERRORS:
            raise unavailable("the database") from None

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
                self.log.error("login_finish_failed", error=type(exc).__name__, ip=ip)

        task: asyncio.Task[None] = asyncio.ensure_future(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def gate(self, ip: str, claims: Claims | None = None) -> Decision:
        """The per-IP request limit (and, for a token, its revocation) in one Redis call."""
        assert self.limiter is not None
        try:
            decision = await self.limiter.request(ip, claims)
        except REDIS_ERRORS:
            raise unavailable("Redis") from None
        if not decision.allowed:
            self.blocked(decision, ip)
        return decision

    def blocked(self, decision: Decision, ip: str, *, clinic: str = "", email: str = "") -> None:
        """Count a 429, audit the first one of each window, and raise it."""
        self.metrics.rate_limited[decision.limiter] += 1
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
        assert self.fast_redis is not None
        try:
            await asyncio.gather(
                *(
                    self.fast_redis.call("SET", sessions.DENY_SID + sid, "1", "EX", int(ttl) + 1)
                    for sid, ttl in revoked
                )
            )
        except REDIS_ERRORS:
            raise unavailable("Redis") from None

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

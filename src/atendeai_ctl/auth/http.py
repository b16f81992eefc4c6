"""The HTTP face of the auth library: a thin ASGI app for uvicorn.

Shape: a small raw-ASGI front (`AuthApp`) handles request ids, metrics and access logs for
every request, and answers the two hot routes itself - GET /auth/verify and GET
/health/live - without building Request objects or walking a router. Everything else goes to
a Starlette router. Blocking work (bcrypt, psycopg) runs in worker threads behind capacity
limiters, so a burst of logins never stalls verification on the event loop.

Configuration comes from the environment, so `uvicorn --workers N` children all build the
same service: ATENDEAI_DATABASE_URL (the RLS-bound app role), ATENDEAI_REDIS_URL,
ATENDEAI_JWT_KEYS_DIR or ATENDEAI_JWT_PRIVATE_KEY_FILE, and ATENDEAI_AUTH_* (settings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import re
import threading
import time
import uuid
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
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from atendeai_ctl.auth import audit, sessions
from atendeai_ctl.auth._db import clinic_by_slug, set_tenant
from atendeai_ctl.auth._resp import PipelinedRedis
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.log import REQUEST_ID, JsonLog
from atendeai_ctl.auth.metrics import Metrics
from atendeai_ctl.auth.openapi import DOCUMENT
from atendeai_ctl.auth.ratelimit import Decision, RateLimiter
from atendeai_ctl.auth.refresh import RefreshRefused, refresh_async
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.auth.tokens import Claims, TokenError, Verifier
from atendeai_ctl.errors import AtendeaiError

T = TypeVar("T")
MAX_BODY = 16 * 1024
REQUEST_ID_FORMAT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KNOWN_ROUTES = frozenset(
    {
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/me",
        "/auth/verify",
        "/.well-known/jwks.json",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    }
)
REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)
DB_ERRORS = (psycopg.OperationalError, PoolTimeout)
LIVE_BODY = b'{"status":"ok"}'


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


def _unavailable(what: str) -> ApiError:
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
            raise _unavailable("the database") from None

    async def bcrypt(self, func: Callable[[], T]) -> T:
        """Run a login (bcrypt plus its two short transactions) on the niced bcrypt threads."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.bcrypt_threads, func)
        except DB_ERRORS:
            raise _unavailable("the database") from None

    async def gate(self, ip: str, claims: Claims | None = None) -> Decision:
        """The per-IP request limit (and, for a token, its revocation) in one Redis call."""
        assert self.limiter is not None
        try:
            decision = await self.limiter.request(ip, claims)
        except REDIS_ERRORS:
            raise _unavailable("Redis") from None
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
                    target=f"email:{email.lower()}" if email else None,
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
            raise _unavailable("Redis") from None

    def bearer_claims(self, scope: Scope) -> Claims:
        token = _bearer(scope)
        if token is None:
            raise ApiError(401, "invalid_token", "missing bearer token", UNAUTHORIZED)
        try:
            return self.verifier.verify(token)
        except TokenError as exc:
            self.log.info("token_refused", reason=exc.reason)
            raise ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED) from None


def _yield_cpu() -> None:
    """bcrypt threads run at nice +10: when logins saturate the cores, the event loop (verify,
    refresh) still gets the CPU first; with idle cores logins lose nothing."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "0.0.0.0"


def _json_body_error() -> ApiError:
    return ApiError(400, "invalid_request", "the body must be a JSON object")


async def _json_object(
    request: Request, fields: Mapping[str, int], *, optional: bool = False
) -> dict[str, Any]:
    """The body as a dict of required string fields (name -> max length)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, "too_large", f"the body exceeds {MAX_BODY} bytes")
    if optional and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _json_body_error() from None
    if not isinstance(data, dict):
        raise _json_body_error()
    for name, limit in fields.items():
        value = data.get(name)
        if not isinstance(value, str) or not value or len(value) > limit:
            if optional and value is None:
                continue
            raise ApiError(
                400,
                "invalid_request",
                f"'{name}' must be a non-empty string of at most {limit} characters",
            )
    return data


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def login(request: Request) -> Response:
    service = _service(request)
    ip = _client_ip(request.scope)
    await service.gate(ip)
    body = await _json_object(request, {"clinic": 63, "email": 254, "password": 1024})
    clinic, email, password = body["clinic"], body["email"], body["password"]
    assert service.limiter is not None and service.pool is not None
    call = functools.partial(
        sessions.login,
        service.pool,
        service.ring,
        service.settings,
        clinic=clinic,
        email=email,
        password=password,
        ip=ip,
        user_agent=request.headers.get("user-agent"),
    )
    async with service.bcrypt_slots:
        try:
            attempt = await service.limiter.login_attempt(clinic, email, ip)
        except REDIS_ERRORS:
            raise _unavailable("Redis") from None
        if not attempt.allowed:
            service.metrics.logins["rate_limited"] += 1
            service.blocked(attempt, ip, clinic=clinic, email=email)
        failed = False
        try:
            pair = await service.bcrypt(call)
        except sessions.AuthFailed as exc:
            failed = True
            service.metrics.logins["failure"] += 1
            service.log.info("login_failed", reason=exc.reason, ip=ip)
            raise ApiError(
                401, "invalid_credentials", "invalid clinic, email or password"
            ) from None
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await service.limiter.login_finished(clinic, email, ip, failed=failed)
    service.metrics.logins["success"] += 1
    service.log.info("login", user=pair.claims["sub"], session=pair.claims["sid"], ip=ip)
    return JSONResponse(pair.to_dict(), headers={"Cache-Control": "no-store"})


async def refresh(request: Request) -> Response:
    """Runs on the event loop with an async connection: no thread hop on this busy route."""
    service = _service(request)
    ip = _client_ip(request.scope)
    await service.gate(ip)
    body = await _json_object(request, {"refresh_token": 512})
    assert service.apool is not None
    try:
        async with service.apool.connection() as conn:
            pair = await refresh_async(
                conn, service.ring, service.settings, refresh_token=body["refresh_token"], ip=ip
            )
    except RefreshRefused as exc:
        level = "warning" if exc.reason == "reuse" else "info"
        service.log.emit(level, "refresh_refused", reason=exc.reason, ip=ip)
        if exc.revoked:
            await service.deny_sessions(exc.revoked)
        raise ApiError(401, "invalid_refresh_token", "invalid refresh token") from None
    except DB_ERRORS:
        raise _unavailable("the database") from None
    return JSONResponse(pair.to_dict(), headers={"Cache-Control": "no-store"})


async def _authorized(request: Request) -> tuple[Service, Claims, str]:
    """Count the request, then accept only a valid, unrevoked bearer token."""
    service = _service(request)
    ip = _client_ip(request.scope)
    try:
        claims = service.bearer_claims(request.scope)
    except ApiError:
        await service.gate(ip)
        raise
    decision = await service.gate(ip, claims)
    if decision.revoked:
        raise ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED)
    return service, claims, ip


async def logout(request: Request) -> Response:
    service, claims, ip = await _authorized(request)
    body = await _json_object(request, {"scope": 16}, optional=True)
    scope = body.get("scope", "session")
    if scope not in ("session", "global"):
        raise ApiError(400, "invalid_request", "'scope' must be 'session' or 'global'")

    def run() -> int:
        assert service.pool is not None and service.denylist is not None
        with service.pool.connection() as conn:
            return sessions.logout(
                conn, service.denylist, claims, everywhere=scope == "global", ip=ip
            )

    try:
        count = await service.in_thread(run)
    except REDIS_ERRORS:
        raise _unavailable("Redis") from None
    service.log.info("logout", user=claims["sub"], scope=scope, sessions=count)
    return Response(status_code=204)


async def me(request: Request) -> Response:
    service, claims, _ = await _authorized(request)

    def run() -> tuple[Any, ...] | None:
        assert service.pool is not None
        with service.pool.connection() as conn, conn.transaction():
            set_tenant(conn, claims["clinic_id"])
            return conn.execute(
                "SELECT u.id, u.email, u.name, u.role, c.id, c.slug, c.name"
                " FROM atendeai.users u JOIN atendeai.clinics c ON c.id = u.clinic_id"
                " WHERE u.id = %s AND u.status = 'active' AND c.status = 'active'",
                (claims["sub"],),
            ).fetchone()

    row = await service.in_thread(run)
    if row is None:
        raise ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED)
    return JSONResponse(
        {
            "user": {"id": str(row[0]), "email": row[1], "name": row[2], "role": row[3]},
            "clinic": {"id": str(row[4]), "slug": row[5], "name": row[6]},
        }
    )


async def jwks(request: Request) -> Response:
    return JSONResponse(
        _service(request).ring.jwks(), headers={"Cache-Control": "public, max-age=60"}
    )


async def ready(request: Request) -> Response:
    service = _service(request)
    down = []

    def ping_db() -> None:
        assert service.pool is not None
        with service.pool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")

    try:
        await asyncio.wait_for(service.in_thread(ping_db), 3)
    except Exception:
        down.append("postgresql")
    try:
        assert service.fast_redis is not None
        await asyncio.wait_for(service.fast_redis.call("PING"), 2)
    except Exception:
        down.append("redis")
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, 503)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    service = _service(request)
    try:
        text = await service.metrics.render(service.redis)
    except REDIS_ERRORS:
        text = await service.metrics.render(None)
    return Response(text, media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    return JSONResponse(
        {"error": code, "message": str(exc.detail)}, exc.status_code, headers=exc.headers
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def _router(service: Service) -> Starlette:
    routes = [
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/refresh", refresh, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/auth/me", me, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, ApiError: _api_error},
    )
    app.state.service = service
    return app


class AuthApp:
    """The ASGI entry point: lifespan, request id, metrics, access log, hot-path routes."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.router = _router(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        path: str = scope["path"]
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if REQUEST_ID_FORMAT.match(candidate) else ""
                break
        request_id = request_id or uuid.uuid4().hex
        REQUEST_ID.set(request_id)
        rid_header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            if path == "/auth/verify" and scope["method"] == "GET":
                await self._verify(scope, send_with_id)
            elif path == "/health/live" and scope["method"] == "GET":
                await _send(send_with_id, 200, LIVE_BODY)
            else:
                await self.router(scope, receive, send_with_id)
        except Exception as exc:
            self.service.log.error("unhandled", path=path, error=type(exc).__name__)
            if status == 500:
                body = b'{"error":"internal_error","message":"internal error"}'
                await _send(send_with_id, 500, body)
        finally:
            elapsed = time.perf_counter() - started
            route = path if path in KNOWN_ROUTES else "other"
            self.service.metrics.observe(route, status, elapsed)
            if self.service.log.access:
                self.service.log.info(
                    "request",
                    method=scope["method"],
                    route=route,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )

    async def _verify(self, scope: Scope, send: Send) -> None:
        service = self.service
        ip = _client_ip(scope)
        claims: Claims | None = None
        refused: ApiError | None = None
        try:
            claims = service.bearer_claims(scope)
        except ApiError as exc:
            refused = exc
        try:
            decision = await service.gate(ip, claims)
        except ApiError as exc:
            await _send_error(send, exc)
            return
        if claims is None:
            assert refused is not None
            await _send_error(send, refused, decision.headers())
            return
        if decision.revoked:
            revoked = ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED)
            await _send_error(send, revoked, decision.headers())
            return
        await _send(send, 200, json.dumps(claims).encode(), decision.headers())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.service.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, exc: ApiError, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps({"error": exc.code, "message": exc.message}).encode()
    await _send(send, exc.status, body, {**(headers or {}), **exc.headers})


def create_app(service: Service | None = None) -> AuthApp:
    """The uvicorn factory (`--factory`): each worker builds its service from the environment."""
    return AuthApp(service or Service.from_env())

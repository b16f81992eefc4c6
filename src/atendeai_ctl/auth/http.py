"""The HTTP face of the auth library: a thin ASGI app for uvicorn.

Shape: a small raw-ASGI front (`AuthApp`) handles request ids, metrics and access logs for
every request, and answers the hot routes itself - GET /auth/verify, POST /auth/refresh,
GET /health/live and GET /health/ready - without building Request objects or walking a
router: each returns (status, body, pre-encoded headers) and the front sends it. Everything
else goes to a Starlette router. Blocking work (bcrypt, sync psycopg) runs in worker threads
behind capacity limiters, so a burst of logins never stalls verification on the event loop.
Per-worker state and the shared request steps live in service.py.

Hostile input is stopped here, before PostgreSQL or Redis sees it (docs/security.md): bodies
over MAX_BODY get 413 (from Content-Length before reading, or while reading), JSON nested
deeper than MAX_DEPTH gets 400 before json.loads runs, and only the fields a route uses are
checked - strings of bounded length with no NUL and no lone surrogate - so the hot routes pay
for one regex search per field. An unexpected exception is logged once with the request id
and answered with one 500, and never with a second response on the same connection.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import secrets
import time
import traceback
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from atendeai_ctl.auth import identity, sessions
from atendeai_ctl.auth._db import set_tenant
from atendeai_ctl.auth.log import REQUEST_ID
from atendeai_ctl.auth.metrics import CONTENT_TYPE
from atendeai_ctl.auth.openapi import DOCUMENT
from atendeai_ctl.auth.refresh import RefreshRefused, refresh_async
from atendeai_ctl.auth.service import (
    DB_ERRORS,
    REDIS_ERRORS,
    UNAUTHORIZED,
    ApiError,
    Service,
)
from atendeai_ctl.auth.tokens import Claims

MAX_BODY = 16 * 1024
"""The largest legitimate body (a login at its field limits) is about 1.4 KiB; 16 KiB leaves
room and stays well under the 64 KiB ceiling docs/security.md sets."""
MAX_DEPTH = 32
LOGIN_FIELDS = {"clinic": 63, "email": 254, "password": 1024}
REFRESH_FIELDS = {"refresh_token": 512}
LOGOUT_FIELDS = {"scope": 16}
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
LIVE_BODY = b'{"status":"ok"}'
JSON_TYPE = (b"content-type", b"application/json")
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
"""A hot route's answer: status, body, headers (content-length and x-request-id are added)."""
LIVE_ANSWER: Answer = (200, LIVE_BODY, [JSON_TYPE])
READY_BODY = LIVE_BODY
REFRESH_HEADERS = [JSON_TYPE, (b"cache-control", b"no-store")]
REVOKED = ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED)


def _json_body_error() -> ApiError:
    return ApiError(400, "invalid_request", "the body must be a JSON object")


def _compact(document: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it (no spaces), for the raw-front routes."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _too_large() -> ApiError:
    return ApiError(413, "too_large", f"the body exceeds {MAX_BODY} bytes")


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed MAX_BODY."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit() or int(value) > MAX_BODY:
                raise _too_large()
            break
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_JSON_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(body: bytes) -> bool:
    """Nesting beyond MAX_DEPTH, found without recursion (json.loads would recurse).

    Bodies with few brackets, every legitimate one, are passed by two C-speed counts.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for byte in _JSON_STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS):
        if byte in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _parse_object(body: bytes, fields: Mapping[str, int], *, optional: bool = False) -> Any:
    """The body as a dict whose `fields` (name -> max length) are safe strings.

    Required unless optional. Other keys are ignored and never checked: they reach nothing.
    """
    if optional and not body.strip():
        return {}
    if _too_deep(body):
        raise ApiError(400, "invalid_request", f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _json_body_error() from None
    if not isinstance(data, dict):
        raise _json_body_error()
    for name, limit in fields.items():
        value = data.get(name)
        if optional and value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > limit or identity.unsafe(value):
            raise ApiError(
                400,
                "invalid_request",
                f"'{name}' must be a non-empty string of at most {limit} characters,"
                " without NUL or unpaired surrogates",
            )
    return data


async def _json_object(
    request: Request, fields: Mapping[str, int], *, optional: bool = False
) -> dict[str, Any]:
    parsed: dict[str, Any] = _parse_object(
        await _read_body(request.scope, request.receive), fields, optional=optional
    )
    return parsed


def _user_agent(request: Request) -> str | None:
    agent = request.headers.get("user-agent")
    return None if agent is None or "\x00" in agent else agent[:400]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def login(request: Request) -> Response:
    """Admit, check, count. Anything but a verified success counts as a failed attempt."""
    service = _service(request)
    ip = service.client_ip(request.scope)
    await service.gate(ip)
    body = await _json_object(request, LOGIN_FIELDS)
    clinic, email = identity.normalize(body["clinic"]), identity.normalize(body["email"])
    password = body["password"]
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
        user_agent=_user_agent(request),
    )
    async with service.bcrypt_slot():
        try:
            attempt = await service.limiter.login_attempt(clinic, email, ip)
        except REDIS_ERRORS:
            raise service.redis_down() from None
        if not attempt.allowed:
            service.metrics.login("rate_limited")
            service.blocked(attempt, ip, clinic=clinic, email=email)
        succeeded = False
        try:
            pair = await service.bcrypt(call)
            succeeded = True
        except sessions.AuthFailed as exc:
            service.metrics.login("failure")
            service.log.info("login_failed", reason=exc.reason, ip=ip)
            raise ApiError(
                401, "invalid_credentials", "invalid clinic, email or password"
            ) from None
        finally:
            await service.login_finished(clinic, email, ip, failed=not succeeded)
    service.metrics.login("success")
    service.log.info("login", user=pair.claims["sub"], session=pair.claims["sid"], ip=ip)
    return JSONResponse(pair.to_dict(), headers={"Cache-Control": "no-store"})


async def refresh(service: Service, scope: Scope, receive: Receive) -> bytes:
    """POST /auth/refresh, served by the raw front (no Request object, no router): with an
    async connection on the event loop, this busy route costs no thread hop either."""
    ip = service.client_ip(scope)
    await service.gate(ip)
    body = _parse_object(await _read_body(scope, receive), REFRESH_FIELDS)
    try:
        await service.db_turn()
        try:
            pool = service.apool
            assert pool is not None
            # getconn/putconn rather than connection(): its `async with conn` would ask the
            # connection for a COMMIT it has nothing to commit (refresh_async leaves it idle,
            # rolled back on any error); putconn still checks it and discards a broken one.
            conn = await pool.getconn()
            try:
                pair = await refresh_async(
                    conn, service.ring, service.settings,
                    refresh_token=body["refresh_token"], ip=ip,
                )  # fmt: skip
            finally:
                await pool.putconn(conn)
        finally:
            service.db_turns.release()
    except RefreshRefused as exc:
        level = "warning" if exc.reason == "reuse" else "info"
        service.log.emit(level, "refresh_refused", reason=exc.reason, ip=ip)
        if exc.revoked:
            await service.deny_sessions(exc.revoked)
        raise ApiError(401, "invalid_refresh_token", "invalid refresh token") from None
    except DB_ERRORS:
        raise service.db_down() from None
    return _compact(pair.to_dict())


async def _authorized(request: Request, *, revoked_ok: bool = False) -> tuple[Service, Claims, str]:
    """Count the request, then accept only a valid, unrevoked bearer token (`revoked_ok`: a
    revoked one too, for logout to be repeatable)."""
    service = _service(request)
    ip = service.client_ip(request.scope)
    try:
        claims = service.bearer_claims(request.scope)
    except ApiError:
        await service.gate(ip)
        raise
    decision = await service.gate(ip, claims)
    if decision.revoked and not revoked_ok:
        raise ApiError(401, "invalid_token", "invalid or expired token", UNAUTHORIZED)
    return service, claims, ip


async def logout(request: Request) -> Response:
    # Repeatable: a 503 can leave the token denied on the primary but not confirmed by a
    # replica (redis_ha.py); the client's retry with the same token must be able to finish it.
    service, claims, ip = await _authorized(request, revoked_ok=True)
    body = await _json_object(request, LOGOUT_FIELDS, optional=True)
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
        raise service.redis_down() from None
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


async def readiness(service: Service) -> Answer:
    """PostgreSQL (a SELECT 1 on the async pool) and Redis (PING), asked at once, on the
    event loop: no thread hop, so readiness answers as fast as the routes it vouches for.
    A dependency already known to be down is named at once (Service.ready)."""
    down = await service.ready()
    if "postgresql" in down:
        service.metrics.db_errors.inc()
    if "redis" in down:
        service.metrics.redis_errors.inc()
    if down:
        return 503, _compact({"status": "unavailable", "down": down}), [JSON_TYPE]
    return 200, READY_BODY, [JSON_TYPE]


async def ready(request: Request) -> Response:
    """The router's copy of GET /health/ready (the raw front answers GET; HEAD lands here)."""
    status, body, headers = await readiness(_service(request))
    return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})


async def metrics(request: Request) -> Response:
    """Every worker's metrics, from the shared files alone: answers with Redis or
    PostgreSQL down (metrics.py)."""
    service = _service(request)
    service.refresh_metrics()
    return Response(service.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


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


INTERNAL_ERROR = b'{"error":"internal_error","message":"internal error"}'


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Starlette's last-resort answer (its middleware then re-raises to AuthApp, which logs)."""
    return Response(INTERNAL_ERROR, 500, media_type="application/json")


def _router(service: Service) -> Starlette:
    routes = [
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/auth/me", me, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            ApiError: _api_error,
            Exception: _internal_error,
        },
    )
    app.state.service = service
    return app


class AuthApp:
    """The ASGI entry point: lifespan, request id, metrics, access log, hot-path routes.

    The hot routes (verify, refresh, live, ready) return (status, body, headers) and are
    answered here with pre-encoded headers; everything else goes through the Starlette router.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.router = _router(service)
        # Generated request ids: a random per-process prefix and a counter (32 hex digits,
        # unique across workers and restarts) - no urandom syscall per request.
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if REQUEST_ID_FORMAT.match(candidate) else ""
                break
        request_id = request_id or f"{self._id_prefix}{next(self._ids):016x}"
        REQUEST_ID.set(request_id)
        rid_header = (b"x-request-id", request_id.encode())
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            answer: Answer | None = None
            if path == "/auth/verify" and method == "GET":
                answer = await self._verify(scope)
            elif path == "/auth/refresh":
                answer = await self._refresh(scope, receive)
            elif path == "/health/live" and method == "GET":
                answer = LIVE_ANSWER
            elif path == "/health/ready" and method == "GET":
                answer = await readiness(self.service)
            else:
                await self.router(scope, receive, send_with_id)
            if answer is not None:
                status, body, headers = answer
                responded = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            *headers,
                            (b"content-length", b"%d" % len(body)),
                            rid_header,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        except Exception as exc:
            # Logged once, here; answered once: Starlette may already have sent its 500, and
            # a second response start would make uvicorn drop the keep-alive connection.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            self.service.log.error(
                "unhandled",
                path=path,
                error=type(exc).__name__,
                where=f"{frame.filename}:{frame.lineno}",
            )
            if not responded:
                status = 500
                await _send(send_with_id, 500, INTERNAL_ERROR)
        finally:
            elapsed = time.perf_counter() - started
            route = path if path in KNOWN_ROUTES else "other"
            self.service.metrics.observe(route, status, elapsed)
            if self.service.log.access:
                self.service.log.request_line(
                    request_id, method, route, status, round(elapsed * 1000, 2)
                )

    async def _verify(self, scope: Scope) -> Answer:
        service = self.service
        ip = service.client_ip(scope)
        found: tuple[Claims, bytes] | None = None
        refused: ApiError | None = None
        try:
            found = service.bearer(scope)
        except ApiError as exc:
            refused = exc
        try:
            decision = await service.gate(ip, found[0] if found is not None else None)
        except ApiError as exc:
            return _error(exc)
        if found is None:
            assert refused is not None
            return _error(refused, decision.raw_headers())
        if decision.revoked:
            return _error(REVOKED, decision.raw_headers())
        return 200, found[1], [JSON_TYPE, *decision.raw_headers()]

    async def _refresh(self, scope: Scope, receive: Receive) -> Answer:
        if scope["method"] != "POST":
            error = ApiError(405, "method_not_allowed", "Method Not Allowed", {"Allow": "POST"})
            return _error(error)
        try:
            body = await refresh(self.service, scope, receive)
        except ApiError as exc:
            return _error(exc)
        return 200, body, REFRESH_HEADERS

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
                # After uvicorn's graceful shutdown (in-flight requests answered): pools closed.
                await self.service.stop()
                self.service.log.info("stopped", pid=os.getpid())
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


def _error(exc: ApiError, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    body = _compact({"error": exc.code, "message": exc.message})
    raw = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status, body, [JSON_TYPE, *(headers or ()), *raw]


def create_app(service: Service | None = None) -> AuthApp:
    """The uvicorn factory (`--factory`): each worker builds its service from the environment."""
    return AuthApp(service or Service.from_env())

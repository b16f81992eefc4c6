"""Readiness probes run from the host: SQL, Redis and HTTP, the local runtime's equivalents
of the containers' healthchecks. Any failure to answer is "not ready yet", with its reason."""

from __future__ import annotations

import socket

from atendeai_ctl.db import wire
from atendeai_ctl.stack.runtime import ProbeResult

TIMEOUT = 2.0


def _failed(exc: Exception) -> ProbeResult:
    return ProbeResult(False, f"{type(exc).__name__}: {exc}")


def sql(host: str, port: int, *, user: str, password: str, dbname: str, query: str) -> ProbeResult:
    """A real login (scram) and a query, not only an open port."""
    import psycopg

    try:
        with psycopg.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=int(TIMEOUT),
        ) as conn:
            conn.execute(query)
    except Exception as exc:
        return _failed(exc)
    return ProbeResult(True)


def pg_accepting(host: str, port: int, *, user: str, dbname: str) -> ProbeResult:
    """What `pg_isready` asks, without a login: send a startup message and read the first
    reply. An authentication request, or any error but "cannot connect now" (57P03: starting,
    stopping, recovering), means the server accepts connections (libpq's PQping says the
    same). A socket and two messages: psycopg's import alone would take longer than the
    `docker exec` of pg_isready this replaces in `status`."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(wire.startup_message(user, dbname))
            kind, _ = wire.Conn(sock).read()
    except wire.ServerError as exc:
        return ProbeResult(exc.sqlstate != "57P03", str(exc).strip())
    except (OSError, wire.ProtocolError) as exc:
        return _failed(exc)
    if kind == b"R":
        return ProbeResult(True, "accepting connections")
    return ProbeResult(False, f"unexpected reply {kind!r}")


def redis_command(host: str, port: int, *, password: str | None, command: str) -> ProbeResult:
    """AUTH (when a password is set) and `command`, spoken in RESP over a plain socket: the
    redis client's import would be most of a local `status` (about 0.1 s), for two lines."""

    def bulk(*words: str) -> bytes:
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = word.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)

    request = (bulk("AUTH", password) if password else b"") + bulk(*command.split())
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(request)
            replies = _resp_lines(sock, 2 if password else 1)
    except OSError as exc:
        return _failed(exc)
    for reply in replies:
        if reply.startswith("-"):
            return ProbeResult(False, reply[1:])
    last = replies[-1].lstrip("+")
    return ProbeResult(last in ("PONG", "OK"), last)


def _resp_lines(sock: socket.socket, count: int) -> list[str]:
    """The first line of each of `count` replies (status, error or integer replies)."""
    buffer = b""
    while buffer.count(b"\r\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buffer += chunk
    return [line.decode(errors="replace") for line in buffer.split(b"\r\n")[:count]]


def http_get(url: str) -> ProbeResult:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return ProbeResult(resp.status == 200, f"HTTP {resp.status}")
    except Exception as exc:
        return _failed(exc)

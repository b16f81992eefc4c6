"""Readiness probes run from the host: SQL, Redis and HTTP, the local runtime's equivalents
of the containers' healthchecks. Any failure to answer is "not ready yet", with its reason."""

from __future__ import annotations

import contextlib

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


def redis_command(host: str, port: int, *, password: str | None, command: str) -> ProbeResult:
    import redis

    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
    )
    try:
        with contextlib.closing(client):
            reply = client.execute_command(command)
    except Exception as exc:
        return _failed(exc)
    return ProbeResult(reply in (True, b"PONG", "PONG"), str(reply))


def http_get(url: str) -> ProbeResult:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return ProbeResult(resp.status == 200, f"HTTP {resp.status}")
    except Exception as exc:
        return _failed(exc)

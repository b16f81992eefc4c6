import socket

import psycopg
import pytest
import redis

from tests.servers import RedisServer


def test_postgres_fixture_gives_a_fresh_database(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname='public'"
        ).fetchone() == (0,)


def _raw(port: int, *commands: bytes) -> list[bytes]:
    """Inline commands on a bare socket, one reply line each: no client library deciding
    which handshake (HELLO, AUTH) to send first."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for command in commands:
            sock.sendall(command + b"\r\n")
            replies.append(stream.readline().rstrip(b"\r\n"))
    return replies


def test_redis_fixture_requires_its_password(redis_url: str, redis_srv: RedisServer) -> None:
    with redis.Redis.from_url(redis_url) as authed:
        assert authed.ping()
    refused = _raw(redis_srv.port, b"PING", b"SET k v", b"AUTH not-the-password", b"GET k")
    assert [reply.split()[0] for reply in refused] == [
        b"-NOAUTH", b"-NOAUTH", b"-WRONGPASS", b"-NOAUTH",
    ]  # fmt: skip
    assert _raw(redis_srv.port, b"AUTH " + redis_srv.password.encode(), b"PING") == [
        b"+OK", b"+PONG",
    ]  # fmt: skip
    with (
        redis.Redis(host="127.0.0.1", port=redis_srv.port, protocol=2) as anonymous,
        pytest.raises(redis.AuthenticationError),  # redis-py's name for NOAUTH
    ):
        anonymous.ping()

"""The host-side readiness probes the Docker runtime asks instead of `docker exec`, against
real servers: PostgreSQL accepting connections (pg_isready's question, no login), refusing
them while it shuts down (57P03), and gone; Redis PING with and without the password."""

from __future__ import annotations

import subprocess
import time

import psycopg

from atendeai_ctl.stack import probes
from tests.servers import (
    PG_BIN,
    PostgresServer,
    RedisServer,
    _as_postgres_user,
    free_port,
    postgres_server,
)


def test_a_running_server_accepts_connections_without_a_login(pg: PostgresServer) -> None:
    found = probes.pg_accepting("127.0.0.1", pg.port, user="postgres", dbname="postgres")
    assert found.ok and found.output == "accepting connections"
    # A role or database that does not exist still means a server that accepts (as pg_isready).
    other = probes.pg_accepting("127.0.0.1", pg.port, user="nobody", dbname="nothing")
    assert other.ok


def test_a_closed_port_is_not_ready() -> None:
    found = probes.pg_accepting("127.0.0.1", free_port(), user="postgres", dbname="postgres")
    assert not found.ok and "ConnectionRefusedError" in found.output


def test_a_server_shutting_down_is_not_accepting() -> None:
    """A smart shutdown waits for the open session and refuses new ones with 57P03, the code
    a starting server answers with too."""
    with postgres_server() as server:
        session = psycopg.connect(server.url(), autocommit=True)
        try:
            data = session.execute("SHOW data_directory").fetchone()
            assert data is not None
            subprocess.run(
                [*_as_postgres_user(), str(PG_BIN / "pg_ctl"), "-D", data[0], "-m", "smart",
                 "-W", "stop"],
                check=True, capture_output=True,
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while True:
                found = probes.pg_accepting(
                    "127.0.0.1", server.port, user="postgres", dbname="postgres"
                )
                if not found.ok:
                    break
                assert time.monotonic() < deadline, found
                time.sleep(0.1)
            assert found.output.startswith("57P03"), found
        finally:
            session.close()


def test_redis_ping_needs_the_password(redis_srv: RedisServer) -> None:
    right = probes.redis_command(
        "127.0.0.1", redis_srv.port, password=redis_srv.password, command="PING"
    )
    assert right.ok and right.output == "PONG"
    none = probes.redis_command("127.0.0.1", redis_srv.port, password=None, command="PING")
    assert not none.ok and "NOAUTH" in none.output
    wrong = probes.redis_command("127.0.0.1", redis_srv.port, password="wrong", command="PING")
    assert not wrong.ok

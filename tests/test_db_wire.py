"""db.wire, the one-query PostgreSQL client `up` uses for the revision check: against real
servers (SCRAM and md5 logins, errors, NULLs), the same answers as psycopg, the fall-back for
what it declines, and hostile replies (hypothesis) that end in its own errors, never a hang."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atendeai_ctl.db import migrations, wire
from atendeai_ctl.errors import AtendeaiError
from tests.servers import PostgresServer, postgres_server

MD5_USER, MD5_PASSWORD = "old_md5_user", "md5 pass: ok"


@pytest.fixture(scope="module")
def md5_cluster() -> Iterator[PostgresServer]:
    """A cluster whose pg_hba says md5: a role with an md5 password logs in with md5, the
    superuser (a SCRAM password) still with SCRAM, as PostgreSQL does on upgraded clusters."""
    with postgres_server(auth="md5") as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'md5'")
            conn.execute(f"CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}'")
        yield server


def _query(server: PostgresServer, sql: str, **kw: str) -> list[tuple[str | None, ...]]:
    args = {"user": server.user, "password": server.password, "dbname": "postgres", **kw}
    return wire.query("127.0.0.1", server.port, sql=sql, **args)


def test_scram_login_and_rows_match_psycopg(pg: PostgresServer) -> None:
    sql = "SELECT 1::int, NULL::text, 'ç ✓'::text, '' UNION ALL SELECT 2, 'x', NULL, 'y'"
    with psycopg.connect(pg.url()) as conn:
        expected = [tuple(None if v is None else str(v) for v in row) for row in conn.execute(sql)]
    assert _query(pg, sql) == expected
    assert _query(pg, "SELECT 1 WHERE false") == []


def test_md5_and_scram_logins_on_an_md5_cluster(md5_cluster: PostgresServer) -> None:
    assert _query(md5_cluster, "SELECT current_user", user=MD5_USER, password=MD5_PASSWORD) == [
        (MD5_USER,)
    ]
    assert _query(md5_cluster, "SELECT current_user") == [("postgres",)]
    with pytest.raises(wire.ServerError) as refused:
        _query(md5_cluster, "SELECT 1", user=MD5_USER, password="wrong")
    assert refused.value.sqlstate == "28P01"


def test_errors_carry_their_sqlstate(pg: PostgresServer) -> None:
    with pytest.raises(wire.ServerError) as refused:
        _query(pg, "SELECT 1", password="wrong")
    assert refused.value.sqlstate == "28P01"
    with pytest.raises(wire.ServerError) as missing:
        _query(pg, "SELECT * FROM no_such_table")
    assert missing.value.sqlstate == "42P01"
    with pytest.raises(wire.ServerError) as no_db:
        _query(pg, "SELECT 1", dbname="no_such_db")
    assert no_db.value.sqlstate == "3D000"
    with pytest.raises(OSError):
        _query(PostgresServer(port=1, password="x"), "SELECT 1")


def test_a_non_ascii_password_is_declined_not_guessed(pg: PostgresServer) -> None:
    with pytest.raises(wire.Unsupported):
        _query(pg, "SELECT 1", password="pässword")


def _revision_in_a_fresh_interpreter(url: str) -> tuple[str | None, bool]:
    """database_revision(url) in a new Python: its answer (the error's code when it raises
    AtendeaiError), and whether psycopg got imported on the way."""
    code = (
        "import json, sys\n"
        "from atendeai_ctl.db.migrations import database_revision\n"
        "from atendeai_ctl.errors import AtendeaiError\n"
        "try:\n"
        f"    answer = database_revision({url!r})\n"
        "except AtendeaiError as exc:\n"
        "    answer = exc.code\n"
        "print(json.dumps([answer, 'psycopg' in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer, imported = json.loads(done.stdout)
    return answer, imported


def test_database_revision_takes_the_wire_and_imports_no_psycopg(database_url: str) -> None:
    migrations.upgrade(database_url, "0001")
    assert _revision_in_a_fresh_interpreter(database_url) == ("0001", False)


def test_what_the_wire_declines_psycopg_answers(database_url: str) -> None:
    migrations.upgrade(database_url, "0001")
    for extra in ("?sslmode=disable&connect_timeout=5", "?options=-c%20search_path%3Dpublic"):
        assert migrations.database_revision(database_url + extra) == "0001"
    with pytest.raises(AtendeaiError) as unreachable:
        migrations.database_revision("postgresql://u:p@127.0.0.1:1/db")
    assert unreachable.value.code == "unavailable"
    assert "p@" not in unreachable.value.message


def test_an_md5_roles_revision_is_read_too(md5_cluster: PostgresServer) -> None:
    url = md5_cluster.url(user=MD5_USER, password=MD5_PASSWORD)  # url() quotes it
    assert migrations.database_revision(url) is None  # no version table: never migrated


# hostile replies ------------------------------------------------------------------------------
def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


AUTH_OK = _message(b"R", struct.pack("!i", 0))
READY = _message(b"Z", b"I")

# Not a message at all; well framed with any body; any length field.
messages = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _message,
        st.sampled_from(list(b"RZDTCEKNSIX12")).map(lambda k: bytes([k])),
        st.binary(max_size=48),
    ),
    st.builds(
        lambda k, n, body: bytes([k]) + struct.pack("!i", n) + body,
        st.sampled_from(list(b"RDZE")),
        st.integers(-(2**31), 2**31 - 1),
        st.binary(max_size=16),
    ),
)


class _Server:
    """A listener that answers one connection with the given bytes, then closes it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]

    def serve(self, reply: bytes) -> threading.Thread:
        def run() -> None:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(reply)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


@pytest.fixture(scope="module")
def hostile() -> Iterator[_Server]:
    server = _Server()
    yield server
    server.sock.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.sampled_from([b"", AUTH_OK, AUTH_OK + READY]), replies=st.lists(messages, max_size=4)
)
def test_hostile_replies_end_in_the_clients_own_errors(
    hostile: _Server, prefix: bytes, replies: list[bytes]
) -> None:
    thread = hostile.serve(prefix + b"".join(replies))
    try:
        rows = wire.query("127.0.0.1", hostile.port, user="u", password="p", dbname="d",
                          sql="SELECT 1", timeout=3)  # fmt: skip
    except (wire.ServerError, wire.Unsupported, wire.ProtocolError, OSError):
        pass
    else:
        assert all(isinstance(v, str | None) for row in rows for v in row)
    thread.join(5)
    assert not thread.is_alive()


def test_a_refusal_other_than_the_password_goes_to_psycopg(database_url: str) -> None:
    """28000 (a pg_hba.conf line wanting TLS, a role without LOGIN) is not a wrong password:
    psycopg asks again (with TLS when the server wants it) and says what it is."""
    from urllib.parse import urlsplit, urlunsplit

    role = "wire_nologin"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} NOLOGIN PASSWORD 'pw-123456789'")
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(netloc=f"{role}:pw-123456789@{parts.hostname}:{parts.port}"))
    try:
        code, asked_psycopg = _revision_in_a_fresh_interpreter(url)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
    assert asked_psycopg  # the wire client declined: psycopg said what it is
    assert code == "unavailable"  # as before the wire client (libpq gives no SQLSTATE)

"""`migrate up --wait-db SECONDS`: the migrate job started beside its database.

`up` starts a fresh migrate job before PostgreSQL is ready (x-atendeai.start_early: all), so
the job waits for the server itself: a port nobody listens on yet is waited out, a server that
appears in time is migrated, a refused password fails at once, and the wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.db_helpers import cli, current
from tests.servers import PostgresServer, free_port


@contextmanager
def forwarder(listen: int, target: int) -> Iterator[None]:
    """127.0.0.1:listen -> 127.0.0.1:target, one thread pair per connection."""
    server = socket.create_server(("127.0.0.1", listen))
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    runner = threading.Thread(target=accept, daemon=True)
    runner.start()
    try:
        yield
    finally:
        stop.set()
        server.close()
        runner.join(timeout=5)


def _url_via(pg: PostgresServer, port: int, name: str, password: str | None = None) -> str:
    return pg.url(name, password=password).replace(f":{pg.port}/", f":{port}/")


def test_a_server_that_appears_in_time_is_waited_for_and_migrated(
    pg: PostgresServer, database_url: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    port = free_port()
    url = _url_via(pg, port, name)
    done: dict[str, object] = {}

    def run() -> None:
        done["result"] = cli("migrate", "up", "--wait-db", "30", "--database-url", url)

    job = threading.Thread(target=run)
    started = time.monotonic()
    job.start()
    time.sleep(1.5)  # nothing listens yet: without the wait the job would have failed by now
    assert job.is_alive(), done
    with forwarder(port, pg.port):
        job.join(timeout=120)
    result = done["result"]
    assert result.returncode == 0, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    assert time.monotonic() - started >= 1.5
    assert current(database_url) is not None  # migrated


def test_without_the_option_an_absent_server_fails_at_once(
    pg: PostgresServer, database_url: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    result = cli("migrate", "up", "--database-url", _url_via(pg, free_port(), name))
    assert result.returncode != 0
    assert "cannot connect to PostgreSQL" in result.stderr and "Traceback" not in result.stderr


def test_the_wait_is_bounded_and_says_why(pg: PostgresServer, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    started = time.monotonic()
    result = cli(
        "migrate", "up", "--wait-db", "1.5", "--database-url", _url_via(pg, free_port(), name)
    )
    waited = time.monotonic() - started
    assert result.returncode != 0 and waited >= 1.5, (waited, result.stderr)
    assert "cannot connect to PostgreSQL" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_a_refused_password_is_not_waited_out(pg: PostgresServer, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    started = time.monotonic()
    url = pg.url(name, password="not-the-password")
    result = cli("migrate", "up", "--wait-db", "60", "--database-url", url)
    assert result.returncode != 0
    assert "rejected the credentials" in result.stderr, result.stderr
    assert time.monotonic() - started < 30  # at once, not after the 60 s
    assert "not-the-password" not in result.stderr

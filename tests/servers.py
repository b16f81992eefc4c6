"""Throwaway PostgreSQL and Redis servers for tests, started from installed binaries.

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user
(created by Debian's postgresql package) in a directory it owns.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

PG_BIN = Path(os.environ.get("ATENDEAI_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("ATENDEAI_TEST_REDIS_SERVER") or shutil.which("redis-server")


_HANDED_OUT: set[int] = set()
_RANDOM = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive ports free now, below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one: any outbound connection of the run may later take
    it as its local port, and a server published there afterwards fails with "in use" with no
    listener to name (CI met it on a second replica's port, the one after a bind(0) port).
    Below the range only a listener can hold a port. Never the same port twice per process.
    """
    low = _ephemeral_low()
    if low - count <= 12000:  # an unusual range: fall back to what the kernel hands out
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(2000):
        start = _RANDOM.randrange(12000, low - count)
        block = range(start, start + count)
        if _HANDED_OUT.isdisjoint(block) and all(_bindable(p) for p in block):
            _HANDED_OUT.update(block)
            return start
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def _as_postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


@dataclass
class PostgresServer:
    port: int
    password: str
    user: str = "postgres"

    def url(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        user = user or self.user
        pw = quote(password if password is not None else self.password, safe="")
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_server(auth: str = "scram-sha-256") -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="atendeai-pg-"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    pwfile = base / "pw"
    password = uuid.uuid4().hex
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        for path in (base, data, pwfile):
            os.chown(path, pg.pw_uid, pg.pw_gid)
    port = free_port()
    run = _as_postgres_user()
    subprocess.run(
        [
            *run,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            f"--auth={auth}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        [
            *run,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(port=port, password=password)
    finally:
        subprocess.run(
            [*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class RedisServer:
    port: int
    password: str

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="atendeai-redis-"))
    port = free_port()
    password = uuid.uuid4().hex
    conf = (
        f'port {port}\nbind 127.0.0.1\nrequirepass {password}\ndir {base}\nsave ""\nappendonly no\n'
    )
    proc = subprocess.Popen([REDIS_SERVER, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(conf.encode())
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield RedisServer(port=port, password=password)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)

"""With PostgreSQL or Redis gone, the auth service answers 503 within about a second, names
what is down in /health/ready, and recovers on its own when the dependency is back.

Real servers of this module's own (the session's are shared with other tests), under a small
bounded load from a few client threads. Two ways to lose a dependency:

- hung: SIGSTOP on every process of the server. Connections are still accepted by the kernel
  and bytes are still acknowledged, but nothing answers: what a dead container whose packets
  are dropped looks like to a client, and the case that used to hang requests.
- stopped: the server stops (refused connections, open ones closed), then starts again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atendeai_ctl.auth import clinics, users
from atendeai_ctl.auth.settings import RateLimits
from tests.auth_helpers import APP_PASSWORD, FAST, PASSWORD, AuthDb, live_server
from tests.servers import REDIS_SERVER, PostgresServer, free_port, postgres_server

LIMIT_S = 1.25
"""'Within about a second': the service's bounds are 0.8 s (pool wait, connection lease, Redis
reply), plus the watchdogs' granularity and a loaded CI machine's scheduling."""
RECOVERY_S = 5.0
SETTINGS = FAST.with_(rate=RateLimits(requests_per_ip=0))  # the load is not what is tested


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def postmaster(port: int) -> tuple[int, list[str]]:
    for pid in _pids():
        args = _cmdline(pid)
        if args and args[0].endswith("/postgres") and f"port={port}" in args:
            return pid, args
    raise AssertionError(f"no postmaster on port {port}")


class PostgresControl:
    """Freeze, thaw, stop and start the module's PostgreSQL (found by its port)."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        _, args = postmaster(server.port)
        self.data = args[args.index("-D") + 1]
        self.options = " ".join(args[args.index("-D") + 2 :])
        self.frozen: list[int] = []

    def freeze(self) -> None:
        pid, _ = postmaster(self.server.port)
        os.kill(pid, signal.SIGSTOP)  # first, so it forks no backend we would miss
        self.frozen = [pid, *(p for p in _pids() if _ppid(p) == pid)]
        for child in self.frozen[1:]:
            os.kill(child, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def _pg_ctl(self, *args: str) -> None:
        run = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        pg_ctl = str(Path(postmaster_binary()).with_name("pg_ctl"))
        subprocess.run(
            [*(run if os.geteuid() == 0 else []), pg_ctl, "-D", self.data, *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        log = str(Path(self.data).parent / "log")
        self._pg_ctl("-o", self.options, "-l", log, "-w", "start")


def postmaster_binary() -> str:
    from tests.servers import PG_BIN

    return str(PG_BIN / "postgres")


class RedisProcess:
    """A redis-server of this module's own, so it can be frozen, killed and started again
    on the same port with the same password."""

    def __init__(self) -> None:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        self.port = free_port()
        self.password = uuid.uuid4().hex
        self.dir = tempfile.mkdtemp(prefix="atendeai-redis-down-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        conf = (
            f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\n"
            f'dir {self.dir}\nsave ""\nappendonly no\n'
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(conf.encode())
        self.proc.stdin.close()
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)


@dataclass
class Dependencies:
    pg: PostgresControl
    redis: RedisProcess
    db: AuthDb


@pytest.fixture(scope="module")
def deps() -> Iterator[Dependencies]:
    from atendeai_ctl.db.migrations import upgrade

    with postgres_server() as server:
        name = server.create_database()
        admin_url = server.url(name)
        upgrade(admin_url, app_password=APP_PASSWORD)
        with psycopg.connect(admin_url) as conn:
            clinics.create_clinic(conn, slug="alpha", name="Alpha Clinic", actor="cli:test")
            users.create_user(
                conn,
                FAST,
                clinic="alpha",
                email="ana@alpha.test",
                password=PASSWORD,
                actor="cli:test",
            )
        app_url = server.url(name, user="atendeai_app", password=APP_PASSWORD)
        redis_proc = RedisProcess()
        redis_proc.start()
        pg = PostgresControl(server)
        try:
            yield Dependencies(pg, redis_proc, AuthDb(admin_url, app_url))
        finally:
            pg.thaw()
            redis_proc.thaw()
            redis_proc.stop()


@dataclass
class Answer:
    route: str
    started: float
    seconds: float
    status: int | str  # the exception's name when there was no answer


def _load(
    base: str, token: str, routes: list[str], stop: threading.Event, out: list[Answer]
) -> None:
    """One client thread: the routes in turn, a 10 ms pause between requests, at most 1000."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=5) as http:
        for i in range(1000):
            if stop.is_set():
                return
            route = routes[i % len(routes)]
            started = time.monotonic()
            try:
                if route == "/auth/refresh":
                    response = http.post(route, json={"refresh_token": "not-a-real-token-" * 2})
                else:
                    response = http.get(route, headers=auth)
                status: int | str = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            out.append(Answer(route, started, time.monotonic() - started, status))
            time.sleep(0.01)


NORMAL = {"/auth/me": 200, "/auth/verify": 200, "/auth/refresh": 401}
NEEDS = {
    "postgresql": {"/auth/me", "/auth/refresh"},
    "redis": {"/auth/me", "/auth/verify", "/auth/refresh"},
}


def _ready(base: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    response = httpx.get(f"{base}/health/ready", timeout=5)
    return response.status_code, response.json(), time.monotonic() - started


@pytest.mark.parametrize("how", ["hung", "stopped"])
@pytest.mark.parametrize("dependency", ["postgresql", "redis"])
def test_a_lost_dependency_is_a_fast_503_and_recovery_needs_no_restart(
    deps: Dependencies, keys_dir: Path, dependency: str, how: str
) -> None:
    target: Any = deps.pg if dependency == "postgresql" else deps.redis
    lose: Callable[[], None] = target.freeze if how == "hung" else target.stop
    restore: Callable[[], None] = target.thaw if how == "hung" else target.start
    with live_server(deps.db, deps.redis.url, keys_dir, settings=SETTINGS) as live:
        tokens = live.login()
        answers: list[Answer] = []
        stop = threading.Event()
        routes = list(NORMAL)
        clients = [
            threading.Thread(
                target=_load,
                args=(live.url, tokens["access_token"], routes[i:] + routes[:i], stop, answers),
            )
            for i in range(3)
        ]
        for client in clients:
            client.start()
        restored = False
        try:
            time.sleep(0.5)
            losing_at = time.monotonic()
            lose()
            lost_at = time.monotonic()
            time.sleep(1.5)
            status, body, took = _ready(live.url)
            assert status == 503 and body == {"status": "unavailable", "down": [dependency]}
            assert took < LIMIT_S
            if dependency == "postgresql":
                started = time.monotonic()
                login = httpx.post(
                    f"{live.url}/auth/login",
                    json={"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD},
                    timeout=5,
                )
                assert login.status_code == 503, login.text
                assert time.monotonic() - started < LIMIT_S
            time.sleep(0.5)
            back_at = time.monotonic()
            restore()
            restored = True
            while _ready(live.url)[0] != 200:
                assert time.monotonic() - back_at < RECOVERY_S, "no recovery without a restart"
                time.sleep(0.05)
            recovered_at = time.monotonic()
            time.sleep(0.7)
            assert live.login()["access_token"]  # sessions open again
        finally:
            if not restored:
                restore()
            stop.set()
            for client in clients:
                client.join(15)

    unanswered = [a for a in answers if not isinstance(a.status, int)]
    assert not unanswered, f"requests without an answer: {unanswered[:5]}"
    errors = [a for a in answers if a.status == 500]
    assert not errors, errors[:5]
    slow = [a for a in answers if a.seconds >= LIMIT_S]
    assert not slow, f"answers slower than {LIMIT_S}s: {slow[:5]}"
    needing = NEEDS[dependency]
    during = [a for a in answers if a.started > lost_at + 0.05 and a.started + a.seconds < back_at]
    assert len(during) > 20, "too little load during the outage"
    for answer in during:
        expected = 503 if answer.route in needing else NORMAL[answer.route]
        assert answer.status == expected, answer
    for answer in answers:
        if answer.started + answer.seconds < losing_at or answer.started > recovered_at + 0.2:
            assert answer.status == NORMAL[answer.route], answer
    assert any(a.started > recovered_at + 0.2 for a in answers), "no load after the recovery"
    health = live.service.db_health if dependency == "postgresql" else live.service.redis_health
    assert health.outages >= 1 and not health.down


@given(st.text(max_size=20) | st.floats(allow_nan=True).map(str))
def test_any_timeout_setting_is_seconds_in_range_or_one_invalid_error(raw: str) -> None:
    from atendeai_ctl.auth.settings import AuthSettings
    from atendeai_ctl.errors import AtendeaiError

    try:
        settings = AuthSettings.from_env({"ATENDEAI_AUTH_DB_TIMEOUT": raw})
    except AtendeaiError as err:
        assert err.code == "invalid" and "ATENDEAI_AUTH_DB_TIMEOUT" in err.message
        return
    assert 0.05 <= settings.db_timeout_s <= 3600

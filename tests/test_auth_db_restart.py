"""After PostgreSQL drops every connection (a restart, a failover, pg_terminate_backend), the
pools hold only broken connections and learn of each one only when they lend it. Readiness
must answer for the server as it is now, on the first probe: not fail once per pooled
connection (ten per worker), which is what made `status` right after `up` flap."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.auth_helpers import PASSWORD, AuthDb, live_server


def _drop_app_connections(auth_db: AuthDb) -> int:
    with psycopg.connect(auth_db.admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename = 'atendeai_app' AND datname = current_database()"
        ).fetchall()
    return len(rows)


@contextlib.contextmanager
def _logins_refused(auth_db: AuthDb) -> Iterator[None]:
    """The app role may not log in (its open connections are dropped) until the block ends:
    to the service, PostgreSQL is away, and nothing else on the cluster notices."""
    with psycopg.connect(auth_db.admin_url, autocommit=True) as conn:
        conn.execute("ALTER ROLE atendeai_app NOLOGIN")
    try:
        _drop_app_connections(auth_db)
        yield
    finally:
        with psycopg.connect(auth_db.admin_url, autocommit=True) as conn:
            conn.execute("ALTER ROLE atendeai_app LOGIN")


def test_readiness_is_true_on_the_first_probe_after_every_connection_dropped(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: tuple[str, str]
) -> None:
    with live_server(auth_db, redis_url, keys_dir) as server, server.client() as http:
        deadline = time.monotonic() + 15
        while (
            server.service.apool is None or server.service.apool.get_stats()["pool_available"] < 5
        ):  # the async pool has filled (min_size = pool_max), so there is stale to meet
            assert time.monotonic() < deadline
            assert http.get("/health/ready").status_code == 200
            time.sleep(0.05)
        assert _drop_app_connections(auth_db) >= 5
        answers = [http.get("/health/ready").status_code for _ in range(12)]
        assert answers == [200] * 12, answers
        # And the request paths meet no stale connection either.
        assert http.post("/auth/login", json=_login(clinic_user)).status_code == 200


def _login(clinic_user: tuple[str, str]) -> dict[str, str]:
    clinic, email = clinic_user
    return {"clinic": clinic, "email": email, "password": PASSWORD}


@pytest.mark.parametrize("outage", [0.3, 1.1])
def test_a_worker_marked_down_is_ready_on_the_first_probe_once_the_server_is_back(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, outage: float
) -> None:
    """Readiness during an outage marks PostgreSQL down; its background probe is made slow
    here (30 s), so only readiness asking again itself can say ready when the server is back:
    `up` and `status` probe whichever worker the kernel hands them, and must agree. Short or
    long: after a short one the pools, whose refill failed while the server was away, are on
    psycopg_pool's backoff and must not be kept (they lent nothing for a second)."""
    with live_server(auth_db, redis_url, keys_dir) as server, server.client() as http:
        assert http.get("/health/ready").status_code == 200
        server.service.db_health.interval = 30.0
        with _logins_refused(auth_db):
            assert http.get("/health/ready").status_code == 503
            assert server.service.db_health.down
            time.sleep(outage)
        assert http.get("/health/ready").status_code == 200
        assert not server.service.db_health.down
        assert http.get("/health/ready").status_code == 200


def test_pools_whose_refill_failed_are_replaced_even_after_a_short_outage(
    auth_db: AuthDb, redis_url: str, keys_dir: Path
) -> None:
    """A refill that failed while the server was away leaves the pool on psycopg_pool's
    backoff (next attempt 1 s, then 2 s later): kept, it lends nothing for that long, and
    readiness timed out with 503 right after `up` said healthy (a local-runtime CI flake).
    So recovery replaces such pools, however short the outage was."""
    with live_server(auth_db, redis_url, keys_dir) as server, server.client() as http:
        assert http.get("/health/ready").status_code == 200
        service = server.service
        service.db_health.interval = 30.0
        old = (service.pool, service.apool)
        with _logins_refused(auth_db):
            assert http.get("/health/ready").status_code == 503  # its refill is refused
            assert service._pool_connect_errors() > 0
        assert http.get("/health/ready").status_code == 200
        assert service.pool is not old[0] and service.apool is not old[1]
        assert service._pool_connect_errors() == 0


def test_an_outage_after_readiness_ended_the_last_one_gets_one_probe_task() -> None:
    """check_now may end an outage while the background probe still sleeps; the next outage
    reuses that probe task instead of starting a second one beside it."""
    import asyncio
    import io

    from atendeai_ctl.auth.deps import Dependency
    from atendeai_ctl.auth.log import JsonLog

    async def scenario() -> None:
        answers = iter([False, True])  # the first check fails, check_now's probe answers

        async def probe() -> None:
            if not next(answers, True):
                raise ConnectionError("down")

        dep = Dependency(
            "db", probe, timeout=1, log=JsonLog("error", stream=io.StringIO()), interval=30
        )
        assert not await dep.check()
        first = dep._watch
        assert await dep.check_now()  # recovered by readiness; the probe task still sleeps
        dep.failed(ConnectionError("down again"))
        assert dep._watch is first and first is not None and not first.done()
        dep.stop()

    asyncio.run(scenario())

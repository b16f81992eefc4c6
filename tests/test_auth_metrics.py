"""/metrics of `atendeai auth serve` with several workers: prometheus_client in multiprocess mode.

Real processes, PostgreSQL and Redis; the exposition is read with prometheus_client's own
parser. Workers are told apart by the prefix of the request ids they generate (a random
per-process prefix, http.py), so each test can check that its requests really reached more
than one worker.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from atendeai_ctl.auth.metrics import BUCKETS, CONTENT_TYPE, FLUSH_S, Metrics
from tests.auth_helpers import APP_PASSWORD, PASSWORD, AuthDb
from tests.serve_helpers import Served, auth_serve
from tests.servers import PostgresServer, RedisServer, redis_server

WORKERS = 3
POOL_MAX = 4
LOGIN = {"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD}
WRONG = {**LOGIN, "password": "definitely wrong"}
CONTRACT = {
    "atendeai_auth_requests": "counter",
    "atendeai_auth_request_duration_seconds": "histogram",
    "atendeai_auth_logins": "counter",
    "atendeai_auth_rate_limited": "counter",
    "atendeai_auth_bcrypt_queue_depth": "gauge",
    "atendeai_auth_bcrypt_wait_seconds": "histogram",
    "atendeai_auth_db_pool_in_use": "gauge",
    "atendeai_auth_db_pool_waiting": "gauge",
    "atendeai_auth_db_pool_size": "gauge",
    "atendeai_auth_redis_errors": "counter",
    "atendeai_auth_db_errors": "counter",
}
Families = dict[str, Metric]


def serve_env(database_url: str, redis_url: str, keys_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    return {
        **env,
        "ATENDEAI_DATABASE_URL": database_url,
        "ATENDEAI_REDIS_URL": redis_url,
        "ATENDEAI_JWT_KEYS_DIR": str(keys_dir),
        "ATENDEAI_AUTH_BCRYPT_COST": "10",
        "ATENDEAI_AUTH_DB_POOL_MAX": str(POOL_MAX),
        **extra,
    }


def scrape(served: Served) -> tuple[str, Families]:
    """/metrics, checked: 200, the 0.0.4 text format, and parsed by prometheus_client."""
    response = httpx.get(served.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    return response.text, families


def value(families: Families, sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` whose labels include `labels` (0 if none)."""
    family = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
    family = family.removesuffix("_sum")
    found = families.get(family)
    if found is None:
        return 0.0
    return sum(
        s.value
        for s in found.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def eventually(check: Callable[[Families], bool], served: Served, timeout: float = 8) -> Families:
    """Scrape until `check` holds: other workers fold their counts in once a second."""
    deadline = time.monotonic() + timeout
    while True:
        _, families = scrape(served)
        if check(families):
            return families
        assert time.monotonic() < deadline, "the metrics never added up"
        time.sleep(0.2)


def worker_of(response: httpx.Response) -> str:
    """The answering worker: generated request ids start with a per-process prefix."""
    return response.headers["x-request-id"][:16]


def test_counts_from_every_worker_add_up(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    env = serve_env(auth_db.app_url, redis_url, keys_dir)
    with auth_serve(env, "--workers", str(WORKERS)) as served:
        workers: set[str] = set()
        sent = 0
        # New connections land on whichever worker accepts first; keep going (bounded)
        # until at least two workers have answered, so the sum really spans workers.
        while sent < 60 or (len(workers) < 2 and sent < 600):
            response = httpx.get(served.url + "/auth/verify")
            assert response.status_code == 401
            workers.add(worker_of(response))
            sent += 1
        assert len(workers) >= 2, "every request reached the same worker"

        def added_up(families: Families) -> bool:
            return (
                value(families, "atendeai_auth_requests_total", route="/auth/verify", status="401")
                == sent
                and value(
                    families, "atendeai_auth_request_duration_seconds_count", route="/auth/verify"
                )
                == sent
            )

        families = eventually(added_up, served)
        # Cumulative buckets end at +Inf == count, for the sum of every worker's histogram.
        inf = value(
            families,
            "atendeai_auth_request_duration_seconds_bucket",
            route="/auth/verify",
            le="+Inf",
        )
        assert inf == sent
        # livesum gauges: every live worker's pools, summed.
        for pool in ("sync", "async"):
            size = value(families, "atendeai_auth_db_pool_size", pool=pool)
            assert size == WORKERS * POOL_MAX
        time.sleep(1.5)  # another fold: nothing counted twice
        _, families = scrape(served)
        assert (
            value(families, "atendeai_auth_requests_total", route="/auth/verify", status="401")
            == sent
        )


def test_a_login_shows_by_outcome(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    env = serve_env(auth_db.app_url, redis_url, keys_dir)
    with auth_serve(env, "--workers", str(WORKERS)) as served:
        assert httpx.post(served.url + "/auth/login", json=LOGIN, timeout=30).status_code == 200
        for _ in range(2):
            wrong = httpx.post(served.url + "/auth/login", json=WRONG, timeout=30)
            assert wrong.status_code == 401
        # logins are counted at once, not at the next fold
        _, families = scrape(served)
        assert value(families, "atendeai_auth_logins_total", outcome="success") == 1
        assert value(families, "atendeai_auth_logins_total", outcome="failure") == 2
        assert value(families, "atendeai_auth_bcrypt_wait_seconds_count") == 3
        assert value(families, "atendeai_auth_bcrypt_queue_depth") == 0
        eventually(
            lambda f: (
                value(f, "atendeai_auth_request_duration_seconds_count", route="/auth/login") == 3
            ),
            served,
        )


def test_metrics_answer_with_redis_stopped_and_count_its_errors(
    auth_db: AuthDb, keys_dir: Path, clinic_user: Any
) -> None:
    with redis_server() as own:
        env = serve_env(auth_db.app_url, own.url(), keys_dir)
        with auth_serve(env, "--workers", str(WORKERS)) as served:
            assert httpx.get(served.url + "/health/ready").status_code == 200
            _, before = scrape(served)
            assert value(before, "atendeai_auth_redis_errors_total") == 0
            stop_redis(own)
            workers: set[str] = set()
            refused = 0
            while refused < 12 or (len(workers) < 2 and refused < 300):
                response = httpx.get(served.url + "/auth/verify", headers=bearer("x.y.z"))
                assert response.status_code == 503
                workers.add(worker_of(response))
                refused += 1
            assert len(workers) >= 2
            _, families = scrape(served)
            assert value(families, "atendeai_auth_redis_errors_total") >= refused
            # every worker's requests still add up: nothing went through Redis
            eventually(
                lambda f: (
                    value(f, "atendeai_auth_requests_total", route="/auth/verify", status="503")
                    == refused
                ),
                served,
            )
            ready = httpx.get(served.url + "/health/ready")
            assert ready.status_code == 503
            _, after = scrape(served)
            assert value(after, "atendeai_auth_redis_errors_total") >= refused + 1


def stop_redis(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url())
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(server.url(), socket_connect_timeout=0.2).ping()
        except redis.ConnectionError:
            return
        assert time.monotonic() < deadline, "Redis did not stop"
        time.sleep(0.05)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_metrics_answer_with_postgresql_gone_and_count_its_errors(
    pg: PostgresServer, redis_url: str, keys_dir: Path
) -> None:
    nowhere = pg.url("no_such_db_here", user="atendeai_app", password="x")
    env = serve_env(nowhere, redis_url, keys_dir)
    with auth_serve(env, "--workers", "2") as served:
        for _ in range(3):
            assert httpx.get(served.url + "/health/ready", timeout=10).status_code == 503
        _, families = scrape(served)
        assert value(families, "atendeai_auth_db_errors_total") >= 3
        assert value(families, "atendeai_auth_redis_errors_total") == 0


def test_exposition_has_the_contract_and_no_secrets(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    env = serve_env(auth_db.app_url, redis_url, keys_dir)
    with auth_serve(env, "--workers", "2") as served, httpx.Client(base_url=served.url) as http:
        pair = http.post("/auth/login", json=LOGIN, timeout=30).json()
        http.post("/auth/login", json=WRONG, timeout=30)
        refreshed = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        access = refreshed.json()["access_token"]
        assert http.get("/auth/verify", headers=bearer(access)).status_code == 200
        assert http.get("/auth/me", headers=bearer(access)).status_code == 200
        assert http.post("/auth/logout", headers=bearer(access)).status_code == 204
        http.get("/no/such/route/" + pair["refresh_token"])
        families = eventually(
            lambda f: value(f, "atendeai_auth_requests_total", route="/auth/logout") == 1,
            served,
        )
        text, _ = scrape(served)
    for name, kind in CONTRACT.items():
        assert name in families, name
        assert families[name].type == kind, name
    routes = {s.labels.get("route") for s in families["atendeai_auth_requests"].samples}
    assert "other" in routes and all(r is None or r.startswith(("/", "other")) for r in routes)
    assert all(not math.isnan(s.value) for f in families.values() for s in f.samples)
    with psycopg.connect(auth_db.admin_url) as conn:
        row = conn.execute("SELECT password_hash FROM atendeai.users").fetchone()
    assert row is not None
    secrets = [
        PASSWORD,
        WRONG["password"],
        APP_PASSWORD,
        row[0],
        pair["access_token"],
        pair["refresh_token"],
        access,
        refreshed.json()["refresh_token"],
        "ana@alpha.test",
        redis_url.split("@")[0].rsplit(":", 1)[1],  # the Redis password
    ]
    for secret in secrets:
        assert secret not in text
    assert "$2b$" not in text


def _worker_pids(served: Served) -> set[int]:
    """The uvicorn worker processes serving `served` (children of the serve process)."""
    port = served.url.rsplit(":", 1)[1]
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (ppid, args)
    parents = {
        pid
        for pid, (ppid, args) in procs.items()
        if f"auth serve --port {port} " in args and procs.get(ppid, (0, ""))[1] != args
    }
    # The workers are forked from the supervisor: the same command line, its children.
    return {
        pid for pid, (ppid, args) in procs.items() if ppid in parents and procs[ppid][1] == args
    }


def test_a_killed_worker_leaves_the_gauges_and_keeps_its_counts(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    """uvicorn replaces a worker killed with SIGKILL; the dead one's pool gauges must leave
    the livesum (the next scrape marks it dead), while what it counted stays counted."""
    env = serve_env(auth_db.app_url, redis_url, keys_dir)
    with auth_serve(env, "--workers", "2") as served:
        for _ in range(20):
            assert httpx.get(served.url + "/auth/verify").status_code == 401
        eventually(
            lambda f: value(f, "atendeai_auth_requests_total", route="/auth/verify") == 20,
            served,
        )
        pids = _worker_pids(served)
        assert len(pids) == 2, pids
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len((now := _worker_pids(served)) - {victim}) < 2:
            assert time.monotonic() < deadline, f"no replacement worker: {now}"
            time.sleep(0.2)
        time.sleep(3 * FLUSH_S)  # the replacement has started and sampled its pools
        eventually(
            lambda f: (
                value(f, "atendeai_auth_db_pool_size", pool="async") == 2 * POOL_MAX
                and value(f, "atendeai_auth_requests_total", route="/auth/verify") == 20
            ),
            served,
            timeout=15,
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/auth/verify", "/auth/login", "other"]),
            st.sampled_from([200, 401, 429, 503]),
            st.one_of(
                st.sampled_from([*BUCKETS, 0.0]),
                st.floats(min_value=0, max_value=60, allow_nan=False),
            ),
        ),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=40),
)
def test_batched_counts_equal_one_observation_at_a_time(
    requests: list[tuple[str, int, float]], fold_at: int
) -> None:
    """The hot path tallies and folds in batches (prometheus_client's private per-bucket
    values); the exposition must be what observing each request directly gives, bucket
    boundaries included, whenever the folds happen."""
    batched = Metrics()
    direct = Metrics()
    for index, (route, status, seconds) in enumerate(requests):
        if index == fold_at:
            batched.flush()
        batched.observe(route, status, seconds)
        direct.requests.labels(route, str(status)).inc()
        direct.duration.labels(route).observe(seconds)

    def samples(metrics: Metrics) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        families = text_string_to_metric_families(metrics.render().decode())
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), round(s.value, 6))
            for f in families
            for s in f.samples
            if not s.name.endswith("_created")
        )

    assert samples(batched) == samples(direct)

"""Rate limits, Redis outages, metrics, logs and bcrypt off the event loop, over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import redis

from atendeai_ctl.auth.ratelimit import account_key
from atendeai_ctl.auth.settings import RateLimits
from tests.auth_helpers import (
    FAST,
    PASSWORD,
    AuthDb,
    LiveServer,
    dead_redis_url,
    live_server,
    strict_limits,
)

Conn = psycopg.Connection[Any]
WRONG = {"clinic": "alpha", "email": "ana@alpha.test", "password": "definitely wrong"}
UNKNOWN = {**WRONG, "email": "nobody@alpha.test"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def count_audit(conn: Conn, action: str, outcome: str | None = None) -> int:
    row = conn.execute(
        "SELECT count(*) FROM atendeai.audit_log WHERE action = %s"
        " AND (%s::text IS NULL OR outcome = %s)",
        (action, outcome, outcome),
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_failed_logins_per_account_are_limited_with_headers_and_audited(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = strict_limits(login_failures_per_account=3, login_failure_window_s=120)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        statuses = [http.post("/auth/login", json=WRONG).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        blocked = http.post("/auth/login", json=WRONG)
        assert blocked.status_code == 429
        assert blocked.json()["error"] == "rate_limited"
        assert 0 < int(blocked.headers["retry-after"]) <= 120
        assert blocked.headers["ratelimit-limit"] == "3"
        assert blocked.headers["ratelimit-remaining"] == "0"
        assert 0 < int(blocked.headers["ratelimit-reset"]) <= 120
        # even the right password waits for the window now
        right = {**WRONG, "password": PASSWORD}
        assert http.post("/auth/login", json=right).status_code == 429
    wait_for(lambda: count_audit(admin_conn, "rate_limited") == 1)
    assert count_audit(admin_conn, "login", "failure") == 3


def test_failed_logins_per_ip_are_limited_across_accounts(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    settings = strict_limits(login_failures_per_ip=2)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        statuses = [
            http.post("/auth/login", json={**WRONG, "email": f"u{i}@alpha.test"}).status_code
            for i in range(3)
        ]
    assert statuses == [401, 401, 429]


def test_requests_per_ip_on_auth_routes_are_limited(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = strict_limits(requests_per_ip=3, request_window_s=60)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        first = http.get("/auth/verify", headers=bearer("x.y.z"))
        assert first.status_code == 401 and first.headers["ratelimit-remaining"] == "2"
        http.post("/auth/refresh", json={"refresh_token": "nope"})
        http.get("/auth/me")
        limited = http.get("/auth/verify", headers=bearer("x.y.z"))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) <= 60
        assert http.get("/health/live").status_code == 200  # not an /auth/* route
        metrics = http.get("/metrics").text
    assert 'atendeai_auth_rate_limited_total{limiter="requests_per_ip"} 1' in metrics
    wait_for(lambda: count_audit(admin_conn, "rate_limited", "denied") == 1)


def test_fifty_parallel_wrong_passwords_are_all_counted(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = strict_limits(login_failures_per_account=1000, login_failures_per_ip=1000)
    barrier = threading.Barrier(50)
    with live_server(auth_db, redis_url, keys_dir, settings) as live:

        def attempt(_: int) -> int:
            with live.client() as http:
                barrier.wait()
                return http.post("/auth/login", json=WRONG).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(attempt, range(50)))
    assert statuses == [401] * 50
    client = redis.Redis.from_url(redis_url)
    assert int(client.get(account_key("alpha", "ana@alpha.test")) or 0) == 50
    assert int(client.get(account_key("alpha", "ana@alpha.test") + ":flying") or 0) == 0
    client.close()
    assert count_audit(admin_conn, "login", "failure") == 50


def test_fifty_parallel_wrong_passwords_never_get_more_guesses_than_the_limit(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    settings = strict_limits(login_failures_per_account=5, login_failures_per_ip=1000)
    barrier = threading.Barrier(50)
    with live_server(auth_db, redis_url, keys_dir, settings) as live:

        def attempt(_: int) -> int:
            with live.client() as http:
                barrier.wait()
                return http.post("/auth/login", json=WRONG).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(attempt, range(50)))
    assert statuses.count(401) == 5 and statuses.count(429) == 45
    client = redis.Redis.from_url(redis_url)
    assert int(client.get(account_key("alpha", "ana@alpha.test")) or 0) == 5
    client.close()


def test_redis_down_fails_login_and_verify_closed(
    auth_db: AuthDb, keys_dir: Path, clinic_user: Any, redis_url: str
) -> None:
    with live_server(auth_db, redis_url, keys_dir) as live:
        token = live.login()["access_token"]
    with live_server(auth_db, dead_redis_url(), keys_dir) as live, live.client() as http:
        login = http.post("/auth/login", json={**WRONG, "password": PASSWORD})
        assert login.status_code == 503 and login.json()["error"] == "unavailable"
        assert "Redis" in login.json()["message"]
        verify = http.get("/auth/verify", headers=bearer(token))
        assert verify.status_code == 503
        assert http.post("/auth/refresh", json={"refresh_token": "x"}).status_code == 503
        ready = http.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["down"] == ["redis"]
        assert http.get("/health/live").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_readiness_names_postgresql_when_it_is_down(
    redis_url: str, keys_dir: Path, pg: Any
) -> None:
    nowhere = AuthDb("", pg.url("no_such_db_here", user="atendeai_app", password="x"))
    with live_server(nowhere, redis_url, keys_dir) as live, live.client() as http:
        ready = http.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["down"] == ["postgresql"]
        assert http.get("/health/live").status_code == 200


def test_metrics_count_requests_latency_logins_by_outcome(server: LiveServer) -> None:
    with server.client() as http:
        server.login()
        http.post("/auth/login", json=WRONG)
        http.get("/auth/verify")
        text = http.get("/metrics").text
    assert 'atendeai_auth_requests_total{route="/auth/login",status="200"} 1' in text
    assert 'atendeai_auth_requests_total{route="/auth/login",status="401"} 1' in text
    assert 'atendeai_auth_requests_total{route="/auth/verify",status="401"} 1' in text
    assert 'atendeai_auth_request_duration_seconds_count{route="/auth/login"} 2' in text
    assert 'atendeai_auth_logins_total{outcome="success"} 1' in text
    assert 'atendeai_auth_logins_total{outcome="failure"} 1' in text


def test_logs_are_json_with_request_ids_and_never_hold_secrets(
    server: LiveServer, admin_conn: Conn
) -> None:
    pair = server.login()
    with server.client() as http:
        http.post("/auth/login", json=WRONG)
        refreshed = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}).json()
        http.get("/auth/verify", headers=bearer(refreshed["access_token"]))
        http.post("/auth/logout", headers=bearer(refreshed["access_token"]))
    row = admin_conn.execute("SELECT password_hash FROM atendeai.users").fetchone()
    assert row is not None
    text = server.log.getvalue()
    secrets = [
        PASSWORD,
        WRONG["password"],
        row[0],
        pair["access_token"],
        pair["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
        pair["access_token"].split(".")[2],
    ]
    for secret in secrets:
        assert secret not in text
    assert "$2b$" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) >= 5 and all(len(line["request_id"]) == 32 for line in requests)
    failed = [line for line in lines if line["event"] == "login_failed"]
    assert failed[0]["reason"] == "wrong_password" and failed[0]["request_id"]


def test_bcrypt_runs_off_the_event_loop(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    """While slow (cost 14, dummy hash: unknown user) checks run, verify and health answer."""
    slow = FAST.with_(bcrypt_cost=14, rate=RateLimits(login_failures_per_account=100))
    with live_server(auth_db, redis_url, keys_dir) as fast_live:
        token = fast_live.login()["access_token"]
    with live_server(auth_db, redis_url, keys_dir, slow) as live:
        done = threading.Event()
        statuses: list[int] = []

        def login(_: int) -> int:
            with live.client() as http:
                return http.post("/auth/login", json=UNKNOWN).status_code

        def logins() -> None:
            with ThreadPoolExecutor(4) as pool:
                statuses.extend(pool.map(login, range(4)))
            done.set()

        threading.Thread(target=logins, daemon=True).start()
        time.sleep(0.3)
        with live.client() as http:
            for _ in range(10):
                assert http.get("/auth/verify", headers=bearer(token)).status_code == 200
                assert http.get("/health/live").status_code == 200
        assert not done.is_set(), "the logins finished first: the test proved nothing"
        assert done.wait(60)
    assert statuses == [401] * 4

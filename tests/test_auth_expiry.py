"""What time does to credentials, with real waits: an expired refresh token, an older
generation presented after two rotations, and rate-limit windows that run out.

Short settings (1-2 s lifetimes and windows) keep the waits small; nothing is mocked, the
clock is PostgreSQL's and Redis's own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from atendeai_ctl.auth.ratelimit import account_key
from tests.auth_helpers import FAST, PASSWORD, AuthDb, live_server, strict_limits

Conn = psycopg.Connection[Any]
WRONG = {"clinic": "alpha", "email": "ana@alpha.test", "password": "definitely wrong"}
RIGHT = {**WRONG, "password": PASSWORD}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refresh(http: httpx.Client, token: str) -> httpx.Response:
    return http.post("/auth/refresh", json={"refresh_token": token})


def session_state(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT revoked_at IS NOT NULL, revoked_reason FROM atendeai.sessions"
    ).fetchall()


def audit(conn: Conn, action: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT outcome, detail->>'reason' FROM atendeai.audit_log WHERE action = %s ORDER BY id",
        (action,),
    ).fetchall()


def test_an_expired_refresh_token_is_refused_without_killing_the_session(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = FAST.with_(refresh_ttl_s=1)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        pair = live.login()
        time.sleep(1.5)
        expired = refresh(http, pair["refresh_token"])
        assert expired.status_code == 401
        assert expired.json()["error"] == "invalid_refresh_token"
        # expiry is not theft: the access token (its own 15 min) still works
        assert http.get("/auth/verify", headers=bearer(pair["access_token"])).status_code == 200
    assert audit(admin_conn, "refresh") == [("failure", "expired")]
    assert audit(admin_conn, "refresh_reuse") == []
    assert session_state(admin_conn) == [(False, None)]


def test_a_token_two_generations_old_revokes_the_session(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = FAST.with_(refresh_grace_s=1)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        first = live.login()
        second = refresh(http, first["refresh_token"])
        assert second.status_code == 200
        third = refresh(http, second.json()["refresh_token"])
        assert third.status_code == 200
        newest = third.json()
        time.sleep(1.5)  # past the grace: no client racing itself any more
        stolen = refresh(http, first["refresh_token"])
        assert stolen.status_code == 401
        # every generation is dead now, the newest and its access token included
        for token in (second.json()["refresh_token"], newest["refresh_token"]):
            assert refresh(http, token).status_code == 401
        for access in (first["access_token"], newest["access_token"]):
            assert http.get("/auth/verify", headers=bearer(access)).status_code == 401
    assert session_state(admin_conn) == [(True, "reuse")]
    assert audit(admin_conn, "refresh_reuse") == [("denied", "reuse")]
    live_tokens = admin_conn.execute(
        "SELECT count(*) FROM atendeai.refresh_tokens WHERE revoked_at IS NULL"
    ).fetchone()
    assert live_tokens == (0,)


def test_the_failed_login_window_runs_out(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    settings = strict_limits(login_failures_per_account=2, login_failure_window_s=2)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        assert [http.post("/auth/login", json=WRONG).status_code for _ in range(2)] == [401, 401]
        blocked = http.post("/auth/login", json=RIGHT)
        assert blocked.status_code == 429
        wait = int(blocked.headers["retry-after"])
        assert 1 <= wait <= 2
        time.sleep(wait + 0.5)
        client = redis.Redis.from_url(redis_url)
        assert client.get(account_key("alpha", "ana@alpha.test")) is None  # the window expired
        client.close()
        assert http.post("/auth/login", json=RIGHT).status_code == 200
        # a fresh window: failures count from zero again
        assert http.post("/auth/login", json=WRONG).status_code == 401


def test_the_request_window_runs_out(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    settings = strict_limits(requests_per_ip=2, request_window_s=2)
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        statuses = [http.get("/auth/verify", headers=bearer("x.y.z")) for _ in range(3)]
        assert [r.status_code for r in statuses] == [401, 401, 429]
        wait = int(statuses[2].headers["retry-after"])
        assert 1 <= wait <= 2
        time.sleep(wait + 0.5)
        again = http.get("/auth/verify", headers=bearer("x.y.z"))
        assert again.status_code == 401
        assert again.headers["ratelimit-remaining"] == "1"

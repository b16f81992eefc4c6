"""The HTTP API through a real uvicorn server: the whole flow, refresh rotation, logout."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import redis

from atendeai_ctl.auth import sessions, users
from atendeai_ctl.auth.keys import rotate_key
from tests.auth_helpers import FAST, PASSWORD, AuthDb, LiveServer, live_server

Conn = psycopg.Connection[Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_rows(conn: Conn, action: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT outcome, detail, clinic_id FROM atendeai.audit_log WHERE action = %s ORDER BY id",
        (action,),
    ).fetchall()


def test_whole_flow(server: LiveServer, admin_conn: Conn) -> None:
    with server.client() as http:
        response = http.post(
            "/auth/login",
            json={"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD},
        )
        assert response.status_code == 200
        pair = response.json()
        assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
        assert response.headers["cache-control"] == "no-store"

        verified = http.get("/auth/verify", headers=bearer(pair["access_token"]))
        assert verified.status_code == 200
        claims = verified.json()
        assert claims["iss"] == FAST.issuer and claims["aud"] == FAST.audience
        assert claims["exp"] - claims["iat"] == 900

        me = http.get("/auth/me", headers=bearer(pair["access_token"])).json()
        assert me["user"]["email"] == "ana@alpha.test" and me["user"]["role"] == "staff"
        assert me["clinic"]["slug"] == "alpha" and me["clinic"]["id"] == claims["clinic_id"]

        refreshed = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert refreshed.status_code == 200
        new = refreshed.json()
        assert new["refresh_token"] != pair["refresh_token"]
        assert http.get("/auth/verify", headers=bearer(new["access_token"])).status_code == 200

        assert http.post("/auth/logout", headers=bearer(new["access_token"])).status_code == 204
        for token in (new["access_token"], pair["access_token"]):
            refused = http.get("/auth/verify", headers=bearer(token))
            assert refused.status_code == 401
            assert refused.json()["error"] == "invalid_token"
            assert http.get("/auth/me", headers=bearer(token)).status_code == 401
        again = http.post("/auth/refresh", json={"refresh_token": new["refresh_token"]})
        assert again.status_code == 401

        jwks = http.get("/.well-known/jwks.json").json()
        assert jwt.get_unverified_header(new["access_token"])["kid"] in {
            k["kid"] for k in jwks["keys"]
        }
    for action in ("login", "refresh", "logout"):
        assert audit_rows(admin_conn, action)[0][0] == "success", action


def test_login_failures_all_look_the_same_and_audit_the_real_reason(
    server: LiveServer, admin_conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atendeai_ctl.auth import clinics, passwords

    clinics.create_clinic(admin_conn, slug="shut", name="Shut", actor="cli:test")
    users.create_user(admin_conn, FAST, clinic="shut", email="sam@shut.test", password=PASSWORD,
                      actor="cli:test")  # fmt: skip
    clinics.set_clinic_status(admin_conn, None, slug="shut", status="disabled", actor="cli:test")
    users.create_user(admin_conn, FAST, clinic="alpha", email="off@alpha.test", password=PASSWORD,
                      actor="cli:test")  # fmt: skip
    users.set_user_status(admin_conn, None, clinic="alpha", email="off@alpha.test",
                          status="disabled", actor="cli:test")  # fmt: skip
    checks: list[str] = []
    real_check = passwords.check_password

    def counting(password: str, stored: str) -> bool:
        checks.append(stored[:7])
        return real_check(password, stored)

    monkeypatch.setattr(passwords, "check_password", counting)
    cases = {
        "wrong_password": ("alpha", "ana@alpha.test", "not the password"),
        "unknown_user": ("alpha", "nobody@alpha.test", PASSWORD),
        "unknown_clinic": ("nowhere", "ana@alpha.test", PASSWORD),
        "user_disabled": ("alpha", "off@alpha.test", PASSWORD),
        "clinic_disabled": ("shut", "sam@shut.test", PASSWORD),
    }
    answers = set()
    with server.client() as http:
        for clinic, email, password in cases.values():
            response = http.post(
                "/auth/login", json={"clinic": clinic, "email": email, "password": password}
            )
            answers.add((response.status_code, response.text))
    assert answers == {
        (401, '{"error":"invalid_credentials","message":"invalid clinic, email or password"}')
    }
    # exactly one bcrypt check per attempt, at the configured cost, known account or not
    assert checks == ["$2b$10$"] * len(cases)
    reasons = [row[1]["reason"] for row in audit_rows(admin_conn, "login")]
    assert reasons == list(cases)


def test_refresh_reuse_after_the_grace_revokes_the_whole_session(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    with live_server(auth_db, redis_url, keys_dir, FAST.with_(refresh_grace_s=1)) as live:
        pair = live.login()
        with live.client() as http:
            second = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            assert second.status_code == 200
            time.sleep(1.5)
            reuse = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            assert reuse.status_code == 401
            new = second.json()
            # the thief's copy and the legitimate successor are both dead now
            assert http.post(
                "/auth/refresh", json={"refresh_token": new["refresh_token"]}
            ).status_code == 401  # fmt: skip
            assert http.get("/auth/verify", headers=bearer(new["access_token"])).status_code == 401
    rows = audit_rows(admin_conn, "refresh_reuse")
    assert len(rows) == 1 and rows[0][0] == "denied"


def test_a_token_sent_twice_within_the_grace_does_not_kill_the_session(server: LiveServer) -> None:
    pair = server.login()
    with server.client() as http:
        first = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        twice = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert first.status_code == 200 and twice.status_code == 401
        following = http.post(
            "/auth/refresh", json={"refresh_token": first.json()["refresh_token"]}
        )
        assert following.status_code == 200


def test_twenty_parallel_refreshes_of_one_token_yield_exactly_one_success(
    server: LiveServer, admin_conn: Conn
) -> None:
    """The row lock serialises the racers: one wins, the rest lose inside the grace (a client
    racing itself), so the session lives on and the winner's successor keeps working."""
    pair = server.login()
    barrier = threading.Barrier(20)

    def refresh(_: int) -> httpx.Response:
        with server.client() as http:
            barrier.wait()
            return http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(refresh, range(20)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == 19, statuses
    winner = next(r.json() for r in responses if r.status_code == 200)
    # one session, not revoked, with exactly the spent token and its one successor
    sessions_rows = admin_conn.execute("SELECT id, revoked_at FROM atendeai.sessions").fetchall()
    assert len(sessions_rows) == 1 and sessions_rows[0][1] is None
    tokens = admin_conn.execute(
        "SELECT used_at IS NOT NULL, revoked_at IS NULL FROM atendeai.refresh_tokens"
        " WHERE session_id = %s",
        (sessions_rows[0][0],),
    ).fetchall()
    assert sorted(tokens) == [(False, True), (True, True)]
    refreshes = audit_rows(admin_conn, "refresh")
    assert sorted(row[0] for row in refreshes) == ["failure"] * 19 + ["success"]
    assert {row[1]["reason"] for row in refreshes if row[0] == "failure"} == {"concurrent_use"}
    assert audit_rows(admin_conn, "refresh_reuse") == []
    with server.client() as http:
        assert http.get("/auth/verify", headers=bearer(winner["access_token"])).status_code == 200
        following = http.post("/auth/refresh", json={"refresh_token": winner["refresh_token"]})
        assert following.status_code == 200, following.text


def test_global_logout_revokes_every_session_of_the_user(server: LiveServer) -> None:
    here, there = server.login(), server.login()
    with server.client() as http:
        response = http.post(
            "/auth/logout", headers=bearer(here["access_token"]), json={"scope": "global"}
        )
        assert response.status_code == 204
        assert http.get("/auth/verify", headers=bearer(there["access_token"])).status_code == 401
        assert http.post(
            "/auth/refresh", json={"refresh_token": there["refresh_token"]}
        ).status_code == 401  # fmt: skip
        bad = http.post("/auth/logout", headers=bearer(server.login()["access_token"]),
                        json={"scope": "everything"})  # fmt: skip
        assert bad.status_code == 400


def test_a_disabled_users_token_is_refused_at_once(
    server: LiveServer, admin_conn: Conn, redis_url: str
) -> None:
    pair = server.login()
    client = redis.Redis.from_url(redis_url)
    users.set_user_status(admin_conn, sessions.Denylist(client), clinic="alpha",
                          email="ana@alpha.test", status="disabled", actor="cli:test")  # fmt: skip
    client.close()
    with server.client() as http:
        assert http.get("/auth/verify", headers=bearer(pair["access_token"])).status_code == 401
        assert http.get("/auth/me", headers=bearer(pair["access_token"])).status_code == 401


def test_rotated_key_is_used_without_restart_and_old_tokens_stay_valid(
    server: LiveServer, keys_dir: Path
) -> None:
    old = server.login()
    old_kid = jwt.get_unverified_header(old["access_token"])["kid"]
    time.sleep(1.1)
    new_kid = rotate_key(keys_dir)
    time.sleep(1.1)  # the service re-reads the directory at most once a second
    new = server.login()
    assert jwt.get_unverified_header(new["access_token"])["kid"] == new_kid
    with server.client() as http:
        assert http.get("/auth/verify", headers=bearer(old["access_token"])).status_code == 200
        kids = {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]}
    assert kids == {old_kid, new_kid}


def test_malformed_requests_get_json_errors(server: LiveServer) -> None:
    with server.client() as http:
        for body in (b"not json", b"[]", b'{"clinic": 5}', b'{"clinic":"a","email":"b"}'):
            response = http.post(
                "/auth/login", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400
            assert response.json()["error"] == "invalid_request"
        huge = http.post("/auth/refresh", content=b"x" * 20000)
        assert huge.status_code == 413
        missing = http.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        for path in ("/auth/login", "/auth/refresh"):
            wrong = http.get(path)
            assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
        no_token = http.get("/auth/verify")
        assert no_token.status_code == 401 and "Bearer" in no_token.headers["www-authenticate"]


def test_request_id_is_echoed_or_generated(server: LiveServer) -> None:
    with server.client() as http:
        given = http.get("/health/live", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = http.get("/health/live", headers={"X-Request-ID": "bad id; <script>"})
        assert len(made.headers["x-request-id"]) == 32


def test_health_and_readiness(server: LiveServer) -> None:
    with server.client() as http:
        assert http.get("/health/live").json() == {"status": "ok"}
        assert http.get("/health/ready").json() == {"status": "ok"}


def test_concurrent_users_never_see_each_others_clinic(
    server: LiveServer, admin_conn: Conn
) -> None:
    """Pooled connections with per-transaction tenants under concurrency: /auth/me stays right."""
    from atendeai_ctl.auth import clinics

    clinics.create_clinic(admin_conn, slug="beta", name="Beta", actor="cli:test")
    users.create_user(admin_conn, FAST, clinic="beta", email="bo@beta.test", password=PASSWORD,
                      actor="cli:test")  # fmt: skip
    tokens = {
        "alpha": server.login()["access_token"],
        "beta": server.login("beta", "bo@beta.test")["access_token"],
    }

    def me(slug: str) -> str:
        with server.client() as http:
            body: dict[str, Any] = http.get("/auth/me", headers=bearer(tokens[slug])).json()
            return str(body["clinic"]["slug"])

    with ThreadPoolExecutor(16) as pool:
        order = ["alpha", "beta"] * 40
        assert list(pool.map(me, order)) == order


def test_httpx_is_what_talks_to_the_server(server: LiveServer) -> None:
    """Guard: the fixture serves over a real socket (not an in-process transport)."""
    assert httpx.get(server.url + "/health/live").status_code == 200

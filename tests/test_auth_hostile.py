"""Issue 9, service side: hostile input at the auth edge, one test per finding, over real HTTP.

Every request goes to uvicorn (uvloop + httptools) on a real socket, backed by PostgreSQL and
Redis. Where a test needs an unexpected crash it injects one fault with monkeypatch: no client
input can cause one any more, which is the point of the other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from atendeai_ctl.auth import clinics, passwords, sessions, users
from atendeai_ctl.auth import http as auth_http
from atendeai_ctl.auth._resp import PipelinedRedis
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.ratelimit import RateLimiter, account_key
from atendeai_ctl.auth.service import Service
from atendeai_ctl.errors import AtendeaiError
from tests.auth_helpers import FAST, PASSWORD, AuthDb, LiveServer, live_server, strict_limits

Conn = psycopg.Connection[Any]
WRONG = "definitely not it"


class Wire:
    """One keep-alive HTTP/1.1 connection; says whether the server kept it open."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=20)
        self.conn.connect()
        self.sock = self.conn.sock

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str | bytes] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def post_json(self, path: str, body: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
        status, _, data = self.request(
            "POST", path, body, {"Content-Type": "application/json", **headers}
        )
        return status, json.loads(data) if data else {}

    def still_alive(self) -> bool:
        """The next request on the same socket succeeds."""
        if self.conn.sock is not self.sock:
            return False
        status, _, _ = self.request("GET", "/health/live")
        return status == 200 and self.conn.sock is self.sock

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def wire(server: LiveServer) -> Any:
    w = Wire(server.url)
    yield w
    w.close()


def login_body(
    clinic: str = "alpha", email: str = "ana@alpha.test", password: str = WRONG
) -> bytes:
    # ensure_ascii: NUL and lone surrogates travel as \u escapes, as an attacker sends them
    return json.dumps({"clinic": clinic, "email": email, "password": password}).encode()


def audit_rows(conn: Conn, action: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT outcome, target, host(ip), detail FROM atendeai.audit_log WHERE action = %s"
        " ORDER BY id",
        (action,),
    ).fetchall()


# -- finding 1: NUL, lone surrogates, deep nesting, huge bodies: 4xx, never 500 -----------------


@pytest.mark.parametrize("field", ["clinic", "email", "password"])
@pytest.mark.parametrize("poison", ["\x00", "\ud800", "a\udfffb"])
def test_nul_and_lone_surrogates_in_login_are_400_and_the_connection_lives(
    wire: Wire, field: str, poison: str
) -> None:
    fields = {"clinic": "alpha", "email": "ana@alpha.test", "password": WRONG}
    fields[field] = "ana" + poison
    status, body = wire.post_json("/auth/login", login_body(**fields))
    assert status == 400, body
    assert body["error"] == "invalid_request" and field in body["message"]
    assert wire.still_alive()


def test_lone_surrogate_refresh_token_is_400(wire: Wire) -> None:
    for token in ("\ud800", "abc\x00def", "x" * 600):
        status, body = wire.post_json(
            "/auth/refresh", json.dumps({"refresh_token": token}).encode()
        )
        assert status == 400 and body["error"] == "invalid_request"
        assert wire.still_alive()


def test_wrong_types_get_the_documented_error_document(wire: Wire, server: LiveServer) -> None:
    token = server.login()["access_token"]
    cases = [
        ("/auth/login", b'{"clinic": ["alpha"], "email": "a@b.c", "password": "x"}', {}),
        ("/auth/login", b'{"clinic": "alpha", "email": null, "password": "x"}', {}),
        ("/auth/login", b'{"clinic": "alpha", "email": "a@b.c", "password": 12345}', {}),
        ("/auth/refresh", b'{"refresh_token": {"$ne": null}}', {}),
        ("/auth/refresh", b"\xff\xfe\x00garbage", {}),
        ("/auth/logout", b'{"scope": ["global"]}', {"Authorization": f"Bearer {token}"}),
        ("/auth/logout", b'{"scope": "\\u0000"}', {"Authorization": f"Bearer {token}"}),
    ]
    for path, raw, headers in cases:
        status, body = wire.post_json(path, raw, **headers)
        assert status == 400, (path, raw, body)
        assert set(body) == {"error", "message"} and body["error"] == "invalid_request"
        assert wire.still_alive()


@pytest.mark.parametrize("path", ["/auth/login", "/auth/refresh", "/auth/logout"])
def test_deep_nesting_is_refused_before_parsing(wire: Wire, server: LiveServer, path: str) -> None:
    token = server.login()["access_token"]
    auth = {"Authorization": f"Bearer {token}"} if path == "/auth/logout" else {}
    for depth in (33, 5000):
        deep = b"[" * depth + b"]" * depth
        status, body = wire.post_json(path, b'{"clinic": ' + deep + b"}", **auth)
        assert status == 400, body
        assert "nests deeper than 32" in body["message"]
        assert wire.still_alive()
    # brackets inside strings are not nesting
    password = "{[" * 40
    status, _ = wire.post_json("/auth/login", login_body(password=password))
    assert status == 401


def test_a_body_over_the_limit_is_413_and_the_connection_lives(wire: Wire) -> None:
    for path in ("/auth/login", "/auth/refresh"):
        status, body = wire.post_json(path, b'{"clinic": "' + b"x" * 70_000 + b'"}')
        assert status == 413 and body["error"] == "too_large"
        assert wire.still_alive()


def test_content_length_over_the_limit_is_refused_before_the_body_arrives(
    server: LiveServer,
) -> None:
    """Today's code waits for all 70 KB; now the head alone gets the 413."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 70000\r\n\r\n{"
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413 "), head[:80]


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe\x80", b"Bearer " + b"e" * 5000, b"\xc3\x28"])
def test_odd_authorization_bytes_are_401(wire: Wire, value: bytes) -> None:
    for path in ("/auth/verify", "/auth/me"):
        status, _, body = wire.request("GET", path, headers={"Authorization": value})
        assert status == 401, body
        assert json.loads(body)["error"] == "invalid_token"
        assert wire.still_alive()


def test_deeply_nested_token_header_is_401(wire: Wire) -> None:
    import base64

    header = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).rstrip(b"=").decode()
    status, _, body = wire.request(
        "GET", "/auth/verify", headers={"Authorization": f"Bearer {header}.e30.c2ln"}
    )
    assert status == 401, body
    assert wire.still_alive()


def test_unexpected_error_is_one_500_logged_once_and_the_connection_lives(
    wire: Wire, server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(sessions, "login", crash)
    monkeypatch.setattr(auth_http, "refresh_async", crash)
    for n, (path, body) in enumerate(
        [("/auth/login", login_body()), ("/auth/refresh", b'{"refresh_token": "abc"}')]
    ):
        rid = f"crash-{n}"
        status, headers, data = wire.request(
            "POST", path, body, {"Content-Type": "application/json", "X-Request-ID": rid}
        )
        assert status == 500
        assert json.loads(data) == {"error": "internal_error", "message": "internal error"}
        assert headers["x-request-id"] == rid
        assert wire.still_alive()
        lines = [json.loads(line) for line in server.log.getvalue().splitlines()]
        errors = [
            line for line in lines if line.get("request_id") == rid and line["level"] == "error"
        ]
        assert len(errors) == 1 and errors[0]["event"] == "unhandled", errors
        assert errors[0]["error"] == "RuntimeError" and "injected" not in json.dumps(errors)
        (access,) = [
            line for line in lines if line.get("request_id") == rid and line["event"] == "request"
        ]
        assert access["status"] == 500 and 0 <= access["ms"] < 30_000


# -- finding 2: whatever ends a login other than success counts as a failure ------------------


def test_a_crashing_login_counts_as_a_failure_and_releases_its_reservation(
    auth_db: AuthDb,
    redis_url: str,
    keys_dir: Path,
    clinic_user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = strict_limits(login_failures_per_account=5)
    real_check = passwords.check_password

    def crash_once(password: str, stored: str) -> bool:
        monkeypatch.setattr(passwords, "check_password", real_check)
        raise RuntimeError("injected fault")

    with live_server(auth_db, redis_url, keys_dir, settings) as live:
        wire = Wire(live.url)
        statuses = [wire.post_json("/auth/login", login_body())[0] for _ in range(4)]
        monkeypatch.setattr(passwords, "check_password", crash_once)
        statuses.append(wire.post_json("/auth/login", login_body())[0])
        statuses.append(wire.post_json("/auth/login", login_body())[0])
        statuses.append(wire.post_json("/auth/login", login_body(password=PASSWORD))[0])
        wire.close()
    assert statuses == [401, 401, 401, 401, 500, 429, 429]
    client = redis.Redis.from_url(redis_url)
    key = account_key("alpha", "ana@alpha.test")
    assert int(client.get(key) or 0) == 5
    assert int(client.get(key + ":flying") or 0) == 0
    assert int(client.get("atendeai:rl:login:ip:127.0.0.1:flying") or 0) == 0
    client.close()


def test_a_poisoned_login_cannot_reset_the_account_counter(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> None:
    """4 guesses, one request that used to crash (and clear the count), repeat."""
    settings = strict_limits(login_failures_per_account=5)
    with live_server(auth_db, redis_url, keys_dir, settings) as live:
        wire = Wire(live.url)
        statuses = []
        for _ in range(2):
            statuses += [wire.post_json("/auth/login", login_body())[0] for _ in range(4)]
            statuses.append(wire.post_json("/auth/login", login_body(password="x\ud800"))[0])
        wire.close()
    assert statuses == [401] * 4 + [400] + [401] + [429] * 3 + [400]


def test_a_cancelled_login_finish_still_releases_and_counts(redis_url: str, keys_dir: Path) -> None:
    async def scenario() -> tuple[int, int]:
        service = Service(
            settings=FAST, ring=KeyRing(directory=keys_dir), database_url="", redis_url=redis_url
        )
        fast = PipelinedRedis(redis_url)
        service.limiter = RateLimiter(fast, FAST.rate)
        admitted = await service.limiter.login_attempt("alpha", "ana@alpha.test", "10.0.0.1")
        assert admitted.allowed
        task = asyncio.ensure_future(
            service.login_finished("alpha", "ana@alpha.test", "10.0.0.1", failed=True)
        )
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        key = account_key("alpha", "ana@alpha.test")
        failures = int(await fast.call("GET", key) or 0)
        flying = int(await fast.call("GET", key + ":flying") or 0)
        await fast.aclose()
        service.bcrypt_threads.shutdown()
        return failures, flying

    assert asyncio.run(scenario()) == (1, 0)


# -- finding 3: one normalisation for identities ------------------------------------------------


def test_spellings_of_one_account_share_one_counter(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = strict_limits(login_failures_per_account=5)
    spellings = [
        ("alpha", "ana@alpha.test"),
        ("ALPHA", "ana@alpha.test"),
        (" Alpha ", "ANA@ALPHA.TEST"),
        ("\uff41\uff4c\uff50\uff48\uff41", " Ana@Alpha.Test "),  # fullwidth "alpha"
        ("Alpha", "ana@alpha.test"),
    ]
    with live_server(auth_db, redis_url, keys_dir, settings) as live:
        wire = Wire(live.url)
        statuses = [wire.post_json("/auth/login", login_body(c, e))[0] for c, e in spellings]
        statuses += [wire.post_json("/auth/login", login_body(c, e))[0] for c, e in spellings]
        locked = wire.post_json("/auth/login", login_body("aLpHa", "Ana@alpha.test", PASSWORD))
        wire.close()
    assert statuses == [401] * 5 + [429] * 5
    assert locked[0] == 429
    failures = [row for row in audit_rows(admin_conn, "login") if row[0] == "failure"]
    assert len(failures) == 5
    assert {(row[1], row[3]["clinic"], row[3]["reason"]) for row in failures} == {
        ("email:ana@alpha.test", "alpha", "wrong_password")
    }


def test_a_correct_password_under_any_spelling_logs_in(server: LiveServer) -> None:
    for clinic, email in [(" ALPHA ", "Ana@Alpha.Test"), ("\uff41lpha", "ana@alpha.test")]:
        wire = Wire(server.url)
        status, body = wire.post_json("/auth/login", login_body(clinic, email, PASSWORD))
        wire.close()
        assert status == 200, (clinic, body)


def test_creation_stores_the_normalised_identity_and_uniqueness_agrees(admin_conn: Conn) -> None:
    made = clinics.create_clinic(admin_conn, slug=" Gamma-1 ", name="Gamma", actor="cli:test")
    assert made.slug == "gamma-1"
    with pytest.raises(AtendeaiError) as clash:
        clinics.create_clinic(admin_conn, slug="GAMMA-1", name="Gamma", actor="cli:test")
    assert clash.value.code == "conflict"
    user = users.create_user(admin_conn, FAST, clinic="Gamma-1", email=" Stra\u00dfe@Gamma.Test ",
                             password=PASSWORD, actor="cli:test")  # fmt: skip
    assert user.email == "strasse@gamma.test"
    with pytest.raises(AtendeaiError) as again:
        users.create_user(admin_conn, FAST, clinic="gamma-1", email="STRASSE@gamma.test",
                          password=PASSWORD, actor="cli:test")  # fmt: skip
    assert again.value.code == "conflict"
    assert (
        users.get_user(admin_conn, clinic="GAMMA-1", email="stra\u00dfe@gamma.test").id == user.id
    )
    with pytest.raises(AtendeaiError) as nul:
        users.create_user(admin_conn, FAST, clinic="gamma-1", email="a\x00@gamma.test",
                          password=PASSWORD, actor="cli:test")  # fmt: skip
    assert nul.value.code == "invalid"
    clinics.rename_clinic(admin_conn, slug=" GAMMA-1", name="Gamma II", actor="cli:test")
    clinics.set_clinic_status(admin_conn, None, slug="Gamma-1", status="disabled", actor="cli:test")
    targets = {
        row[1]
        for action in ("clinic.rename", "clinic.disable")
        for row in audit_rows(admin_conn, action)
    }
    assert targets == {"clinic:gamma-1"}


# -- finding 6: a role change takes effect at once --------------------------------------------


def test_a_demoted_users_access_token_is_refused_at_once(
    server: LiveServer, admin_conn: Conn, redis_url: str
) -> None:
    users.create_user(admin_conn, FAST, clinic="alpha", email="boss@alpha.test",
                      password=PASSWORD, actor="cli:test", role="admin")  # fmt: skip
    pair = server.login(email="boss@alpha.test")
    client = redis.Redis.from_url(redis_url)
    same = users.set_role(admin_conn, clinic="alpha", email="boss@alpha.test", role="admin",
                          actor="cli:test", denylist=sessions.Denylist(client))  # fmt: skip
    assert same.role == "admin"
    wire = Wire(server.url)
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    assert wire.request("GET", "/auth/verify", headers=bearer)[0] == 200  # unchanged: kept
    users.set_role(admin_conn, clinic="alpha", email="boss@alpha.test", role="staff",
                   actor="cli:test", denylist=sessions.Denylist(client))  # fmt: skip
    client.close()
    assert wire.request("GET", "/auth/verify", headers=bearer)[0] == 401
    assert wire.request("GET", "/auth/me", headers=bearer)[0] == 401
    status, _ = wire.post_json(
        "/auth/refresh", json.dumps({"refresh_token": pair["refresh_token"]}).encode()
    )
    assert status == 401
    fresh = server.login(email="boss@alpha.test")
    claims = json.loads(
        wire.request(
            "GET", "/auth/verify", headers={"Authorization": f"Bearer {fresh['access_token']}"}
        )[2]
    )
    assert claims["role"] == "staff"
    wire.close()


def test_library_lookups_with_unstorable_identities_find_nothing(
    admin_conn: Conn, clinic_user: Any
) -> None:
    """What PostgreSQL would refuse (NUL, lone surrogates) names no clinic and no user."""
    unstorable = [
        ("alpha\x00", "ana@alpha.test"),
        ("alpha", "ana\x00@alpha.test"),
        ("alpha\ud800", "ana@alpha.test"),
        ("alpha", "ana\udc00@alpha.test"),
    ]
    for clinic, email in unstorable:
        with pytest.raises(AtendeaiError) as missing:
            users.get_user(admin_conn, clinic=clinic, email=email)
        assert missing.value.code == "not_found"
    assert sessions.list_sessions(admin_conn, clinic="alpha", email="ana\x00@alpha.test") == []
    with pytest.raises(AtendeaiError) as revoke:
        sessions.revoke_user_sessions(admin_conn, None, clinic="alpha", email="a\ud800",
                                      actor="cli:test")  # fmt: skip
    assert revoke.value.code == "not_found"


@pytest.mark.parametrize("password", ["twelve chars\x00 and more", "twelve chars \ud800 more"])
def test_a_password_no_login_could_use_is_refused_when_set(password: str) -> None:
    with pytest.raises(AtendeaiError) as refused:
        passwords.hash_password(password, FAST)
    assert refused.value.code == "invalid" and "NUL" in refused.value.message

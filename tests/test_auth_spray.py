"""Issue 9: password spraying from one client, and who the client is behind proxies.

A spray spells one account many ways and forges a new X-Forwarded-For on every request; the
limits must hold anyway, and the audit log must name the real client address on every row.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from atendeai_ctl.auth.forwarding import ClientAddress
from atendeai_ctl.auth.settings import AuthSettings, RateLimits, parse_networks
from atendeai_ctl.errors import AtendeaiError
from tests.auth_helpers import FAST, PASSWORD, AuthDb, live_server
from tests.serve_helpers import auth_serve

Conn = psycopg.Connection[Any]
WRONG = "definitely not it"
SPELLINGS = [
    ("alpha", "ana@alpha.test"),
    ("ALPHA", "ANA@alpha.test"),
    (" Alpha ", " ana@ALPHA.test "),
    ("\uff21\uff2c\uff30\uff28\uff21", "Ana@Alpha.Test"),  # fullwidth capitals
]


def audit(conn: Conn) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    return conn.execute(
        "SELECT action, outcome, host(ip), detail FROM atendeai.audit_log"
        " WHERE action IN ('login', 'rate_limited') ORDER BY id"
    ).fetchall()


def wait_for_rows(conn: Conn, action: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        row = conn.execute(
            "SELECT count(*) FROM atendeai.audit_log WHERE action = %s", (action,)
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        assert time.monotonic() < deadline, f"fewer than {count} {action} rows"
        time.sleep(0.05)


def test_spray_across_spellings_and_forged_forwarding_headers_is_limited_and_audited(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = FAST.with_(rate=RateLimits(login_failures_per_account=5, login_failures_per_ip=12))
    statuses: list[int] = []
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:
        # one account, every spelling, a different forged client address each time
        for i in range(20):
            clinic, email = SPELLINGS[i % len(SPELLINGS)]
            response = http.post(
                "/auth/login",
                json={"clinic": clinic, "email": email, "password": WRONG},
                headers={"X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": f"203.0.113.{i}",
                         "Forwarded": f"for=192.0.2.{i}"},
            )  # fmt: skip
            statuses.append(response.status_code)
        account = statuses
        assert account == [401] * 5 + [429] * 15
        # many accounts from the same client, still forging: the per-IP limit (12) holds
        statuses = []
        for i in range(20):
            response = http.post(
                "/auth/login",
                json={"clinic": "alpha", "email": f"u{i}@alpha.test", "password": WRONG},
                headers={"X-Forwarded-For": f"2001:db8::{i:x}, 10.9.8.{i}"},
            )
            statuses.append(response.status_code)
        assert statuses == [401] * 7 + [429] * 13
        right = http.post(
            "/auth/login",
            json={"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD},
            headers={"X-Forwarded-For": "192.0.2.200"},
        )
        assert right.status_code == 429
    wait_for_rows(admin_conn, "rate_limited", 2)
    rows = audit(admin_conn)
    failures = [r for r in rows if r[0] == "login"]
    # every password check is one row, from the real address; 5 + 7 of them
    assert len(failures) == 12 and {r[1] for r in failures} == {"failure"}
    assert {r[2] for r in rows} == {"127.0.0.1"}
    # refused attempts: one row per limiter and window (the first refusal), same address
    blocks = sorted(r[3]["limiter"] for r in rows if r[0] == "rate_limited")
    assert blocks == ["failed_logins_per_account", "failed_logins_per_ip"]


def test_trusted_proxy_forwarding_takes_the_rightmost_untrusted_address(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn
) -> None:
    settings = FAST.with_(
        rate=RateLimits(login_failures_per_ip=2),
        trusted_proxies=parse_networks("127.0.0.1, 10.0.0.0/8"),
    )
    with live_server(auth_db, redis_url, keys_dir, settings) as live, live.client() as http:

        def attempt(forwarded: str | None) -> int:
            headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
            body = {"clinic": "alpha", "email": "nobody@alpha.test", "password": WRONG}
            return http.post("/auth/login", json=body, headers=headers).status_code

        # the client forged the left part; the proxy chain appended 203.0.113.7 and 10.1.2.3
        assert attempt("198.51.100.1, 203.0.113.7, 10.1.2.3") == 401
        assert attempt("198.51.100.2,203.0.113.7") == 401
        assert attempt("192.0.2.99, 203.0.113.7") == 429  # same client, new forgery: limited
        assert attempt("not-an-address, 10.0.0.5") == 401  # garbage: stop, use the peer
        assert attempt(None) == 401
        assert attempt("[2001:db8::1]:4711") == 401
    ips = [r[2] for r in audit(admin_conn) if r[0] == "login"]
    assert ips == ["203.0.113.7", "203.0.113.7", "127.0.0.1", "127.0.0.1", "2001:db8::1"]


def test_trusted_proxies_setting_is_parsed_with_a_clear_error() -> None:
    parsed = AuthSettings.from_env(
        {"ATENDEAI_AUTH_TRUSTED_PROXIES": "10.0.0.1, fd00::/8 172.16.0.0/12"}
    )
    assert [str(n) for n in parsed.trusted_proxies] == ["10.0.0.1/32", "fd00::/8", "172.16.0.0/12"]
    assert AuthSettings.from_env({}).trusted_proxies == ()
    for bad in ("10.0.0.0/33", "proxy.internal", "10.0.0.1;rm"):
        with pytest.raises(AtendeaiError) as error:
            AuthSettings.from_env({"ATENDEAI_AUTH_TRUSTED_PROXIES": f"10.0.0.1,{bad}"})
        assert error.value.code == "invalid"
        assert "ATENDEAI_AUTH_TRUSTED_PROXIES" in str(error.value) and bad[:10] in str(error.value)


def test_client_address_resolution_rules() -> None:
    def scope(peer: str, *forwarded: bytes) -> dict[str, Any]:
        return {"client": (peer, 1234), "headers": [(b"x-forwarded-for", f) for f in forwarded]}

    nobody = ClientAddress(())
    assert nobody(scope("127.0.0.1", b"1.2.3.4")) == "127.0.0.1"
    proxies = ClientAddress(parse_networks("127.0.0.1,10.0.0.0/8"))
    assert proxies(scope("192.0.2.1", b"1.2.3.4")) == "192.0.2.1"  # peer not trusted
    assert proxies(scope("127.0.0.1", b"1.2.3.4, 5.6.7.8", b"10.0.0.2")) == "5.6.7.8"
    assert proxies(scope("127.0.0.1", b"10.0.0.3, 10.0.0.2")) == "10.0.0.3"  # all trusted
    assert proxies(scope("127.0.0.1", b"::ffff:5.6.7.8")) == "5.6.7.8"
    assert proxies(scope("127.0.0.1", b"2001:DB8:0::1")) == "2001:db8::1"
    assert proxies(scope("127.0.0.1", b"5.6.7.8:999")) == "5.6.7.8"
    assert proxies(scope("127.0.0.1", b"\xff\xfe, ")) == "127.0.0.1"
    assert proxies({"client": None, "headers": []}) == "0.0.0.0"


def test_auth_serve_ignores_forwarding_headers_by_default(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, admin_conn: Conn,
    state_dir: Path,
) -> None:  # fmt: skip
    """`atendeai auth serve` as operators run it: uvicorn must not believe X-Forwarded-For."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env |= {
        "ATENDEAI_STATE_DIR": str(state_dir),
        "ATENDEAI_DATABASE_URL": auth_db.app_url,
        "ATENDEAI_REDIS_URL": redis_url,
        "ATENDEAI_JWT_KEYS_DIR": str(keys_dir),
        "ATENDEAI_AUTH_BCRYPT_COST": "10",
    }
    with auth_serve(env) as served:
        response = httpx.post(
            served.url + "/auth/login",
            json={"clinic": "alpha", "email": "ana@alpha.test", "password": WRONG},
            headers={"X-Forwarded-For": "198.51.100.77"},
        )
        assert response.status_code == 401
    out = served.output
    assert [r[2] for r in audit(admin_conn)] == ["127.0.0.1"]
    assert "198.51.100.77" not in out
    assert json.loads(out.splitlines()[0])["event"] == "started"

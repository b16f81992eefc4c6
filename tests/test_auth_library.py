"""The auth library against real PostgreSQL (migrated schema, RLS) and Redis, without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool

from atendeai_ctl.auth import audit, clinics, sessions, users
from atendeai_ctl.auth._db import set_tenant
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.refresh import refresh
from atendeai_ctl.auth.tokens import Verifier, refresh_token_hash
from atendeai_ctl.errors import AtendeaiError
from tests.auth_helpers import FAST, PASSWORD, AuthDb

Conn = psycopg.Connection[Any]


@pytest.fixture
def app_pool(auth_db: AuthDb, clinic_user: tuple[str, str]) -> Any:
    with ConnectionPool(auth_db.app_url, min_size=1, max_size=1, open=True) as pool:
        yield pool


@pytest.fixture
def denylist(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield sessions.Denylist(client)
    client.close()


def _audit(conn: Conn, action: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT outcome, actor, target, detail FROM atendeai.audit_log WHERE action = %s"
        " ORDER BY id",
        (action,),
    ).fetchall()


def test_clinic_and_user_admin_write_audit_rows(admin_conn: Conn) -> None:
    clinic = clinics.create_clinic(admin_conn, slug="beta", name="Beta", actor="cli:ops")
    user = users.create_user(
        admin_conn, FAST, clinic="beta", email="Bob@Beta.test", password=PASSWORD,
        actor="cli:ops", role="admin",
    )  # fmt: skip
    assert user.email == "bob@beta.test" and user.role == "admin" and user.clinic_id == clinic.id
    users.set_role(admin_conn, clinic="beta", email="bob@beta.test", role="owner", actor="cli:ops")
    users.set_user_status(
        admin_conn, None, clinic="beta", email="bob@beta.test", status="disabled", actor="cli:ops"
    )
    assert users.get_user(admin_conn, clinic="beta", email="BOB@beta.test").status == "disabled"
    assert [u.role for u in users.list_users(admin_conn, clinic="beta")] == ["owner"]
    assert clinics.get_clinic(admin_conn, "beta").name == "Beta"
    assert [c.slug for c in clinics.list_clinics(admin_conn)] == ["beta"]
    for action in ("clinic.create", "user.create", "user.set_role", "user.disable"):
        rows = _audit(admin_conn, action)
        assert len(rows) == 1 and rows[0][0] == "success" and rows[0][1] == "cli:ops", action
    entries = audit.list_audit(admin_conn, clinic="beta")
    assert entries[0].action == "user.disable"
    assert "password" not in str([e.to_dict() for e in entries]).lower().replace("set_password", "")


def test_admin_input_errors(admin_conn: Conn) -> None:
    clinics.create_clinic(admin_conn, slug="beta", name="Beta", actor="cli:ops")
    cases = [
        lambda: clinics.create_clinic(admin_conn, slug="Bad Slug", name="x", actor="cli:ops"),
        lambda: users.create_user(
            admin_conn, FAST, clinic="beta", email="not-an-email", password=PASSWORD, actor="a"
        ),
        lambda: users.create_user(
            admin_conn, FAST, clinic="beta", email="a@b.test", password=PASSWORD, actor="a",
            role="root",
        ),
        lambda: users.create_user(
            admin_conn, FAST, clinic="beta", email="a@b.test", password="short", actor="a"
        ),
    ]  # fmt: skip
    for case in cases:
        with pytest.raises(AtendeaiError) as err:
            case()
        assert err.value.code == "invalid"
    with pytest.raises(AtendeaiError) as err:
        clinics.create_clinic(admin_conn, slug="beta", name="Again", actor="cli:ops")
    assert err.value.code == "conflict"
    with pytest.raises(AtendeaiError) as err:
        users.list_users(admin_conn, clinic="nope")
    assert err.value.code == "not_found"


def test_a_failed_change_leaves_no_audit_row(admin_conn: Conn) -> None:
    clinics.create_clinic(admin_conn, slug="beta", name="Beta", actor="cli:ops")
    users.create_user(
        admin_conn, FAST, clinic="beta", email="a@b.test", password=PASSWORD, actor="cli:ops"
    )
    with pytest.raises(AtendeaiError) as err:
        users.create_user(
            admin_conn, FAST, clinic="beta", email="A@b.test", password=PASSWORD, actor="cli:ops"
        )
    assert err.value.code == "conflict"
    assert len(_audit(admin_conn, "user.create")) == 1


def test_tenant_setting_never_leaks_between_pooled_transactions(app_pool: ConnectionPool) -> None:
    with app_pool.connection() as conn, conn.transaction():
        clinic_id = conn.execute("SELECT id FROM atendeai.clinic_by_slug('alpha')").fetchone()
        assert clinic_id is not None
        set_tenant(conn, clinic_id[0])
        assert conn.execute("SELECT count(*) FROM atendeai.users").fetchone() == (1,)
    # max_size=1: the very same connection, next borrower
    with app_pool.connection() as conn, conn.transaction():
        setting = conn.execute("SELECT current_setting('atendeai.clinic_id', true)").fetchone()
        assert setting is not None and not setting[0]
        assert conn.execute("SELECT count(*) FROM atendeai.users").fetchone() == (0,)


def test_login_records_the_real_reason_and_refresh_tokens_are_stored_hashed(
    app_pool: ConnectionPool, keys_dir: Path, admin_conn: Conn
) -> None:
    ring = KeyRing(directory=keys_dir)
    pair = sessions.login(
        app_pool, ring, FAST, clinic="alpha", email="ANA@alpha.test", password=PASSWORD
    )
    rows = admin_conn.execute(
        "SELECT token_hash, round(extract(epoch FROM expires_at - now()) / 86400)"
        " FROM atendeai.refresh_tokens"
    ).fetchall()
    assert rows == [(refresh_token_hash(pair.refresh_token), 30)]
    dump = admin_conn.execute("SELECT t::text FROM atendeai.refresh_tokens t").fetchone()
    assert dump is not None and pair.refresh_token not in dump[0]
    assert Verifier(ring, FAST).verify(pair.access_token)["sub"] == pair.claims["sub"]
    with pytest.raises(sessions.AuthFailed) as err:
        sessions.login(app_pool, ring, FAST, clinic="alpha", email="ana@alpha.test",
                       password="wrong password!")  # fmt: skip
    assert err.value.reason == "wrong_password"
    outcomes = [(r[0], r[3].get("reason")) for r in _audit(admin_conn, "login")]
    assert outcomes == [("success", None), ("failure", "wrong_password")]


def test_login_rehashes_when_the_cost_rose(
    app_pool: ConnectionPool, keys_dir: Path, admin_conn: Conn
) -> None:
    ring = KeyRing(directory=keys_dir)
    stronger = FAST.with_(bcrypt_cost=11)
    sessions.login(app_pool, ring, stronger, clinic="alpha", email="ana@alpha.test",
                   password=PASSWORD)  # fmt: skip
    row = admin_conn.execute("SELECT password_hash FROM atendeai.users").fetchone()
    assert row is not None and row[0].startswith("$2b$11$")
    assert _audit(admin_conn, "login")[-1][3] == {"rehashed": True}
    sessions.login(app_pool, ring, stronger, clinic="alpha", email="ana@alpha.test",
                   password=PASSWORD)  # fmt: skip
    assert _audit(admin_conn, "login")[-1][3] == {}


def test_refresh_rotation_and_reuse_revokes_the_session(
    app_pool: ConnectionPool, keys_dir: Path, admin_conn: Conn, denylist: sessions.Denylist
) -> None:
    ring = KeyRing(directory=keys_dir)
    no_grace = FAST.with_(refresh_grace_s=0)
    first = sessions.login(app_pool, ring, FAST, clinic="alpha", email="ana@alpha.test",
                           password=PASSWORD)  # fmt: skip
    with app_pool.connection() as conn:
        second = refresh(conn, ring, no_grace, denylist, refresh_token=first.refresh_token)
        assert second.claims["sid"] == first.claims["sid"]
        with pytest.raises(sessions.AuthFailed) as err:
            refresh(conn, ring, no_grace, denylist, refresh_token=first.refresh_token)
        assert err.value.reason == "reuse"
        with pytest.raises(sessions.AuthFailed) as err:
            refresh(conn, ring, no_grace, denylist, refresh_token=second.refresh_token)
        assert err.value.reason == "revoked"
    assert denylist.revoked(second.claims)
    assert len(_audit(admin_conn, "refresh_reuse")) == 1


def test_admin_token_issue_revoke_and_user_disable(
    admin_conn: Conn, keys_dir: Path, denylist: sessions.Denylist, app_pool: ConnectionPool
) -> None:
    ring = KeyRing(directory=keys_dir)
    token, claims = sessions.issue_token(
        admin_conn, ring, FAST, clinic="alpha", email="ana@alpha.test", ttl_s=120, actor="cli:ops"
    )
    assert claims["exp"] - claims["iat"] == 120
    assert Verifier(ring, FAST).verify(token)["jti"] == claims["jti"]
    with pytest.raises(AtendeaiError) as err:
        sessions.issue_token(admin_conn, ring, FAST, clinic="alpha", email="ana@alpha.test",
                             ttl_s=10**9, actor="cli:ops")  # fmt: skip
    assert err.value.code == "invalid"
    sessions.revoke_token(admin_conn, denylist, claims, actor="cli:ops")
    assert denylist.revoked(claims)

    pair = sessions.login(app_pool, ring, FAST, clinic="alpha", email="ana@alpha.test",
                          password=PASSWORD)  # fmt: skip
    listed = sessions.list_sessions(admin_conn, clinic="alpha")
    assert pair.claims["sid"] in {str(s.id) for s in listed}
    users.set_user_status(
        admin_conn, denylist, clinic="alpha", email="ana@alpha.test", status="disabled",
        actor="cli:ops",
    )  # fmt: skip
    assert denylist.revoked(pair.claims)
    assert sessions.list_sessions(admin_conn, clinic="alpha") == []
    with pytest.raises(sessions.AuthFailed) as err:
        sessions.login(app_pool, ring, FAST, clinic="alpha", email="ana@alpha.test",
                       password=PASSWORD)  # fmt: skip
    assert err.value.reason == "user_disabled"


def test_set_password_and_revoke_user_sessions(
    admin_conn: Conn, keys_dir: Path, denylist: sessions.Denylist, app_pool: ConnectionPool
) -> None:
    ring = KeyRing(directory=keys_dir)
    pair = sessions.login(app_pool, ring, FAST, clinic="alpha", email="ana@alpha.test",
                          password=PASSWORD)  # fmt: skip
    assert sessions.revoke_user_sessions(
        admin_conn, denylist, clinic="alpha", email="ana@alpha.test", actor="cli:ops"
    ) == 1  # fmt: skip
    assert denylist.revoked(pair.claims)
    users.set_password(admin_conn, FAST, denylist, clinic="alpha", email="ana@alpha.test",
                       password="a brand new secret", actor="cli:ops")  # fmt: skip
    sessions.login(app_pool, ring, FAST, clinic="alpha", email="ana@alpha.test",
                   password="a brand new secret")  # fmt: skip
    assert len(_audit(admin_conn, "user.set_password")) == 1
    assert len(_audit(admin_conn, "session.revoke")) == 1


def test_owner_connection_stays_inside_one_clinic(admin_conn: Conn) -> None:
    """RLS does not bind the schema owner; the library's own filters must."""
    for slug in ("alpha", "beta"):
        clinics.create_clinic(admin_conn, slug=slug, name=slug.title(), actor="cli:ops")
        for email in ("same@clinic.test", f"only@{slug}.test"):
            users.create_user(
                admin_conn, FAST, clinic=slug, email=email, password=PASSWORD, actor="cli:ops"
            )
    listed = users.list_users(admin_conn, clinic="alpha")
    assert sorted(u.email for u in listed) == ["only@alpha.test", "same@clinic.test"]
    alpha_id = clinics.get_clinic(admin_conn, "alpha").id
    assert (
        users.get_user(admin_conn, clinic="alpha", email="same@clinic.test").clinic_id == alpha_id
    )
    with pytest.raises(AtendeaiError, match="no user") as err:
        users.get_user(admin_conn, clinic="alpha", email="only@beta.test")
    assert err.value.code == "not_found"

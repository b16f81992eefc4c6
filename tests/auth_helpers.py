"""Fixtures for the auth tests: a migrated database, keys, settings and a live uvicorn server.

The schema comes from the real migrations (atendeai_ctl.db.migrations.upgrade), and the
service connects as the RLS-bound `atendeai_app` role exactly as in production.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from atendeai_ctl.auth import clinics, users
from atendeai_ctl.auth._server import HTTP_PROTOCOL
from atendeai_ctl.auth.http import AuthApp
from atendeai_ctl.auth.keys import KeyRing, ensure_signing_key
from atendeai_ctl.auth.log import JsonLog
from atendeai_ctl.auth.service import Service
from atendeai_ctl.auth.settings import AuthSettings, RateLimits
from tests.servers import PostgresServer, free_port

APP_PASSWORD = "app-role-test-password"
PASSWORD = "correct horse battery"
FAST = AuthSettings(bcrypt_cost=10)


def token_claims(**changes: Any) -> dict[str, Any]:
    """A valid access token's claims for FAST, with `changes` (None drops a claim)."""
    now = int(time.time())
    claims = {
        "iss": FAST.issuer,
        "aud": FAST.audience,
        "sub": "u-1",
        "clinic_id": "c-1",
        "sid": "s-1",
        "jti": "j-1",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def refusal_reason(verifier: Any, token: str) -> str:
    """Why `verifier` refuses `token` (it must refuse it, as unauthorized)."""
    from atendeai_ctl.auth.tokens import TokenError

    with pytest.raises(TokenError) as err:
        verifier.verify(token)
    assert err.value.code == "unauthorized"
    return err.value.reason


@dataclass
class AuthDb:
    admin_url: str
    app_url: str


def copy_of(pg: PostgresServer, database_url: str, template: str) -> AuthDb:
    """`database_url`'s database replaced by a copy of `template` (a database at the
    migrations' head); `upgrade` then finds it at head and sets the app role's password, as
    on a real stack."""
    from atendeai_ctl.db.migrations import upgrade

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    upgrade(database_url, app_password=APP_PASSWORD)
    return AuthDb(database_url, pg.url(name, user="atendeai_app", password=APP_PASSWORD))


@pytest.fixture
def auth_db(pg: PostgresServer, database_url: str, migrated_template: str) -> AuthDb:
    """A fresh database at the migrations' head (a copy of conftest's `migrated_template`)."""
    return copy_of(pg, database_url, migrated_template)


@pytest.fixture(scope="session")
def seeded_template(
    pg: PostgresServer, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """`migrated_template` plus what admin_helpers.seed_through_cli writes (clinic 'alpha',
    ana@alpha.test), seeded once through the real CLI: a copy takes about 0.1 s where the two
    CLI runs take a second, and some 80 admin tests start from it. Seeding touches no Redis."""
    from tests.admin_helpers import make_cli, seed_through_cli

    name = pg.create_database()
    url = pg.url(name)
    copy_of(pg, url, migrated_template)
    base = tmp_path_factory.mktemp("seed")
    ensure_signing_key(base / "jwt")
    unreachable = "redis://127.0.0.1:1/0"  # proves the seeding needs no Redis
    seed_through_cli(make_cli(url, unreachable, base / "jwt", base / "state"))
    return name


@pytest.fixture
def seeded_db(pg: PostgresServer, database_url: str, seeded_template: str) -> AuthDb:
    """A fresh copy of `seeded_template`."""
    return copy_of(pg, database_url, seeded_template)


@pytest.fixture
def admin_conn(auth_db: AuthDb) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(auth_db.admin_url) as conn:
        yield conn


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "jwt"
    ensure_signing_key(path)
    return path


@pytest.fixture
def clinic_user(admin_conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """Clinic 'alpha' with one active staff user; returns (slug, email)."""
    clinics.create_clinic(admin_conn, slug="alpha", name="Alpha Clinic", actor="cli:test")
    users.create_user(
        admin_conn,
        FAST,
        clinic="alpha",
        email="ana@alpha.test",
        password=PASSWORD,
        actor="cli:test",
    )
    return "alpha", "ana@alpha.test"


@dataclass
class LiveServer:
    url: str
    service: Service
    log: io.StringIO

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def login(self, clinic: str = "alpha", email: str = "ana@alpha.test") -> dict[str, Any]:
        with self.client() as http:
            response = http.post(
                "/auth/login", json={"clinic": clinic, "email": email, "password": PASSWORD}
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def live_server(
    auth_db: AuthDb,
    redis_url: str,
    keys_dir: Path,
    settings: AuthSettings = FAST,
    pool_max: int = 10,
    redis_target: Any = None,
) -> Iterator[LiveServer]:
    """uvicorn (uvloop + httptools) in a thread on a free loopback port. `redis_target`: a
    redis_ha.RedisTarget (Sentinel) instead of the plain `redis_url`."""
    log = io.StringIO()
    service = Service(
        settings=settings,
        ring=KeyRing(directory=keys_dir),
        database_url=auth_db.app_url,
        redis_url=redis_url,
        pool_max=pool_max,
        log=JsonLog("debug", stream=log),
        redis_target=redis_target,
    )
    port = free_port()
    config = uvicorn.Config(
        AuthApp(service),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=HTTP_PROTOCOL,  # as `atendeai auth serve` runs it
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as `atendeai auth serve` runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the auth server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", service, log)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def server(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: tuple[str, str]
) -> Iterator[LiveServer]:
    with live_server(auth_db, redis_url, keys_dir) as live:
        yield live


def strict_limits(**changes: int) -> AuthSettings:
    return FAST.with_(rate=RateLimits(**changes))


def dead_redis_url() -> str:
    """A Redis URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PostgresServer, RedisServer, postgres_server, redis_server
from tests.stack_helpers import docker_unavailable

pytest_plugins = ["tests.auth_helpers"]
REQUIRE_DOCKER = "ATENDEAI_TEST_REQUIRE_DOCKER"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `docker` are skipped, with one reason, when no engine (or image) is here;
    with ATENDEAI_TEST_REQUIRE_DOCKER=1 that is an error before any test runs instead, so CI
    never passes by skipping them. Runs last, after `-m`/`-k` have deselected what they do."""
    needing = [item for item in items if item.get_closest_marker("docker")]
    if not needing:
        return
    reason = docker_unavailable()
    if reason is None:
        return
    if os.environ.get(REQUIRE_DOCKER, "") not in ("", "0"):
        raise pytest.UsageError(
            f"{REQUIRE_DOCKER} is set and {len(needing)} selected tests need Docker, but {reason}"
        )
    for item in needing:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole run."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def database_url(pg: PostgresServer) -> Iterator[str]:
    """A fresh, empty database per test (superuser URL)."""
    name = pg.create_database()
    yield pg.url(name)
    pg.drop_database(name)


@pytest.fixture(scope="session")
def migrated_template(pg: PostgresServer) -> str:
    """A database migrated to head once per session, for auth_helpers.auth_db to copy: a copy
    takes about 0.08 s where running the migrations takes 0.4 s, and some 180 tests need one."""
    from atendeai_ctl.db.migrations import upgrade
    from tests.auth_helpers import APP_PASSWORD

    name = pg.create_database()
    upgrade(pg.url(name), app_password=APP_PASSWORD)
    return name


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> Iterator[str]:
    import redis

    url = redis_srv.url()
    client = redis.Redis.from_url(url)
    client.flushall()
    yield url
    client.flushall()
    client.close()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated ATENDEAI_STATE_DIR, so tests never touch the operator's secrets."""
    path = tmp_path / "state"
    monkeypatch.setenv("ATENDEAI_STATE_DIR", str(path))
    for key in list(os.environ):
        if (
            key.startswith("ATENDEAI_")
            and key != "ATENDEAI_STATE_DIR"
            and not key.startswith("ATENDEAI_TEST_")
        ):
            monkeypatch.delenv(key)
    return path

"""Refreshes queue for a database turn (Service.db_turn) in front of the async pool, so under
load they never enter psycopg_pool's own wait (a Task per waiting request); the wait keeps
the pool's limit (db_timeout_s, then PoolTimeout) and shows in the pool's waiting gauge."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.service import Service
from atendeai_ctl.auth.tokens import new_refresh_token, refresh_token_hash
from tests.auth_helpers import FAST, AuthDb, live_server

CONCURRENT = 24
POOL_MAX = 2


def _seed_tokens(admin: psycopg.Connection[Any], count: int) -> list[str]:
    """`count` live sessions of the test user, one unused refresh token each."""
    row = admin.execute("SELECT clinic_id, id FROM atendeai.users LIMIT 1").fetchone()
    assert row is not None
    clinic_id, user_id = row
    tokens = [new_refresh_token() for _ in range(count)]
    sessions = [uuid.uuid4() for _ in range(count)]
    admin.execute(
        "INSERT INTO atendeai.sessions (id, clinic_id, user_id, expires_at)"
        " SELECT unnest(%s::uuid[]), %s, %s, now() + interval '1 day'",
        (sessions, clinic_id, user_id),
    )
    admin.execute(
        "INSERT INTO atendeai.refresh_tokens (clinic_id, session_id, token_hash, expires_at)"
        " SELECT %s, s, h, now() + interval '1 day' FROM unnest(%s::uuid[], %s::bytea[]) t(s, h)",
        (clinic_id, sessions, [refresh_token_hash(t) for t in tokens]),
    )
    admin.commit()
    return tokens


@pytest.mark.usefixtures("clinic_user")
def test_parallel_refreshes_never_wait_inside_the_pool(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, admin_conn: psycopg.Connection[Any]
) -> None:
    tokens = _seed_tokens(admin_conn, CONCURRENT)
    with live_server(auth_db, redis_url, keys_dir, pool_max=POOL_MAX) as live:
        pool = live.service.apool
        assert pool is not None
        deadline = time.monotonic() + 10
        while pool.get_stats()["pool_available"] < POOL_MAX:  # every connection open
            assert time.monotonic() < deadline, pool.get_stats()
            time.sleep(0.05)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
                answers = await asyncio.gather(
                    *(http.post("/auth/refresh", json={"refresh_token": t}) for t in tokens)
                )
            return [a.status_code for a in answers]

        assert asyncio.run(burst()) == [200] * CONCURRENT
        stats = pool.get_stats()
        assert stats.get("requests_queued", 0) == 0, stats
        assert stats["requests_num"] >= CONCURRENT
        assert live.service.db_turns_waiting == 0
    rotated = admin_conn.execute(
        "SELECT count(*) FROM atendeai.refresh_tokens WHERE token_hash = ANY(%s)"
        " AND used_at IS NOT NULL AND replaced_by IS NOT NULL",
        ([refresh_token_hash(t) for t in tokens],),
    ).fetchone()
    assert rotated == (CONCURRENT,)


def test_a_turn_waits_at_most_the_db_timeout_and_is_counted_meanwhile(
    keys_dir: Path,
) -> None:
    settings = FAST.with_(db_timeout_s=0.2)
    service = Service(
        settings=settings,
        ring=KeyRing(directory=keys_dir),
        database_url="postgresql://nobody@127.0.0.1:1/none",
        redis_url="redis://127.0.0.1:1/0",
        pool_max=1,
    )

    async def scenario() -> tuple[float, int]:
        await service.db_turn()  # the only turn, held
        waiter = asyncio.ensure_future(service.db_turn())
        await asyncio.sleep(0.05)
        counted = service.db_turns_waiting
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await waiter
        waited = time.monotonic() - started
        assert service.db_turns_waiting == 0
        service.db_turns.release()
        await asyncio.wait_for(service.db_turn(), 1)  # free again: taken at once
        return waited, counted

    waited, counted = asyncio.run(scenario())
    assert counted == 1
    assert 0.05 < waited < 1.0

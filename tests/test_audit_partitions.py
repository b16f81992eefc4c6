"""`migrate up` creates the coming months' audit_log partitions, also when already at head."""

from __future__ import annotations

import json

import psycopg

from atendeai_ctl.db import migrations
from tests.db_helpers import cli


def coming_partitions(url: str, months: int = 3) -> list[str]:
    """audit_log_YYYY_MM for this month and the next `months`, by the server's clock (UTC)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT 'audit_log_' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') "
            "+ make_interval(months => i), 'YYYY_MM') FROM generate_series(0, %s) AS i",
            [months],
        ).fetchall()
    return [r[0] for r in rows]


def attached_partitions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'atendeai.audit_log'::regclass"
        ).fetchall()
    return {r[0] for r in rows}


def drop_future(url: str) -> list[str]:
    future = coming_partitions(url)[1:]
    with psycopg.connect(url) as conn:
        for name in future:
            conn.execute(f"DROP TABLE atendeai.{name}")
    assert not set(future) & attached_partitions(url)
    return future


def test_up_creates_the_coming_months(database_url: str) -> None:
    migrations.upgrade(database_url)
    assert set(coming_partitions(database_url)) <= attached_partitions(database_url)


def test_up_at_head_creates_missing_partitions_again(database_url: str) -> None:
    """The fast path (no Alembic) of a database at head still ensures them: the migrate job
    runs on every `up`, and that is what keeps the months ahead existing."""
    migrations.upgrade(database_url)
    future = drop_future(database_url)
    outcome = migrations.upgrade(database_url)
    assert outcome.applied == [] and outcome.planned == []
    assert outcome.partitions_created == len(future)
    assert set(coming_partitions(database_url)) <= attached_partitions(database_url)
    again = migrations.upgrade(database_url)
    assert again.partitions_created == 0


def test_the_cli_migrate_up_at_head_ensures_them(database_url: str, state_dir: object) -> None:
    first = cli("migrate", "up", "--database-url", database_url)
    assert first.returncode == 0, first.stderr
    drop_future(database_url)
    second = cli("migrate", "up", "--json", "--database-url", database_url)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["partitions_created"] == 3
    assert set(coming_partitions(database_url)) <= attached_partitions(database_url)


def test_up_to_an_older_revision_then_head_ensures_them(database_url: str) -> None:
    """The full Alembic path (not at head) ensures them after migrating, too."""
    migrations.upgrade(database_url, "0002")
    drop_future(database_url)
    outcome = migrations.upgrade(database_url)
    assert outcome.applied == ["0003", "0004", "0005"]
    assert set(coming_partitions(database_url)) <= attached_partitions(database_url)


def test_ensure_on_a_database_without_the_function_is_none(database_url: str) -> None:
    assert migrations.ensure_audit_partitions(database_url) is None

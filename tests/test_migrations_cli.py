"""`atendeai migrate` as an operator runs it: a real subprocess, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from atendeai_ctl.db import migrations
from atendeai_ctl.db.migrations import MIGRATION_LOCK_KEY
from tests.db_helpers import ROOT, SCHEMA_TABLES, cli, current, dbname, tables
from tests.servers import PostgresServer, free_port

HEAD = "0005"


def write_secrets(state_dir: Path, **values: str) -> None:
    project = state_dir / "atendeai"
    project.mkdir(parents=True, exist_ok=True)
    (project / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.usefixtures("state_dir")
def test_status_exit_code_follows_pending_migrations(database_url: str) -> None:
    behind = cli("migrate", "status", "--json", "--database-url", database_url)
    assert behind.returncode == 3
    assert json.loads(behind.stdout) == {
        "current": None,
        "head": HEAD,
        "pending": ["0001", "0002", "0003", "0004", "0005"],
    }
    up = cli("migrate", "up", "--database-url", database_url)
    assert up.returncode == 0, up.stderr
    assert "Running upgrade 0002 -> 0003" in up.stderr
    at_head = cli("migrate", "status", "--json", "--database-url", database_url)
    assert at_head.returncode == 0
    assert json.loads(at_head.stdout) == {"current": HEAD, "head": HEAD, "pending": []}
    assert at_head.stderr == ""


@pytest.mark.usefixtures("state_dir")
def test_up_to_a_revision_and_dry_run(database_url: str) -> None:
    dry = cli("migrate", "up", "--dry-run", "--database-url", database_url)
    assert dry.returncode == 0
    assert "would apply 0001" in dry.stdout and "would apply 0003" in dry.stdout
    assert tables(database_url) == set()
    partial = cli("migrate", "up", "0002", "--database-url", database_url)
    assert partial.returncode == 0, partial.stderr
    assert current(database_url) == "0002"


def test_database_url_comes_from_the_environment_too(database_url: str, state_dir: Path) -> None:
    result = cli("migrate", "up", env={"ATENDEAI_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert current(database_url) == HEAD


def test_default_target_is_the_stacks_database(
    database_url: str, state_dir: Path, pg: PostgresServer
) -> None:
    write_secrets(state_dir, ATENDEAI_POSTGRES_PASSWORD=pg.password)
    env = {
        "ATENDEAI_POSTGRES_PORT": str(pg.port),
        "ATENDEAI_POSTGRES_USER": pg.user,
        "ATENDEAI_POSTGRES_DB": dbname(database_url),
    }
    result = cli("migrate", "up", env=env)
    assert result.returncode == 0, result.stderr
    assert current(database_url) == HEAD


def test_up_sets_the_app_password_from_the_state_dir(
    database_url: str, state_dir: Path, pg: PostgresServer
) -> None:
    write_secrets(state_dir, ATENDEAI_APP_DB_PASSWORD="from-the-state-dir")
    result = cli("migrate", "up", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert "from-the-state-dir" not in result.stdout + result.stderr
    psycopg.connect(pg.url(dbname(database_url), "atendeai_app", "from-the-state-dir")).close()


def test_up_sets_the_app_password_from_the_environment(
    database_url: str, state_dir: Path, pg: PostgresServer
) -> None:
    env = {"ATENDEAI_APP_DB_PASSWORD": "from-the-env"}
    result = cli("migrate", "up", "--database-url", database_url, env=env)
    assert result.returncode == 0, result.stderr
    psycopg.connect(pg.url(dbname(database_url), "atendeai_app", "from-the-env")).close()


@pytest.mark.usefixtures("state_dir")
def test_up_without_any_password_says_so(database_url: str) -> None:
    result = cli("migrate", "up", "--database-url", database_url)
    assert result.returncode == 0
    assert "atendeai_app password was not set" in result.stderr


@pytest.mark.usefixtures("state_dir")
def test_rollback_without_a_terminal_and_without_yes_is_refused(database_url: str) -> None:
    migrations.upgrade(database_url)
    result = cli("migrate", "rollback", "--database-url", database_url)
    assert result.returncode == 7
    assert "--yes" in one_error_line(result)
    assert current(database_url) == HEAD


def test_rollback_backs_up_first(database_url: str, state_dir: Path) -> None:
    migrations.upgrade(database_url)
    result = cli("migrate", "rollback", "--yes", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert current(database_url) == "0004"
    dumps = list((state_dir / "atendeai" / "backups").glob("*.dump"))
    assert len(dumps) == 1
    assert str(dumps[0]) in result.stderr
    assert dumps[0].stat().st_mode & 0o777 == 0o600
    assert dumps[0].read_bytes().startswith(b"PGDMP")


def test_rollback_dry_run_and_no_backup(database_url: str, state_dir: Path) -> None:
    migrations.upgrade(database_url)
    dry = cli("migrate", "rollback", "--to", "base", "--dry-run", "--database-url", database_url)
    assert dry.returncode == 0
    planned = [line.split()[2] for line in dry.stdout.splitlines()[:5]]
    assert planned == ["0005", "0004", "0003", "0002", "0001"]
    assert current(database_url) == HEAD
    result = cli(
        "migrate", "rollback", "--to", "base", "--yes", "--no-backup", "--json",
        "--database-url", database_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["applied"] == ["0005", "0004", "0003", "0002", "0001"]
    assert tables(database_url) == set()
    assert not list((state_dir / "atendeai" / "backups").glob("*"))


@pytest.mark.usefixtures("state_dir")
def test_history_and_sql() -> None:
    history = cli("migrate", "history", "--json")
    assert history.returncode == 0
    revisions = json.loads(history.stdout)
    assert [r["revision"] for r in revisions] == ["0001", "0002", "0003", "0004", "0005"]
    assert [r["is_head"] for r in revisions] == [False, False, False, False, True]
    sql = cli("migrate", "sql")
    assert sql.returncode == 0
    assert "CREATE TABLE atendeai.users" in sql.stdout
    down = cli("migrate", "sql", "0003:0002")
    assert "DROP TABLE atendeai.messages" in down.stdout


def bad_inputs(url: str, pg: PostgresServer) -> dict[str, tuple[list[str], int]]:
    db = dbname(url)
    return {
        "unreachable": (["migrate", "up", "--database-url", pg.url(db).replace(
            f":{pg.port}/", f":{free_port()}/")], 1),
        "wrong password": (["migrate", "status", "--database-url",
                            pg.url(db, password="Wr0ng-S3cret")], 8),
        "no such database": (["migrate", "up", "--database-url", pg.url("missing_db")], 4),
        "unknown revision": (["migrate", "up", "nope", "--database-url", url], 4),
        "unknown rollback target": (["migrate", "rollback", "--to", "nope", "--yes",
                                     "--database-url", url], 4),
        "database ahead": (["migrate", "up", "--database-url", url], 5),
        "not a postgres url": (["migrate", "status", "--database-url", "mysql://x@y/z"], 6),
        "json mode": (["migrate", "status", "--json", "--database-url", url], 5),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "unreachable",
        "wrong password",
        "no such database",
        "unknown revision",
        "unknown rollback target",
        "database ahead",
        "not a postgres url",
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    case: str, database_url: str, pg: PostgresServer, state_dir: Path
) -> None:
    if case == "database ahead":
        migrations.upgrade(database_url)
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE atendeai.alembic_version SET version_num = 'f00d'")
    args, code = bad_inputs(database_url, pg)[case]
    result = cli(*args)
    assert result.returncode == code, result.stderr
    line = one_error_line(result)
    assert "Wr0ng-S3cret" not in line and pg.password not in line
    if case == "database ahead":
        assert "f00d" in line


def test_errors_in_json_mode_are_a_json_document(
    database_url: str, pg: PostgresServer, state_dir: Path
) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE atendeai.alembic_version SET version_num = 'f00d'")
    args, code = bad_inputs(database_url, pg)["json mode"]
    result = cli(*args)
    assert result.returncode == code
    assert json.loads(result.stdout)["error"]["code"] == "conflict"


def waiting_for_the_migration_lock(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND (classid::bigint << 32 | objid::bigint) = %s",
            [MIGRATION_LOCK_KEY],
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.usefixtures("state_dir")
def test_two_concurrent_ups_apply_each_migration_once(database_url: str) -> None:
    """Hold the lock so both runs are certainly concurrent; each must wait, then finish."""
    holder = psycopg.connect(database_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    command = [sys.executable, "-m", "atendeai_ctl", "migrate", "up", "--database-url"]
    procs = [
        subprocess.Popen(
            [*command, database_url],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while waiting_for_the_migration_lock(database_url) < 2:
            assert time.monotonic() < deadline, "the two runs never queued on the lock"
            time.sleep(0.1)
        assert all(p.poll() is None for p in procs)
    finally:
        holder.close()
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    stderr = "".join(err for _, err in results)
    assert stderr.count("Running upgrade") == 5, stderr
    for revision in ("0001", "0002", "0003", "0004", "0005"):
        assert stderr.count(f"-> {revision},") == 1, stderr
    assert sorted(out.strip().split(";")[0] for out, _ in results) == [f"at {HEAD}"] * 2
    assert tables(database_url) == SCHEMA_TABLES


def test_a_plain_alembic_command_uses_the_same_migrations(
    database_url: str, state_dir: Path
) -> None:
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini")]
    result = subprocess.run(
        [*alembic, "-x", f"url={database_url}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert current(database_url) == HEAD
    status = cli("migrate", "status", "--database-url", database_url)
    assert status.returncode == 0

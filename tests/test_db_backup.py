"""pg_dump / pg_restore: round trips, tool choice, and the password kept off argv."""

from __future__ import annotations

import stat
from pathlib import Path

import psycopg
import pytest

from atendeai_ctl.db import backup, migrations
from atendeai_ctl.errors import AtendeaiError
from tests.db_helpers import cli, current


def clinic_slugs(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT slug FROM atendeai.clinics ORDER BY slug")]


def add_clinic(url: str, slug: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO atendeai.clinics (slug, name) VALUES (%s, %s)", [slug, slug])


def test_dump_then_restore_brings_the_data_back(database_url: str, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    add_clinic(database_url, "kept")
    path = backup.dump(database_url, tmp_path / "nested" / "db.dump")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["db.dump"]
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM atendeai.clinics")
    add_clinic(database_url, "added-later")
    backup.restore(database_url, path)
    assert clinic_slugs(database_url) == ["kept"]
    assert current(database_url) == "0005"


def test_restore_refuses_files_that_are_not_dumps(database_url: str, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AtendeaiError) as raised:
        backup.restore(database_url, text)
    assert raised.value.code == "invalid"
    with pytest.raises(AtendeaiError) as raised:
        backup.restore(database_url, tmp_path / "missing.dump")
    assert raised.value.code == "not_found"


def test_a_failed_dump_leaves_no_file(database_url: str, tmp_path: Path) -> None:
    target = tmp_path / "out.dump"
    with pytest.raises(AtendeaiError) as raised:
        backup.dump(database_url.replace("/t_", "/missing_t_"), target)
    assert raised.value.code == "not_found"
    assert list(tmp_path.iterdir()) == []


def test_the_password_goes_in_the_environment_not_argv() -> None:
    url = "postgresql://owner:s3cr%40t@db.example:5433/app?sslmode=disable"
    argv, env = backup.command(Path("/usr/bin/pg_dump"), url, ["--format=custom"])
    assert not any("s3cr" in arg for arg in argv)
    assert env["PGPASSWORD"] == "s3cr@t"
    dbname = argv[-1]
    assert dbname.startswith("--dbname=")
    for part in ("host=db.example", "port=5433", "user=owner", "dbname=app", "sslmode=disable"):
        assert part in dbname


def fake_tool(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True)
    tool = directory / "pg_dump"
    tool.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n")
    tool.chmod(0o755)
    return tool


def test_the_tool_closest_to_the_server_and_not_older_is_chosen(tmp_path: Path) -> None:
    v14 = fake_tool(tmp_path / "14", "14.11")
    v16 = fake_tool(tmp_path / "16", "16.4 (Debian 16.4-1)")
    v15 = fake_tool(tmp_path / "15", "15.8")
    broken = tmp_path / "broken" / "pg_dump"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    tools = [v14, v16, v15, broken]
    assert backup.find_tool("pg_dump", 15, tools).path == v15
    assert backup.find_tool("pg_dump", 16, tools).path == v16
    assert backup.find_tool("pg_dump", 13, tools).path == v14
    with pytest.raises(AtendeaiError) as raised:
        backup.find_tool("pg_dump", 17, tools)
    assert raised.value.code == "not_found"
    assert "17" in raised.value.message and "16" in raised.value.message


def test_installed_pg_dump_is_found() -> None:
    assert backup.find_tool("pg_dump", None).major >= 15


def test_cli_backup_and_restore(database_url: str, state_dir: Path, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    add_clinic(database_url, "original")
    default = cli("db", "backup", "--database-url", database_url)
    assert default.returncode == 0, default.stderr
    default_path = Path(default.stdout.strip())
    assert default_path.parent == state_dir / "atendeai" / "backups"
    assert default_path.is_file()

    chosen = tmp_path / "chosen.dump"
    result = cli("db", "backup", "--output", str(chosen), "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(chosen)
    add_clinic(database_url, "later")

    refused = cli("db", "restore", str(chosen), "--database-url", database_url)
    assert refused.returncode == 7
    assert clinic_slugs(database_url) == ["later", "original"]

    restored = cli("db", "restore", str(chosen), "--yes", "--database-url", database_url)
    assert restored.returncode == 0, restored.stderr
    assert clinic_slugs(database_url) == ["original"]

    missing = cli(
        "db", "restore", str(tmp_path / "nope.dump"), "--yes", "--database-url", database_url
    )
    assert missing.returncode == 4
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_a_failed_restore_puts_the_old_schema_back(database_url: str, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP ROLE IF EXISTS restore_test_owner")
        conn.execute("CREATE ROLE restore_test_owner")
        conn.execute("CREATE TABLE atendeai.extra (id int)")
        conn.execute("ALTER TABLE atendeai.extra OWNER TO restore_test_owner")
    path = backup.dump(database_url, tmp_path / "db.dump")
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TABLE atendeai.extra")
        conn.execute("DROP ROLE restore_test_owner")
    add_clinic(database_url, "current")
    with pytest.raises(AtendeaiError) as raised:
        backup.restore(database_url, path)
    assert raised.value.code == "failed"
    assert "restore_test_owner" in raised.value.message
    assert clinic_slugs(database_url) == ["current"]
    with psycopg.connect(database_url) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'atendeai%'"
        ).fetchall()
    assert schemas == [("atendeai",)]

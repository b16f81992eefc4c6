"""A rollback whose safety backup fails must not roll back: back up, act - never act unbacked.

The failures are real ones: a `pg_dump` that exits 1 (first on PATH, and the version the
tool finder prefers, so it is the one run) and a backups directory that cannot be created.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from atendeai_ctl.db import backup, migrations
from atendeai_ctl.db.backup import find_tool, server_major
from atendeai_ctl.errors import AtendeaiError
from tests.db_helpers import cli, current, schema_dump

HEAD = "0005"

# Claims the server's major with the newest minor, so the finder picks it over the real one;
# then fails like a full disk.
FAILING_PG_DUMP = """#!/bin/sh
case "$1" in
  --version) echo "pg_dump (PostgreSQL) {major}.99"; exit 0 ;;
esac
echo "pg_dump: error: could not write to output file: No space left on device" >&2
exit 1
"""


def _failing_pg_dump(directory: Path, database_url: str) -> Path:
    directory.mkdir()
    tool = directory / "pg_dump"
    tool.write_text(FAILING_PG_DUMP.format(major=server_major(database_url)))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def _assert_untouched(database_url: str, before: str, backups: Path) -> None:
    assert current(database_url) == HEAD
    assert schema_dump(database_url) == before
    leftovers = list(backups.iterdir()) if backups.is_dir() else []
    assert leftovers == [], leftovers  # no partial dump left to be mistaken for a backup


def test_a_failing_pg_dump_stops_the_rollback(
    database_url: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(database_url)
    before = schema_dump(database_url)
    bin_dir = _failing_pg_dump(tmp_path / "bin", database_url)
    with monkeypatch.context() as patched:  # the real pg_dump again after, for schema_dump
        patched.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        # the fake is the one the CLI will pick, or this test proves nothing
        assert find_tool("pg_dump", server_major(database_url)).path.parent == bin_dir
        result = cli("migrate", "rollback", "--to", "base", "--yes", "--database-url", database_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "pg_dump" in errors[0] and "No space left" in errors[0]
    assert "Running downgrade" not in result.stderr
    _assert_untouched(database_url, before, state_dir / "atendeai" / "backups")


def test_a_backups_directory_that_cannot_be_made_stops_the_rollback(
    database_url: str, state_dir: Path
) -> None:
    migrations.upgrade(database_url)
    before = schema_dump(database_url)
    project = state_dir / "atendeai"
    project.mkdir(parents=True)
    (project / "backups").write_text("a file where the backups directory should be\n")
    result = cli("migrate", "rollback", "--yes", "--database-url", database_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "backups" in errors[0], result.stderr
    assert "Running downgrade" not in result.stderr
    assert current(database_url) == HEAD
    assert schema_dump(database_url) == before


@pytest.mark.usefixtures("state_dir")
def test_no_backup_is_the_only_way_past_a_failing_pg_dump(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with --no-backup the same broken pg_dump is never run, and it rolls back."""
    migrations.upgrade(database_url)
    bin_dir = _failing_pg_dump(tmp_path / "bin", database_url)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    result = cli("migrate", "rollback", "--yes", "--no-backup", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert current(database_url) == "0004"


def test_a_backup_into_a_path_that_cannot_be_made_is_one_clear_error(
    database_url: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(AtendeaiError) as raised:
        backup.dump(database_url, blocker / "out.dump")
    assert raised.value.code == "failed"
    assert str(blocker) in raised.value.message
    assert blocker.read_text() == ""

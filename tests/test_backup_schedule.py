"""Scheduled backups: `atendeai db schedule` runs the real scheduler loop on a short schedule
(cronsim's seconds field), against a real PostgreSQL, and `status` reads what it left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atendeai_ctl.config import load_config
from atendeai_ctl.db import migrations
from atendeai_ctl.db.backup import list_backups, take_backup
from atendeai_ctl.db.manifest import load_manifest, manifest_path
from atendeai_ctl.db.schedule import STATUS_FILE, Schedule, read_status
from atendeai_ctl.db.verify import verify_backup
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.backup_status import backup_warnings
from tests.db_helpers import ROOT, cli, current
from tests.servers import PostgresServer
from tests.test_audit_partitions import attached_partitions, coming_partitions, drop_future


def schedule(
    url: str, backups: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return cli(
        "db",
        "schedule",
        "--database-url",
        url,
        *args,
        env={"ATENDEAI_BACKUP_DIR": str(backups), "ATENDEAI_PROJECT": "sched"},
        timeout=timeout,
    )


def test_a_short_schedule_fires_and_writes_verified_backups(
    database_url: str, tmp_path: Path, state_dir: Path
) -> None:
    migrations.upgrade(database_url)
    backups = tmp_path / "backups"
    started = time.monotonic()
    done = schedule(database_url, backups, "--schedule", "*/2 * * * * *", "--max-runs", "2")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(" backup ok " in line for line in lines), lines
    assert all("verified" in line for line in lines)
    assert "'*/2 * * * * *'" in done.stderr  # the one line saying what it does
    entries = list_backups(backups)
    assert len(entries) == 2
    for entry in entries:
        assert entry.manifest is not None
        assert entry.manifest.project == "sched" and entry.manifest.reason == "scheduled"
        assert entry.manifest.revision == current(database_url)
        assert entry.manifest.verified is not None and entry.manifest.verified.ok
    first, second = sorted(e.manifest.created for e in entries if e.manifest)
    assert (second - first).total_seconds() >= 1.5
    assert elapsed < 30
    status = read_status(backups)
    assert status is not None and status["schedule"] == "*/2 * * * * *"
    assert status["last_run"]["ok"] is True and status["last_run"]["file"] in {
        str(e.path) for e in entries
    }
    assert (backups / STATUS_FILE).stat().st_mode & 0o077 == 0


def test_retention_keeps_the_newest_and_json_lines(
    database_url: str, tmp_path: Path, state_dir: Path
) -> None:
    migrations.upgrade(database_url)
    backups = tmp_path / "backups"
    done = schedule(
        database_url,
        backups,
        "--schedule",
        "* * * * * *",
        "--max-runs",
        "3",
        "--keep",
        "2",
        "--no-verify",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    runs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["ok"] for r in runs] == [True, True, True]
    assert runs[2]["pruned"] == [runs[0]["file"]]
    assert all(r["verified"] is None for r in runs)
    kept = {str(e.path) for e in list_backups(backups)}
    assert kept == {runs[1]["file"], runs[2]["file"]}
    assert not Path(runs[0]["file"]).exists()
    assert not manifest_path(Path(runs[0]["file"])).exists()


def test_each_run_creates_the_coming_partitions_and_counts_the_catch_all(
    database_url: str, tmp_path: Path, state_dir: Path
) -> None:
    migrations.upgrade(database_url)
    future = drop_future(database_url)
    with psycopg.connect(database_url) as conn:  # a month with no partition of its own
        conn.execute(
            "INSERT INTO atendeai.audit_log (at, action, actor, outcome)"
            " VALUES ('2001-01-15', 'test', 'cli:test', 'success')"
        )
    backups = tmp_path / "backups"
    done = schedule(database_url, backups, "--once", "--json", "--no-verify")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["partitions_created"] == len(future) == 3
    assert run["audit_default_rows"] == 1
    assert set(coming_partitions(database_url)) <= attached_partitions(database_url)
    config = load_config({"ATENDEAI_BACKUP_DIR": str(backups), "ATENDEAI_PROJECT": "sched"})
    warnings = backup_warnings(config, {"backup"})
    assert any("1 rows in the catch-all partition" in w for w in warnings), warnings


def test_a_failed_run_is_reported_and_the_loop_goes_on(tmp_path: Path, state_dir: Path) -> None:
    dead = "postgresql://nobody:pw@127.0.0.1:1/none"
    backups = tmp_path / "backups"
    done = schedule(dead, backups, "--schedule", "* * * * * *", "--max-runs", "2")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("backup FAILED" in line for line in lines), lines
    assert "pw@" not in done.stdout + done.stderr
    status = read_status(backups)
    assert status is not None and status["last_run"]["ok"] is False
    config = load_config({"ATENDEAI_BACKUP_DIR": str(backups), "ATENDEAI_PROJECT": "sched"})
    assert any("last scheduled run" in w for w in backup_warnings(config, {"backup"}))


def test_sigterm_ends_the_wait_at_once_with_exit_0(tmp_path: Path, state_dir: Path) -> None:
    env = {
        **os.environ,
        "ATENDEAI_BACKUP_DIR": str(tmp_path / "backups"),
        "ATENDEAI_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "atendeai_ctl", "db", "schedule", "--schedule", "0 3 * * *"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        assert "backing up" in proc.stderr.readline()  # now asleep until 03:00
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - sent < 2
        assert proc.stdout is not None and proc.stdout.read() == ""  # no backup was run
    finally:
        proc.kill()
        proc.wait()


def test_a_bad_schedule_is_one_line_exit_6(tmp_path: Path, state_dir: Path) -> None:
    done = cli(
        "db", "schedule", "--once", "--database-url", "postgresql://x@127.0.0.1:1/x",
        env={"ATENDEAI_BACKUP_SCHEDULE": "61 * * * *"},
    )  # fmt: skip
    assert done.returncode == 6
    assert done.stderr.startswith("Error: ATENDEAI_BACKUP_SCHEDULE: '61 * * * *' is not a cron")


NOW = datetime(2026, 11, 29, 10, 7, 30, tzinfo=UTC)


def test_status_warns_when_the_newest_backup_is_older_than_the_schedule_allows(
    database_url: str, tmp_path: Path, state_dir: Path
) -> None:
    migrations.upgrade(database_url)
    backups = tmp_path / "backups"
    config = load_config(
        {
            "ATENDEAI_BACKUP_DIR": str(backups),
            "ATENDEAI_PROJECT": "sched",
            "ATENDEAI_BACKUP_SCHEDULE": "0 * * * *",  # hourly: grace 30 min
        }
    )
    assert backup_warnings(config, {"postgres"}) == []  # no backup service: nothing to say
    missing = backup_warnings(config, {"backup"}, now=NOW)
    assert len(missing) == 1 and "there is none in" in missing[0]
    done = schedule(database_url, backups, "--once", "--no-verify")
    assert done.returncode == 0, done.stderr
    (entry,) = list_backups(backups)
    assert entry.manifest is not None
    made = entry.manifest.created
    assert backup_warnings(config, {"backup"}, now=made + timedelta(minutes=20)) == []
    late = backup_warnings(config, {"backup"}, now=made + timedelta(hours=2))
    assert len(late) == 1 and "wanted a backup at" in late[0] and "the newest is 2h old" in late[0]
    # Another project's backups in the same directory do not count.
    other = load_config({"ATENDEAI_BACKUP_DIR": str(backups), "ATENDEAI_PROJECT": "other"})
    assert "there is none" in backup_warnings(other, {"backup"}, now=made)[0]
    assert load_manifest(manifest_path(entry.path)).reason == "scheduled"


@pytest.mark.parametrize(
    ("expression", "now", "last", "following"),
    [
        ("0 3 * * *", "2026-11-29T10:00:00", "2026-11-29T03:00:00", "2026-11-30T03:00:00"),
        ("0 3 * * *", "2026-11-29T03:00:00", "2026-11-29T03:00:00", "2026-11-30T03:00:00"),
        ("*/5 * * * * *", "2026-11-29T10:00:07", "2026-11-29T10:00:05", "2026-11-29T10:00:10"),
        ("0 0 1 * *", "2026-11-29T10:00:00", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
    ],
)
def test_schedule_times(expression: str, now: str, last: str, following: str) -> None:
    parsed = Schedule.parse(expression)
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert parsed.last_at_or_before(moment) == datetime.fromisoformat(last).replace(tzinfo=UTC)
    assert parsed.next_after(moment) == datetime.fromisoformat(following).replace(tzinfo=UTC)


CRON_PIECES = st.sampled_from(
    [*"0123456789*/-,LW#? ", "JAN", "MON", "SUN", "60", "31", "L-1", "5L", "1#5", "\x00", "é"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(CRON_PIECES, max_size=30).map("".join) | st.text(max_size=60))
def test_any_text_is_a_schedule_or_one_invalid_error(text: str) -> None:
    try:
        parsed = Schedule.parse(text)
    except AtendeaiError as err:
        assert err.code == "invalid" and "\n" not in err.message
        return
    assert parsed.next_after(NOW) > NOW
    assert parsed.last_at_or_before(NOW) <= NOW
    due = parsed.overdue(None, NOW)
    assert due is not None and due <= NOW
    assert parsed.overdue(NOW, NOW) is None


def test_verify_catches_a_dump_of_another_revision_under_a_matching_checksum(
    database_url: str, pg: PostgresServer, tmp_path: Path
) -> None:
    """The existing verify tests edit the manifest; here the dump itself is another
    revision's (a file swapped in with its checksum, as a manifest written for the wrong
    file would have it): the restore is what tells."""
    migrations.upgrade(database_url)
    other = pg.create_database()
    try:
        older_url = pg.url(other)
        migrations.upgrade(older_url, "0002")
        ours = take_backup(database_url, tmp_path / "ours", project="sched")
        older = take_backup(older_url, tmp_path / "older", project="sched")
        shutil.copyfile(older.path, ours.path)
        document = json.loads(manifest_path(ours.path).read_text())
        document.update(sha256=older.manifest.sha256, size=older.manifest.size)
        manifest_path(ours.path).write_text(json.dumps(document))
        report = verify_backup(database_url, ours.path)
    finally:
        pg.drop_database(other)
    assert report.checksum_ok and report.restored and not report.ok
    assert f"revision: manifest says {current(database_url)}, the dump holds 0002" in (
        report.problems
    )

"""Backups with manifests, retention, listing, and `verify-backup` against a scratch database."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atendeai_ctl.db import backup, migrations
from atendeai_ctl.db.backup import server_major
from atendeai_ctl.db.manifest import load_manifest, manifest_path, parse_manifest
from atendeai_ctl.db.verify import SCRATCH_PREFIX, verify_backup
from atendeai_ctl.errors import AtendeaiError
from tests.db_helpers import ROOT, cli, current


def add_clinics(url: str, *slugs: str) -> None:
    with psycopg.connect(url) as conn:
        for slug in slugs:
            conn.execute("INSERT INTO atendeai.clinics (slug, name) VALUES (%s, %s)", [slug, slug])


def scratch_databases(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{SCRATCH_PREFIX}%"]
        ).fetchall()
    return [r[0] for r in rows]


def row_counts(url: str) -> dict[str, int]:
    counts = {}
    with psycopg.connect(url) as conn:
        names = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'atendeai' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        ).fetchall()
        for (name,) in names:
            row = conn.execute(f'SELECT count(*) FROM atendeai."{name}"').fetchone()
            assert row is not None
            counts[name] = row[0]
    return counts


def edit_manifest(dump_file: Path, **changes: Any) -> None:
    path = manifest_path(dump_file)
    document = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "tables":
            document["tables"].update(value)
        else:
            document[key] = value
    path.write_text(json.dumps(document))


def test_the_manifest_describes_the_dump_and_the_database(
    database_url: str, tmp_path: Path
) -> None:
    migrations.upgrade(database_url)
    add_clinics(database_url, "one", "two", "three")
    before = datetime.now(UTC)
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    assert taken.path.parent == tmp_path and taken.path.suffix == ".dump"
    path = manifest_path(taken.path)
    assert path.name == taken.path.name + ".manifest.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken.path.name, path.name]
    manifest = load_manifest(path)
    assert manifest == taken.manifest
    data = taken.path.read_bytes()
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size == len(data)
    assert manifest.revision == current(database_url) == "0005"
    assert manifest.tables == row_counts(database_url)
    assert manifest.tables["clinics"] == 3 and manifest.tables["alembic_version"] == 1
    assert manifest.project == "proj" and manifest.reason == "backup"
    assert manifest.file == taken.path.name
    assert before - timedelta(seconds=1) <= manifest.created <= datetime.now(UTC)
    with psycopg.connect(database_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None and manifest.server_version == version[0]
    raw = json.loads(path.read_text())
    assert raw["created"].endswith("Z") and raw["verified"] is None and raw["format"] == 1


def test_retention_keeps_the_newest_n_with_their_manifests(
    database_url: str, tmp_path: Path
) -> None:
    migrations.upgrade(database_url)
    other = backup.take_backup(database_url, tmp_path, project="other")
    loose = tmp_path / "by-hand.dump"
    loose.write_bytes(other.path.read_bytes())  # a dump with no manifest: never pruned
    made = [backup.take_backup(database_url, tmp_path, project="proj", keep=2) for _ in range(4)]
    assert made[2].pruned == [made[0].path]
    assert made[3].pruned == [made[1].path]
    expected = {other.path, loose, made[2].path, made[3].path}
    dumps = {p for p in tmp_path.iterdir() if not p.name.endswith(".manifest.json")}
    assert dumps == expected
    manifests = {p for p in tmp_path.iterdir() if p.name.endswith(".manifest.json")}
    assert manifests == {manifest_path(p) for p in expected - {loose}}


def test_a_failed_backup_prunes_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(database_url)
    kept = [backup.take_backup(database_url, tmp_path, project="proj") for _ in range(2)]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && echo "pg_dump (PostgreSQL) {server_major(database_url)}.99"'
        " && exit 0\necho 'pg_dump: error: disk full' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(AtendeaiError) as raised:
        backup.take_backup(database_url, tmp_path, project="proj", keep=1)
    assert raised.value.code == "failed" and "disk full" in raised.value.message
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "bin")
    assert left == sorted(name for e in kept for name in (e.path.name, manifest_path(e.path).name))


def test_cli_backup_keep_and_backups_json(database_url: str, state_dir: Path) -> None:
    migrations.upgrade(database_url)
    paths = []
    for _ in range(3):
        made = cli("db", "backup", "--keep", "2", "--database-url", database_url)
        assert made.returncode == 0, made.stderr
        paths.append(Path(made.stdout.strip()))
    directory = state_dir / "atendeai" / "backups"
    assert not paths[0].exists() and not manifest_path(paths[0]).exists()
    listed = cli("db", "backups", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""
    document = json.loads(listed.stdout)
    assert document["directory"] == str(directory)
    rows = document["backups"]
    assert [r["file"] for r in rows] == [str(paths[2]), str(paths[1])]
    for row in rows:
        assert row["revision"] == "0005" and row["project"] == "atendeai"
        assert row["size"] == Path(row["file"]).stat().st_size
        assert 0 <= row["age_seconds"] < 120 and row["verified"] is None
        assert row["problem"] is None and row["reason"] == "backup"
    human = cli("db", "backups")
    assert human.returncode == 0, human.stderr
    assert paths[2].name in human.stdout.splitlines()[1]
    as_json = cli("db", "backup", "--json", "--keep", "2", "--database-url", database_url)
    assert as_json.returncode == 0, as_json.stderr
    taken = json.loads(as_json.stdout)
    assert taken["revision"] == "0005" and taken["pruned"] == [str(paths[1])]


def test_the_rollback_backup_has_a_manifest(database_url: str, state_dir: Path) -> None:
    migrations.upgrade(database_url)
    result = cli("migrate", "rollback", "--yes", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    (entry,) = backup.list_backups(state_dir / "atendeai" / "backups")
    assert entry.manifest is not None and entry.problem is None
    assert entry.manifest.reason == "before-rollback" and entry.manifest.revision == "0005"


def test_verify_passes_on_a_good_dump_and_records_it(database_url: str, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    add_clinics(database_url, "a", "b")
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    report = verify_backup(database_url, taken.path)
    assert report.ok, report.problems
    assert report.restored and report.revision == "0005"
    assert report.tables == taken.manifest.tables
    assert report.scratch_database and report.scratch_database.startswith(SCRATCH_PREFIX)
    assert scratch_databases(database_url) == []
    recorded = load_manifest(manifest_path(taken.path)).verified
    assert recorded is not None and recorded.ok and recorded.problems == []
    assert load_manifest(manifest_path(taken.path)).sha256 == taken.manifest.sha256


def test_verify_catches_a_truncated_dump(database_url: str, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    data = taken.path.read_bytes()
    taken.path.write_bytes(data[: len(data) // 2])
    report = verify_backup(database_url, taken.path)
    assert not report.ok and not report.restored
    assert any(p.startswith("sha256") for p in report.problems)
    assert any(p.startswith("size") for p in report.problems)
    assert report.scratch_database is None and scratch_databases(database_url) == []
    recorded = load_manifest(manifest_path(taken.path)).verified
    assert recorded is not None and not recorded.ok


def test_verify_catches_another_revision(database_url: str, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    edit_manifest(taken.path, revision="0002")
    report = verify_backup(database_url, taken.path)
    assert report.restored and not report.ok
    assert report.problems == ["revision: manifest says 0002, the dump holds 0005"]
    assert scratch_databases(database_url) == []


def test_verify_catches_other_row_counts(database_url: str, tmp_path: Path) -> None:
    migrations.upgrade(database_url)
    add_clinics(database_url, "only")
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    edit_manifest(taken.path, tables={"clinics": 5, "ghosts": 0})
    report = verify_backup(database_url, taken.path)
    assert report.problems == [
        "table clinics: manifest says 5 rows, the dump holds 1",
        "table ghosts: in the manifest but not in the dump",
    ]
    assert scratch_databases(database_url) == []


def test_a_dump_that_does_not_restore_fails_and_the_scratch_db_is_dropped(
    database_url: str, tmp_path: Path
) -> None:
    migrations.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP ROLE IF EXISTS verify_test_owner")
        conn.execute("CREATE ROLE verify_test_owner")
        conn.execute("CREATE TABLE atendeai.extra (id int)")
        conn.execute("ALTER TABLE atendeai.extra OWNER TO verify_test_owner")
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TABLE atendeai.extra")
        conn.execute("DROP ROLE verify_test_owner")
    report = verify_backup(database_url, taken.path)
    assert not report.ok and not report.restored
    assert report.problems[0].startswith("restore:") and "verify_test_owner" in report.problems[0]
    assert scratch_databases(database_url) == []


def test_cli_verify_backup_exit_codes_and_json(database_url: str, state_dir: Path) -> None:
    migrations.upgrade(database_url)
    made = cli("db", "backup", "--database-url", database_url)
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    good = cli("db", "verify-backup", "--json", "--database-url", database_url)  # the newest
    assert good.returncode == 0, good.stderr
    document = json.loads(good.stdout)
    assert document["ok"] is True and document["file"] == str(path)
    assert document["found"] == document["expected"]
    human = cli("db", "verify-backup", str(path), "--database-url", database_url)
    assert human.returncode == 0 and human.stdout.startswith(f"{path}: ok")
    listed = json.loads(cli("db", "backups", "--json").stdout)["backups"]
    assert listed[0]["verified"]["ok"] is True

    path.write_bytes(path.read_bytes()[:-100])
    bad = cli("db", "verify-backup", str(path), "--json", "--database-url", database_url)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["ok"] is False and json.loads(bad.stdout)["checksum_ok"] is False
    bad_human = cli("db", "verify-backup", str(path), "--database-url", database_url)
    assert bad_human.returncode == 1 and bad_human.stdout == ""
    errors = [line for line in bad_human.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "sha256" in bad_human.stderr and "Traceback" not in bad_human.stderr

    path.write_bytes(b"PG")  # shorter than the magic: still "damaged", not "not a dump"
    stub = cli("db", "verify-backup", str(path), "--database-url", database_url)
    assert stub.returncode == 1 and "sha256" in stub.stderr, stub.stderr

    manifest_path(path).write_text('{"format": 1, "tables": []}')
    malformed = cli("db", "verify-backup", str(path), "--database-url", database_url)
    assert malformed.returncode == 6
    assert malformed.stderr.startswith("Error: malformed manifest")
    assert "Traceback" not in malformed.stderr
    assert scratch_databases(database_url) == []

    manifest_path(path).unlink()
    missing = cli("db", "verify-backup", str(path), "--database-url", database_url)
    assert missing.returncode == 4, missing.stderr


VERIFY_CMD = (sys.executable, "-m", "atendeai_ctl", "db", "verify-backup")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_during_the_restore_drops_the_scratch_database(
    database_url: str, tmp_path: Path, signum: int
) -> None:
    migrations.upgrade(database_url)
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    slow = bin_dir / "pg_restore"
    slow.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && echo "pg_restore (PostgreSQL) {server_major(database_url)}.99"'
        " && exit 0\nexec sleep 60\n"
    )
    slow.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [*VERIFY_CMD, str(taken.path), "--database-url", database_url],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A terminal's Ctrl-C: SIGINT at its default, even when this run inherited it ignored
        # (a non-interactive shell's background job does), or Python would keep ignoring it.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while not scratch_databases(database_url):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # inside pg_restore (the slow fake) now
        proc.send_signal(signum)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert scratch_databases(database_url) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
VALID: dict[str, Any] = {
    "format": 1,
    "project": "p",
    "file": "f.dump",
    "created": "2026-11-29T08:00:00Z",
    "reason": "backup",
    "server_version": "16.4",
    "revision": "0003",
    "tables": {"clinics": 1},
    "sha256": "0" * 64,
    "size": 10,
    "verified": None,
}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(sorted(VALID)),
    value=json_values,
    drop=st.booleans(),
    whole=st.none() | json_values,
)
def test_any_manifest_is_parsed_or_refused_as_invalid(
    key: str, value: Any, drop: bool, whole: Any
) -> None:
    document: Any = whole if whole is not None else dict(VALID)
    if whole is None:
        if drop:
            del document[key]
        else:
            document[key] = value
    try:
        manifest = parse_manifest(document, Path("m.json"))
    except AtendeaiError as err:
        assert err.code == "invalid" and "\n" not in err.message
        assert err.message.startswith("malformed manifest m.json: ")
    else:
        assert manifest.to_dict()["format"] == 1


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_any_bytes_on_disk_are_a_manifest_or_one_invalid_error(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.dump.manifest.json"
        path.write_bytes(data)
        try:
            load_manifest(path)
        except AtendeaiError as err:
            assert err.code == "invalid" and "\n" not in err.message


def test_counts_and_dump_agree_while_rows_are_being_written(
    database_url: str, tmp_path: Path
) -> None:
    """The manifest is read in the dump's own snapshot: writes during the backup cannot make
    a good backup fail its verification."""
    import threading

    migrations.upgrade(database_url)
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                n = len(written)
                conn.execute(
                    "INSERT INTO atendeai.clinics (slug, name) VALUES (%s, %s)", [f"c{n}", "c"]
                )
                written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 20:
            time.sleep(0.01)
        taken = backup.take_backup(database_url, tmp_path, project="proj")
        time.sleep(0.05)
    finally:
        stop.set()
        writer.join()
    assert 0 < taken.manifest.tables["clinics"] < len(written)
    report = verify_backup(database_url, taken.path)
    assert report.ok, report.problems


def test_a_stale_scratch_database_is_swept_and_a_fresh_one_kept(
    database_url: str, tmp_path: Path
) -> None:
    """What a SIGKILLed run leaves is dropped by a later run once old; a young one (maybe a
    run that has not connected yet) is left alone."""
    migrations.upgrade(database_url)
    taken = backup.take_backup(database_url, tmp_path, project="proj")
    now = int(time.time())
    stale = f"{SCRATCH_PREFIX}{now - 7 * 3600}_1_deadbeef"
    fresh = f"{SCRATCH_PREFIX}{now - 60}_1_cafef00d"
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in (stale, fresh):
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        report = verify_backup(database_url, taken.path)
        assert report.ok, report.problems
        assert report.swept == [stale]
        assert scratch_databases(database_url) == [fresh]
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for name in (stale, fresh):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

"""`atendeai db verify-backup`: prove a dump restores and holds what its manifest says.

    1. the file's sha256 and size against the manifest (a truncated or damaged file stops here)
    2. pg_restore into a scratch database on the same server (atendeai_verify_<pid>_<random>),
       with the pg_restore matching the server, exactly as `db restore` would run
    3. row count per table and the Alembic revision of the scratch database against the manifest
    4. the scratch database is dropped (WITH (FORCE)) whatever happened, Ctrl-C included
       (the CLI turns SIGTERM into the same path); one left by a SIGKILLed run is swept by a
       later run once it is STALE_AFTER old and unused

The outcome is also recorded in the manifest ("verified"), for `atendeai db backups`.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from atendeai_ctl.db.backup import _check_dump, _run, command, find_tool
from atendeai_ctl.db.connect import connect, database_errors, psycopg_url
from atendeai_ctl.db.manifest import (
    Manifest,
    Verification,
    load_manifest,
    manifest_path,
    read_facts,
    sha256_of,
    write_manifest,
)
from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    import psycopg

SCRATCH_PREFIX = "atendeai_verify_"
STALE_AFTER = 6 * 3600.0
"""Seconds after which a scratch database nobody is connected to is a leftover (see sweep)."""


@dataclass
class Report:
    file: Path
    manifest: Manifest
    scratch_database: str | None = None
    problems: list[str] = field(default_factory=list)
    restored: bool = False
    tables: dict[str, int] = field(default_factory=dict)
    revision: str | None = None
    seconds: float = 0.0
    recorded: bool = False
    swept: list[str] = field(default_factory=list)
    checksum_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "ok": self.ok,
            "problems": self.problems,
            "checksum_ok": self.checksum_ok,
            "restored": self.restored,
            "scratch_database": self.scratch_database,
            "expected": {"revision": self.manifest.revision, "tables": self.manifest.tables},
            "found": {"revision": self.revision, "tables": self.tables} if self.restored else None,
            "seconds": round(self.seconds, 3),
            "recorded": self.recorded,
            "swept": self.swept,
        }


def scratch_url(url: str, name: str) -> str:
    parts = urlsplit(psycopg_url(url))
    return urlunsplit(parts._replace(path=f"/{name}"))


def compare(manifest: Manifest, revision: str | None, tables: dict[str, int]) -> list[str]:
    """Each difference between the manifest and what the restore holds, as one line."""
    problems = []
    if revision != manifest.revision:
        problems.append(f"revision: manifest says {manifest.revision}, the dump holds {revision}")
    for name in sorted(set(manifest.tables) | set(tables)):
        want, got = manifest.tables.get(name), tables.get(name)
        if want is None:
            problems.append(f"table {name}: in the dump but not in the manifest")
        elif got is None:
            problems.append(f"table {name}: in the manifest but not in the dump")
        elif want != got:
            problems.append(f"table {name}: manifest says {want} rows, the dump holds {got}")
    return problems


def verify_backup(url: str, dump_file: Path, *, record: bool = True) -> Report:
    """Check `dump_file` against its manifest on the server at `url`; see the module doc.

    Raises AtendeaiError for what stops the check from running (no file or no manifest:
    not_found, malformed manifest: invalid, no server: unavailable); a check that ran and found
    problems (a damaged or truncated file included, however short) returns a Report with `ok`
    False, naming each one.
    """
    started = time.monotonic()
    dump_file = dump_file.expanduser().resolve()
    if not dump_file.is_file():
        raise AtendeaiError("not_found", f"{dump_file} does not exist", "give a dump file")
    manifest = load_manifest(manifest_path(dump_file))
    report = Report(file=dump_file, manifest=manifest)
    sha, size = sha256_of(dump_file)
    if size != manifest.size:
        report.checksum_ok = False
        report.problems.append(f"size: manifest says {manifest.size} bytes, the file has {size}")
    if sha != manifest.sha256:
        report.checksum_ok = False
        report.problems.append("sha256: the file does not match the manifest (damaged)")
    if report.ok:
        _check_dump(dump_file)  # the checksum matched: only a forged manifest gets here
        _restore_and_count(url, dump_file, report)
    report.seconds = time.monotonic() - started
    if record:
        report.recorded = _record(dump_file, manifest, report)
    return report


def _restore_and_count(url: str, dump_file: Path, report: Report) -> None:
    name = f"{SCRATCH_PREFIX}{int(time.time())}_{os.getpid()}_{secrets.token_hex(4)}"
    report.scratch_database = name
    with connect(url, autocommit=True) as admin, database_errors(url):
        tool = find_tool("pg_restore", admin.info.server_version // 10000)
        report.swept = sweep_stale(admin)
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            target = scratch_url(url, name)
            argv, env = command(
                tool.path, target, ["--single-transaction", "--exit-on-error", str(dump_file)]
            )
            try:
                _run(argv, env, "pg_restore", target)
            except AtendeaiError as err:
                report.problems.append(f"restore: {err.message}")
                return
            report.restored = True
            with connect(target) as conn:
                facts = read_facts(conn)
            report.tables = facts.tables
            report.revision = facts.revision
            report.problems.extend(compare(report.manifest, facts.revision, facts.tables))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SCRATCH = re.compile(rf"^{SCRATCH_PREFIX}(\d+)_\d+_[0-9a-f]+$")


def sweep_stale(admin: psycopg.Connection[Any], *, older_than: float = STALE_AFTER) -> list[str]:
    """Drop scratch databases a killed run (SIGKILL, a lost host) left behind: named by this
    module, created more than `older_than` seconds ago (the time is in the name), and with
    nobody connected. A run still restoring has pg_restore connected, so it is never hit."""
    rows = admin.execute(
        "SELECT d.datname FROM pg_database d WHERE d.datname LIKE %s AND NOT EXISTS "
        "(SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
        [f"{SCRATCH_PREFIX}%"],
    ).fetchall()
    swept = []
    for (name,) in rows:
        match = _SCRATCH.match(name)
        if match is None or time.time() - int(match.group(1)) < older_than:
            continue
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        swept.append(name)
    return swept


def _record(dump_file: Path, manifest: Manifest, report: Report) -> bool:
    """Write the outcome into the manifest; False (not an error) when that cannot be done, e.g.
    a read-only copy of the backups."""
    verification = Verification(at=datetime.now(UTC), ok=report.ok, problems=report.problems)
    try:
        write_manifest(manifest_path(dump_file), manifest.with_verification(verification))
    except AtendeaiError:
        return False
    return True

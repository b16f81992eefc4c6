"""pg_dump / pg_restore in custom format, for `atendeai db backup|restore` and before a rollback.

The tools are found on PATH or in /usr/lib/postgresql/*/bin, and the newest one whose major
version is at least the server's is used (pg_dump refuses to dump a newer server; the stack's
server may be 16 while the host has 15). The password goes in the PGPASSWORD environment
variable of the child only, never on argv where `ps` shows it to every user. Dumps are written
0600 (they hold password hashes) and atomically, so a failed dump never looks like a good one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from glob import glob
from pathlib import Path
from typing import Any

from atendeai_ctl.db.connect import connect, conninfo, describe
from atendeai_ctl.db.manifest import (
    SUFFIX,
    Manifest,
    load_manifest,
    manifest_path,
    read_facts,
    sha256_of,
    write_manifest,
)
from atendeai_ctl.errors import AtendeaiError

TOOL_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin")
DUMP_MAGIC = b"PGDMP"
SCHEMA = "atendeai"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class Tool:
    major: int
    minor: int
    path: Path


def tool_version(path: Path) -> tuple[int, int] | None:
    """(major, minor) from `<tool> --version`, or None if it does not run."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def _wheel_bin_dir() -> str | None:
    """The `local` extra's pgserver wheel carries PostgreSQL 16 client tools too."""
    from importlib.util import find_spec

    spec = find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")


def candidates(name: str, extra_dirs: Iterable[str] = TOOL_DIRS) -> list[Path]:
    """Every distinct `name` on PATH, in the usual versioned PostgreSQL directories, or in the
    pgserver wheel."""
    found: list[Path] = []
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    wheel_dir = _wheel_bin_dir()
    for pattern in (*extra_dirs, *([wheel_dir] if wheel_dir else [])):
        found.extend(Path(p) / name for p in sorted(glob(pattern)))
    unique: dict[Path, Path] = {}
    for path in found:
        if path.is_file() and os.access(path, os.X_OK):
            unique.setdefault(path.resolve(), path)
    return list(unique.values())


def find_tool(name: str, server_major: int | None, paths: Sequence[Path] | None = None) -> Tool:
    """The `name` closest to the server's major version (not older than it), newest minor."""
    tools = []
    for path in candidates(name) if paths is None else paths:
        version = tool_version(path)
        if version is not None:
            tools.append(Tool(version[0], version[1], path))
    usable = [t for t in tools if server_major is None or t.major >= server_major]
    if not usable:
        have = ", ".join(f"{t.major} ({t.path})" for t in sorted(tools)) or "none"
        need = f"PostgreSQL {server_major} or newer" if server_major else "PostgreSQL"
        raise AtendeaiError(
            "not_found",
            f"no {name} for {need} found (found: {have})",
            f"install the PostgreSQL {server_major or ''} client tools "
            "(e.g. apt-get install postgresql-client-16)",
        )
    closest = min(t.major for t in usable)
    return max(t for t in usable if t.major == closest)


def server_major(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def command(tool: Path, url: str, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """argv (no password in it) and the child environment (PGPASSWORD) for a libpq tool."""
    from psycopg.conninfo import make_conninfo

    params = conninfo(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    return [str(tool), *args, f"--dbname={make_conninfo(**params)}"], env


def _run(argv: list[str], env: dict[str, str], what: str, url: str) -> None:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise AtendeaiError("failed", f"cannot run {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]
        detail = (errors or lines or [f"exit status {result.returncode}"])[0]
        password = env.get("PGPASSWORD")
        if password:
            detail = detail.replace(password, "***")
        raise AtendeaiError(
            "failed", f"{what} of {describe(url)} failed: {detail}", "nothing was changed"
        )


def default_backup_path(directory: Path, url: str, reason: str = "backup") -> Path:
    """<dir>/<dbname>-<UTC timestamp>-<reason>.dump, sortable by time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return directory / f"{conninfo(url).get('dbname', 'db')}-{stamp}-{reason}.dump"


def dump(url: str, output: Path, *, snapshot: str | None = None, major: int | None = None) -> Path:
    """Write a custom-format dump of the whole database to `output` (0600, atomic).

    With `snapshot` (from pg_export_snapshot() in a transaction the caller keeps open), the
    dump sees exactly what that transaction sees: the manifest's row counts describe it. A
    caller with a connection open passes the server's `major` version (saves asking again).
    """
    output = output.expanduser().resolve()
    if output.is_dir():
        raise AtendeaiError("invalid", f"{output} is a directory", "give a file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtendeaiError(
            "failed", f"cannot create {output.parent}: {exc.strerror or exc}", "nothing was changed"
        ) from None
    tool = find_tool("pg_dump", server_major(url) if major is None else major)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        args = ["--format=custom", f"--file={partial}"]
        if snapshot is not None:
            args.append(f"--snapshot={snapshot}")
        argv, env = command(tool.path, url, args)
        _run(argv, env, "pg_dump", url)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def _has_magic(path: Path) -> bool:
    """Whether the file starts as a pg_dump custom-format file does (OSError passes up)."""
    with path.open("rb") as fh:
        return fh.read(len(DUMP_MAGIC)) == DUMP_MAGIC


def _check_dump(dump_file: Path) -> None:
    try:
        magic_ok = _has_magic(dump_file)
    except FileNotFoundError:
        raise AtendeaiError("not_found", f"{dump_file} does not exist") from None
    except OSError as exc:
        raise AtendeaiError("invalid", f"cannot read {dump_file}: {exc}") from exc
    if not magic_ok:
        raise AtendeaiError(
            "invalid",
            f"{dump_file} is not a pg_dump custom-format file",
            "use a file written by `atendeai db backup`",
        )


def restore(url: str, dump_file: Path) -> None:
    """Replace schema atendeai with the dump's; on any failure the old schema comes back.

    Not `pg_restore --clean`: it cannot drop the constraints of partitions. The current schema
    is renamed aside, the dump restored in one transaction, and only then the old one dropped.
    """
    dump_file = dump_file.expanduser()
    _check_dump(dump_file)
    tool = find_tool("pg_restore", server_major(url))
    aside = f"{SCHEMA}_before_restore_{os.getpid()}"
    with connect(url, autocommit=True) as conn:
        had_schema = conn.execute("SELECT to_regnamespace(%s)", [SCHEMA]).fetchone() != (None,)
        if had_schema:
            conn.execute(f"ALTER SCHEMA {SCHEMA} RENAME TO {aside}")
        argv, env = command(
            tool.path, url, ["--single-transaction", "--exit-on-error", str(dump_file)]
        )
        try:
            _run(argv, env, "pg_restore", url)
        except BaseException:
            if had_schema:
                conn.execute(f"ALTER SCHEMA {aside} RENAME TO {SCHEMA}")
            raise
        if had_schema:
            conn.execute(f"DROP SCHEMA {aside} CASCADE")


DEFAULT_KEEP = 7


@dataclass(frozen=True)
class Entry:
    """One dump in a backups directory, with its manifest when it has a readable one."""

    path: Path
    size: int
    created: datetime
    manifest: Manifest | None
    problem: str | None

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        verified = self.manifest.verified if self.manifest else None
        return {
            "file": str(self.path),
            "created": self.created.isoformat().replace("+00:00", "Z"),
            "age_seconds": max(0, int((now - self.created).total_seconds())),
            "size": self.size,
            "project": self.manifest.project if self.manifest else None,
            "reason": self.manifest.reason if self.manifest else None,
            "revision": self.manifest.revision if self.manifest else None,
            "verified": verified.to_dict() if verified else None,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Taken:
    """A new backup, and what retention did after it."""

    path: Path
    manifest: Manifest
    pruned: list[Path]
    prune_errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "manifest": str(manifest_path(self.path)),
            **{k: v for k, v in self.manifest.to_dict().items() if k != "file"},
            "pruned": [str(p) for p in self.pruned],
            "prune_errors": self.prune_errors,
        }


def take_backup(
    url: str,
    directory: Path,
    *,
    project: str,
    reason: str = "backup",
    keep: int = DEFAULT_KEEP,
    output: Path | None = None,
) -> Taken:
    """Dump the database with a manifest beside it, then keep the newest `keep` of the
    project's dumps in that directory (`db backup` and the backup before a rollback).

    The counts are read and the dump made in one exported snapshot, so they describe the same
    data. Nothing is pruned unless the new dump and its manifest are both in place.
    """
    if keep < 1:
        raise AtendeaiError("invalid", f"--keep must be 1 or more, not {keep}")
    path = (output or default_backup_path(directory, url, reason)).expanduser().resolve()
    with connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        facts = read_facts(conn)
        dump(url, path, snapshot=str(row[0]), major=conn.info.server_version // 10000)
        conn.rollback()
    try:
        sha, size = sha256_of(path)
        manifest = Manifest(
            project=project,
            file=path.name,
            created=datetime.now(UTC),
            reason=reason,
            server_version=facts.server_version,
            revision=facts.revision,
            tables=facts.tables,
            sha256=sha,
            size=size,
        )
        write_manifest(manifest_path(path), manifest)
    except BaseException:
        path.unlink(missing_ok=True)  # a dump without its manifest is not a backup we keep
        raise
    pruned, errors = prune(path.parent, project=project, keep=keep, protect=path)
    return Taken(path=path, manifest=manifest, pruned=pruned, prune_errors=errors)


def backup_and_verify(
    url: str, directory: Path, *, project: str, reason: str, keep: int = DEFAULT_KEEP
) -> tuple[Taken, Any]:
    """`take_backup`, then `verify_backup` of the new dump: (taken, verify.Report). For a
    step that destroys the data after it (`down --volumes`): any failure, the verification's
    included, raises AtendeaiError("failed"), so the caller stops before deleting anything."""
    from atendeai_ctl.db.verify import verify_backup

    taken = take_backup(url, directory, project=project, reason=reason, keep=keep)
    report = verify_backup(url, taken.path)
    if not report.ok:
        raise AtendeaiError(
            "failed",
            f"the backup {taken.path} failed verification: {report.problems[0]}",
            "see `atendeai db verify-backup` for every problem",
        )
    return taken, report


def _is_dump(path: Path) -> bool:
    if path.name.startswith(".") or path.name.endswith(SUFFIX) or not path.is_file():
        return False
    try:
        return _has_magic(path)
    except OSError:
        return False


def list_backups(directory: Path) -> list[Entry]:
    """Every dump in `directory` (files starting with pg_dump's magic), newest first.

    A dump without a manifest (one written before manifests existed, or with `--output` by
    hand) or with a malformed one is listed with `problem` set, not left out.
    """
    try:
        files = [p for p in directory.iterdir() if _is_dump(p)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AtendeaiError("failed", f"cannot read {directory}: {exc.strerror or exc}") from None
    entries = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        manifest: Manifest | None = None
        problem: str | None = None
        try:
            manifest = load_manifest(manifest_path(path))
        except AtendeaiError as err:
            problem = "no manifest" if err.code == "not_found" else err.message
        created = manifest.created if manifest else datetime.fromtimestamp(stat.st_mtime, tz=UTC)
        entries.append(Entry(path, stat.st_size, created, manifest, problem))
    return sorted(entries, key=lambda e: (e.created, e.path.name), reverse=True)


def prune(
    directory: Path, *, project: str, keep: int, protect: Path | None = None
) -> tuple[list[Path], list[str]]:
    """Delete all but the newest `keep` dumps of `project` in `directory`, each with its
    manifest. Only dumps whose manifest names the project count: a dump without one, or of
    another project, is never touched. Returns (deleted dumps, errors as text)."""
    ours = [
        e
        for e in list_backups(directory)
        if e.manifest is not None and e.manifest.project == project
    ]
    pruned: list[Path] = []
    errors: list[str] = []
    for entry in ours[keep:]:
        if protect is not None and entry.path == protect:
            continue
        try:
            entry.path.unlink(missing_ok=True)
            manifest_path(entry.path).unlink(missing_ok=True)
        except OSError as exc:
            errors.append(f"cannot delete {entry.path}: {exc.strerror or exc}")
            continue
        pruned.append(entry.path)
    return pruned, errors


def newest_backup(directory: Path) -> Path:
    entries = list_backups(directory)
    if not entries:
        raise AtendeaiError(
            "not_found", f"no backups in {directory}", "take one with `atendeai db backup`"
        )
    return entries[0].path

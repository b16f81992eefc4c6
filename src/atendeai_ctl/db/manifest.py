"""The manifest written beside each dump: what the database held when it was dumped.

    <name>.dump                 pg_dump custom format, 0600
    <name>.dump.manifest.json   {"format": 1, "project", "file", "created" (UTC), "reason",
                                 "server_version", "revision", "tables": {table: rows},
                                 "sha256", "size", "verified": null | {"at", "ok", "problems"}}

The row counts and the revision are read in the very snapshot pg_dump dumps (exported with
pg_export_snapshot()), so `verify-backup` can demand equality, not "about the same". A manifest
read back from disk is outside input: anything malformed is one AtendeaiError("invalid").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.state import write_private

if TYPE_CHECKING:
    import psycopg

FORMAT = 1
SUFFIX = ".manifest.json"
SCHEMA = "atendeai"
MAX_MANIFEST_BYTES = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

TABLES_SQL = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
)
"""Tables of the schema, partitions left out: a partitioned parent's count includes them, and
the partitions' names depend on the month the migrations ran."""


@dataclass(frozen=True)
class Verification:
    at: datetime
    ok: bool
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "ok": self.ok, "problems": list(self.problems)}


@dataclass(frozen=True)
class Manifest:
    project: str
    file: str
    created: datetime
    reason: str
    server_version: str
    revision: str | None
    tables: dict[str, int]
    sha256: str
    size: int
    verified: Verification | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "project": self.project,
            "file": self.file,
            "created": _iso(self.created),
            "reason": self.reason,
            "server_version": self.server_version,
            "revision": self.revision,
            "tables": dict(sorted(self.tables.items())),
            "sha256": self.sha256,
            "size": self.size,
            "verified": self.verified.to_dict() if self.verified else None,
        }

    def with_verification(self, verification: Verification) -> Manifest:
        return replace(self, verified=verification)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def manifest_path(dump_file: Path) -> Path:
    return dump_file.with_name(dump_file.name + SUFFIX)


@dataclass(frozen=True)
class Facts:
    """What the database holds, read in one snapshot."""

    server_version: str
    revision: str | None
    tables: dict[str, int]


def read_facts(conn: psycopg.Connection[Any]) -> Facts:
    """Server version, Alembic revision and row count per table of schema atendeai, on `conn`
    as it is (the caller picks the snapshot). row_security is off, so a role that RLS would
    filter gets an error rather than a count that silently misses rows."""
    from psycopg import sql

    conn.execute("SET LOCAL row_security = off")
    row = conn.execute("SHOW server_version").fetchone()
    server_version = str(row[0]) if row else ""
    names = [str(r[0]) for r in conn.execute(TABLES_SQL, [SCHEMA]).fetchall()]
    tables: dict[str, int] = {}
    for name in names:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(SCHEMA), sql.Identifier(name)
        )
        counted = conn.execute(query).fetchone()
        tables[name] = int(counted[0]) if counted else 0
    revision: str | None = None
    if "alembic_version" in tables:
        rows = conn.execute(f"SELECT version_num FROM {SCHEMA}.alembic_version").fetchall()
        revision = ",".join(sorted(str(r[0]) for r in rows)) or None
    return Facts(server_version=server_version, revision=revision, tables=tables)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Temp file + rename, 0600: a reader sees the old manifest or the new one, never half."""
    try:
        write_private(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise AtendeaiError(
            "failed", f"cannot write {path}: {exc.strerror or exc}", "check the directory"
        ) from None


def load_manifest(path: Path) -> Manifest:
    """The manifest at `path`; not_found when missing, invalid (one line) when malformed."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise AtendeaiError(
            "not_found",
            f"{path} does not exist",
            "only dumps written by `atendeai db backup` have a manifest",
        ) from None
    except OSError as exc:
        raise AtendeaiError("invalid", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _malformed(path, f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _malformed(path, f"not JSON ({type(exc).__name__})") from None
    return parse_manifest(document, path)


def _malformed(path: Path, why: str) -> AtendeaiError:
    return AtendeaiError(
        "invalid",
        f"malformed manifest {path}: {why}",
        "the manifest was edited or damaged; take a new backup",
    )


def _get(document: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in document:
        raise _malformed(path, f"no {key!r}")
    value = document[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _malformed(path, f"{key!r} has the wrong type")
    return value


def _time(value: str, key: str, path: Path) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _malformed(path, f"{key!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise _malformed(path, f"{key!r} has no time zone")
    return moment.astimezone(UTC)


def parse_manifest(document: Any, path: Path) -> Manifest:
    """A Manifest from decoded JSON; every deviation is AtendeaiError("invalid")."""
    if not isinstance(document, dict):
        raise _malformed(path, "not a JSON object")
    if document.get("format") != FORMAT or isinstance(document.get("format"), bool):
        raise _malformed(path, f"unknown format {document.get('format')!r} (expected {FORMAT})")
    tables = _get(document, "tables", dict, path)
    for name, count in tables.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise _malformed(path, f"the row count of {name!r} is not a count")
    sha = _get(document, "sha256", str, path)
    if not _SHA256.match(sha):
        raise _malformed(path, "'sha256' is not 64 lower-case hex digits")
    size = _get(document, "size", int, path)
    if size < 0:
        raise _malformed(path, "'size' is negative")
    revision = _get(document, "revision", (str, type(None)), path)
    verified = None
    raw_verified = _get(document, "verified", (dict, type(None)), path)
    if raw_verified is not None:
        problems = _get(raw_verified, "problems", list, path)
        if not all(isinstance(p, str) for p in problems):
            raise _malformed(path, "'problems' holds something other than text")
        verified = Verification(
            at=_time(_get(raw_verified, "at", str, path), "at", path),
            ok=_get(raw_verified, "ok", bool, path),
            problems=problems,
        )
    return Manifest(
        project=_get(document, "project", str, path),
        file=_get(document, "file", str, path),
        created=_time(_get(document, "created", str, path), "created", path),
        reason=_get(document, "reason", str, path),
        server_version=_get(document, "server_version", str, path),
        revision=revision,
        tables=dict(tables),
        sha256=sha,
        size=size,
        verified=verified,
    )


def sha256_of(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size

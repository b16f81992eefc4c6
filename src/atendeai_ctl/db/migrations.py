"""Alembic driven in code: upgrade, rollback, status, history and offline SQL.

The Alembic Config is built here (script_location = <project>/migrations) instead of read from
alembic.ini, so the URL and the app role's password travel in `Config.attributes` and never
through a file or argv. migrations/env.py does the locking and the transactions, so a plain
`alembic upgrade head` is exactly as safe.

Every function raises AtendeaiError only: unreachable server, wrong password, unknown revision,
a database ahead of this code, a failing migration.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from atendeai_ctl.db.connect import (
    CONNECT_TIMEOUT,
    database_errors,
    describe,
    sqlalchemy_url,
)
from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    import psycopg
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCHEMA = "atendeai"
MIGRATION_LOCK_KEY = 0x6174656E64656169
"""b"atendeai" as a bigint: the session-level advisory lock env.py holds while migrating."""
VERSION_TABLE = "alembic_version"
BASE = "base"


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    description: str
    is_head: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "description": self.description,
            "is_head": self.is_head,
        }


@dataclass(frozen=True)
class Status:
    current: str | None
    head: str
    pending: list[str]

    @property
    def at_head(self) -> bool:
        return not self.pending

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "head": self.head, "pending": self.pending}


@dataclass
class Outcome:
    """What an upgrade or rollback did (or, with dry_run, would do)."""

    before: str | None
    target: str | None
    planned: list[Revision]
    applied: list[str] = field(default_factory=list)
    dry_run: bool = False
    app_role_exists: bool = False
    app_password_set: bool = False
    partitions_created: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "target": self.target,
            "planned": [r.revision for r in self.planned],
            "applied": self.applied,
            "dry_run": self.dry_run,
            "partitions_created": self.partitions_created,
        }


def default_migrations_dir() -> Path:
    from atendeai_ctl.config import default_project_dir

    return default_project_dir() / "migrations"


def alembic_config(
    url: str | None,
    *,
    migrations_dir: Path | None = None,
    extra_version_dirs: Sequence[Path] = (),
    output: TextIO | None = None,
) -> Config:
    """The Config env.py expects; `extra_version_dirs` add revisions (tests use it)."""
    from alembic.config import Config

    directory = (migrations_dir or default_migrations_dir()).resolve()
    if not (directory / "env.py").is_file():
        raise AtendeaiError(
            "not_found",
            f"{directory} is not an Alembic migrations directory (no env.py)",
            "point --project-dir at a copy of the atendeai project",
        )
    cfg = Config(output_buffer=output)
    cfg.set_main_option("script_location", str(directory).replace("%", "%%"))
    if extra_version_dirs:
        locations = [directory / "versions", *(Path(p).resolve() for p in extra_version_dirs)]
        cfg.set_main_option("path_separator", "os")
        cfg.set_main_option(
            "version_locations", os.pathsep.join(str(p) for p in locations).replace("%", "%%")
        )
    cfg.attributes["url"] = url
    cfg.attributes["app_db_password"] = None
    return cfg


def _script(cfg: Config) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    with _revision_errors():
        return ScriptDirectory.from_config(cfg)


_UNKNOWN = re.compile(
    r"(?:Can't locate revision identified by|No such revision or branch) '([^']*)'"
)


def _revision_error(exc: Exception) -> AtendeaiError:
    text = str(exc.args[0]) if exc.args else str(exc)
    unknown = _UNKNOWN.search(text)
    if unknown:
        return AtendeaiError(
            "not_found",
            f"unknown revision {unknown.group(1)!r}",
            "see `atendeai migrate history` for the known revisions",
        )
    return AtendeaiError("invalid", text.splitlines()[0], "see `atendeai migrate history`")


@contextmanager
def _revision_errors() -> Iterator[None]:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        yield
    except (CommandError, RevisionError) as exc:
        raise _revision_error(exc) from exc


def _revision(script: ScriptDirectory, revision: str) -> Revision:
    if not revision.strip():
        raise AtendeaiError("invalid", "the revision is empty", "give a revision, e.g. 0001")
    with _revision_errors():
        found = script.get_revision(revision)
    if found is None:
        raise AtendeaiError("not_found", f"unknown revision {revision!r}")
    return _describe(script, found.revision)


def _describe(script: ScriptDirectory, revision: str) -> Revision:
    found = script.get_revision(revision)
    assert found is not None
    down = found.down_revision
    return Revision(
        revision=found.revision,
        down_revision=down if isinstance(down, str) or down is None else ",".join(down),
        description=(found.doc or "").strip().splitlines()[0] if found.doc else "",
        is_head=found.revision in script.get_heads(),
    )


def _single_head(script: ScriptDirectory) -> str:
    heads = script.get_heads()
    if len(heads) != 1:
        raise AtendeaiError(
            "invalid",
            f"the migrations have {len(heads)} heads ({', '.join(heads)})",
            "merge them into one (alembic merge) before migrating",
        )
    return heads[0]


def current_revision(url: str, *, script: ScriptDirectory | None = None) -> str | None:
    """The revision in the database's version table (None: never migrated or at base).

    With `script`, a revision the code does not know is refused: the database is ahead.
    """
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(
        sqlalchemy_url(url),
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
    )
    try:
        with database_errors(url), engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table_schema": SCHEMA, "version_table": VERSION_TABLE}
            )
            heads = context.get_current_heads()
    finally:
        engine.dispose()
    if script is not None:
        known = {rev.revision for rev in script.walk_revisions()}
        for head in heads:
            if head not in known:
                raise AtendeaiError(
                    "conflict",
                    f"the database {describe(url)} is at revision {head!r}, "
                    "which this version of atendeai does not know",
                    "it was migrated by a newer atendeai: upgrade atendeai-ctl, or point "
                    "--project-dir at the matching migrations",
                )
    if len(heads) > 1:
        raise AtendeaiError("invalid", f"the database has several heads: {', '.join(heads)}")
    return heads[0] if heads else None


_ASSIGNMENT = re.compile(
    r"^(?P<key>down_revision|revision)\s*(?::[^=\n]*)?=\s*(?P<value>.+?)\s*$", re.MULTILINE
)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")


def script_head(migrations_dir: Path | None = None) -> str | None:
    """The head revision id, read from the scripts' `revision = ...` and `down_revision = ...`
    lines without importing Alembic (`up` asks on every run, and an Alembic import costs more
    than the whole check). None when the files do not name exactly one head, so the caller
    falls back to running the migrations, which decide properly."""
    versions = (migrations_dir or default_migrations_dir()) / "versions"
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        scripts = sorted(versions.glob("*.py"))
    except OSError:
        return None
    for script in scripts:
        try:
            text = script.read_text()
        except (OSError, UnicodeDecodeError):
            return None
        found = {m["key"]: m["value"] for m in _ASSIGNMENT.finditer(text)}
        revision = _QUOTED.findall(found.get("revision", ""))
        if len(revision) != 1:
            return None
        revisions.add(revision[0])
        parents.update(_QUOTED.findall(found.get("down_revision", "")))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def database_revision(url: str) -> str | None:
    """The revision in the database's version table, in one query without Alembic (None:
    never migrated, or at base). Raises AtendeaiError (unreachable, wrong password).

    `up` asks on every run, so the query goes through db.wire (no psycopg import) when the
    URL is a plain TCP one; whatever the wire client declines, psycopg answers."""
    heads = _version_rows_by_wire(url)
    if heads is None:
        from atendeai_ctl.db.connect import connect

        with connect(url, autocommit=True) as conn, database_errors(url):
            heads = _version_rows(conn)
    if len(heads) > 1:
        raise AtendeaiError("invalid", f"the database has several heads: {', '.join(heads)}")
    return heads[0] if heads else None


_WIRE_OPTIONS = {"connect_timeout", "application_name", "sslmode"}
_WIRE_SSLMODES = {"disable", "allow", "prefer"}  # no TLS demanded: SCRAM needs none


def _version_rows_by_wire(url: str) -> list[str] | None:
    """The version rows through db.wire; None when it declines (a URL beyond host, port,
    user, password and database; TLS required; a server error other than the ones below)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    from atendeai_ctl.db import wire
    from atendeai_ctl.db.connect import cannot_connect, credentials_refused, psycopg_url

    try:
        parts = urlsplit(psycopg_url(url))
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        return None
    if (
        not host
        or host.startswith("/")
        or "," in parts.netloc
        or not set(options) <= _WIRE_OPTIONS
        or options.get("sslmode", "prefer") not in _WIRE_SSLMODES
        or parts.username is None
    ):
        return None
    user = unquote(parts.username)
    dbname = unquote(parts.path.lstrip("/")) or user
    where = f"{user}@{host}:{port}/{dbname}"
    try:
        timeout = float(options.get("connect_timeout", "10"))
        rows = wire.query(
            host,
            port,
            user=user,
            password=unquote(parts.password or ""),
            dbname=dbname,
            sql=f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}",
            timeout=timeout if timeout > 0 else 10.0,
        )
    except wire.ServerError as exc:
        if exc.sqlstate in ("42P01", "3F000"):  # no version table, or no schema: no revision
            return []
        if exc.sqlstate == "28P01":  # the password itself; 28000 (no pg_hba.conf entry for
            # a connection without TLS, say) goes to psycopg, which may negotiate TLS
            raise credentials_refused(where) from None
        return None
    except OSError as exc:
        raise cannot_connect(where, str(exc)) from None
    except (wire.Unsupported, wire.ProtocolError, ValueError):
        return None
    return [str(row[0]) for row in rows]


def _version_rows(conn: psycopg.Connection[Any]) -> list[str]:
    """The version table's rows; none when it does not exist (never migrated, or at base)."""
    from psycopg import errors

    try:
        rows = conn.execute(f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}").fetchall()
    except (errors.UndefinedTable, errors.InvalidSchemaName):
        return []
    return [str(row[0]) for row in rows]


def _path(script: ScriptDirectory, upper: str, lower: str | None) -> list[Revision]:
    """Revisions after `lower` up to and including `upper`, oldest first."""
    with _revision_errors():
        steps = list(script.iterate_revisions(upper, lower or BASE))
    return [_describe(script, step.revision) for step in reversed(steps)]


def status(url: str, *, migrations_dir: Path | None = None) -> Status:
    script = _script(alembic_config(url, migrations_dir=migrations_dir))
    head = _single_head(script)
    current = current_revision(url, script=script)
    pending = [r.revision for r in _path(script, head, current)]
    return Status(current=current, head=head, pending=pending)


def history(*, migrations_dir: Path | None = None) -> list[Revision]:
    """Every revision, oldest first. Reads the scripts only: no database needed."""
    script = _script(alembic_config(None, migrations_dir=migrations_dir))
    return _path(script, _single_head(script), None)


def _run(
    command: str,
    cfg: Config,
    url: str,
    target: str,
    planned: list[Revision],
    before: str | None,
) -> list[str]:
    from alembic import command as alembic_command

    applied: list[str] = []
    cfg.attributes["applied"] = applied
    try:
        with _revision_errors(), database_errors(url):
            getattr(alembic_command, command)(cfg, target)
    except AtendeaiError as err:
        failing = next((r.revision for r in planned if r.revision not in applied), None)
        if failing is None or err.code in ("unavailable", "unauthorized", "not_found"):
            raise
        stays = _reached(planned, applied, command) if applied else before
        raise AtendeaiError(
            "failed",
            f"migration {failing} failed: {err.message.split(': ', 1)[-1]}",
            f"it was rolled back; the database stays at {stays or BASE}",
        ) from err
    return applied


def _reached(planned: list[Revision], applied: list[str], command: str) -> str:
    """The revision the database is at after `applied` of `planned` ran."""
    if command == "upgrade":
        return applied[-1]
    last = next(r for r in planned if r.revision == applied[-1])
    return last.down_revision or BASE


def upgrade(
    url: str,
    revision: str = "head",
    *,
    app_password: str | None = None,
    monitor_password: str | None = None,
    dry_run: bool = False,
    migrations_dir: Path | None = None,
    extra_version_dirs: Sequence[Path] = (),
) -> Outcome:
    """Migrate up to `revision`, then give atendeai_app `app_password` and atendeai_monitor
    `monitor_password` (each if given and the role exists). Safe to run concurrently: the
    second run waits for the first, then does nothing.
    """
    if revision in ("head", "heads") and not extra_version_dirs:
        done = _already_at_head(url, migrations_dir, app_password, dry_run, monitor_password)
        if done is not None:
            return done
    cfg = alembic_config(url, migrations_dir=migrations_dir, extra_version_dirs=extra_version_dirs)
    script = _script(cfg)
    target = _single_head(script) if revision in ("head", "heads") else revision
    target = _revision(script, target).revision
    before = current_revision(url, script=script)
    if before is not None and before != target and target in _ancestors(script, before):
        raise AtendeaiError(
            "invalid",
            f"{target} is behind the database's revision {before}",
            "use `atendeai migrate rollback --to` to go back",
        )
    planned = _path(script, target, before)
    outcome = Outcome(before=before, target=target, planned=planned, dry_run=dry_run)
    if dry_run:
        return outcome
    cfg.attributes["app_db_password"] = app_password
    cfg.attributes["monitor_db_password"] = monitor_password
    outcome.applied = _run("upgrade", cfg, url, target, planned, before)
    outcome.app_role_exists = bool(cfg.attributes.get("app_role_exists"))
    outcome.app_password_set = bool(cfg.attributes.get("app_password_set"))
    outcome.partitions_created = ensure_audit_partitions(url) or 0
    return outcome


def _already_at_head(
    url: str,
    migrations_dir: Path | None,
    app_password: str | None,
    dry_run: bool,
    monitor_password: str | None = None,
) -> Outcome | None:
    """`migrate up` of a database already at head (what the stack's migrate job finds on every
    `up` after the first) without importing Alembic and SQLAlchemy: one connection reads the
    revision and, as env.py does after migrating, sets the app role's password. None when not
    at head, or when the scripts do not name one head: the full path decides then."""
    head = script_head(migrations_dir)
    if head is None:
        return None
    from atendeai_ctl.db.connect import connect
    from atendeai_ctl.db.roles import (
        MONITOR_ROLE,
        ROLE_EXISTS_SQL,
        role_exists_sql,
        set_password_sql,
    )

    with connect(url, autocommit=True) as conn, database_errors(url):
        if _version_rows(conn) != [head]:
            return None
        outcome = Outcome(before=head, target=head, planned=[], dry_run=dry_run)
        if dry_run:
            return outcome
        outcome.app_role_exists = conn.execute(ROLE_EXISTS_SQL).fetchone() is not None
        if app_password and outcome.app_role_exists:
            conn.execute(set_password_sql(app_password).encode())
            outcome.app_password_set = True
        if monitor_password and conn.execute(role_exists_sql(MONITOR_ROLE)).fetchone():
            conn.execute(set_password_sql(monitor_password, MONITOR_ROLE).encode())
        outcome.partitions_created = _ensure_partitions(conn)
    return outcome


PARTITION_MONTHS_AHEAD = 3
"""ensure_audit_log_partitions(3): this month's partition and the next three."""

_ENSURE_PARTITIONS = (
    f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); "
    f"SELECT {SCHEMA}.ensure_audit_log_partitions({PARTITION_MONTHS_AHEAD})"
)


def _ensure_partitions(conn: psycopg.Connection[Any]) -> int:
    """Create the coming months' audit_log partitions (the migration made only those of the
    month it ran in). One round trip; under the migration lock, as a transaction, so two
    `migrate up` at once never race to create one partition. Returns how many were made."""
    with conn.cursor() as cur:
        cur.execute(_ENSURE_PARTITIONS.encode())
        cur.nextset()
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def ensure_audit_partitions(url: str) -> int | None:
    """`_ensure_partitions` on `url`; None when the schema has no such function (at base)."""
    from atendeai_ctl.db.connect import connect

    with connect(url, autocommit=True) as conn, database_errors(url):
        found = conn.execute(
            "SELECT to_regprocedure(%s)", [f"{SCHEMA}.ensure_audit_log_partitions(integer)"]
        ).fetchone()
        if found is None or found[0] is None:
            return None
        return _ensure_partitions(conn)


def _ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    return {r.revision for r in _path(script, revision, None)}


def plan_rollback(
    url: str,
    *,
    steps: int | None = None,
    to: str | None = None,
    migrations_dir: Path | None = None,
) -> Outcome:
    """What a rollback would undo: the last `steps` revisions (default 1), or down to `to`."""
    if steps is not None and to is not None:
        raise AtendeaiError("invalid", "give either --steps or --to, not both")
    if steps is not None and steps < 1:
        raise AtendeaiError("invalid", f"--steps must be 1 or more, not {steps}")
    cfg = alembic_config(url, migrations_dir=migrations_dir)
    script = _script(cfg)
    before = current_revision(url, script=script)
    applied = _path(script, before, None) if before else []
    if to is None:
        count = steps or 1
        if count > len(applied):
            raise AtendeaiError(
                "invalid",
                f"cannot roll back {count} migration(s): {len(applied)} applied",
                "use --to base to undo them all",
            )
        undo = applied[len(applied) - count :]
    elif to == BASE:
        undo = applied
    else:
        target = _revision(script, to).revision
        if target not in {r.revision for r in applied}:
            raise AtendeaiError(
                "invalid",
                f"{target} is not applied to the database (current: {before or BASE})",
                "use `atendeai migrate up` to go forward",
            )
        undo = applied[[r.revision for r in applied].index(target) + 1 :]
    target_rev = (undo[0].down_revision or BASE) if undo else before
    return Outcome(before=before, target=target_rev, planned=list(reversed(undo)))


def rollback(
    url: str,
    *,
    steps: int | None = None,
    to: str | None = None,
    dry_run: bool = False,
    migrations_dir: Path | None = None,
) -> Outcome:
    """Undo migrations (newest first), each in its own transaction."""
    outcome = plan_rollback(url, steps=steps, to=to, migrations_dir=migrations_dir)
    outcome.dry_run = dry_run
    if dry_run or not outcome.planned:
        return outcome
    cfg = alembic_config(url, migrations_dir=migrations_dir)
    assert outcome.target is not None
    outcome.applied = _run("downgrade", cfg, url, outcome.target, outcome.planned, outcome.before)
    return outcome


def offline_sql(spec: str | None = None, *, migrations_dir: Path | None = None) -> str:
    """The SQL of `FROM:TO` (default base:head; a downgrade when TO is below FROM), unrun."""
    from alembic import command as alembic_command

    buffer = io.StringIO()
    cfg = alembic_config(None, migrations_dir=migrations_dir, output=buffer)
    script = _script(cfg)
    start, sep, end = (spec or "").rpartition(":")
    if not sep:
        start, end = BASE, spec or "head"
    end = _single_head(script) if end in ("head", "heads") else end
    start = _single_head(script) if start in ("head", "heads") else start
    for rev in (start, end):
        if rev != BASE:
            _revision(script, rev)
    downgrade = end == BASE or (start != BASE and end in _ancestors(script, start))
    with _revision_errors():
        if downgrade:
            alembic_command.downgrade(cfg, f"{start}:{end}", sql=True)
        elif start == BASE:
            alembic_command.upgrade(cfg, end, sql=True)
        else:
            alembic_command.upgrade(cfg, f"{start}:{end}", sql=True)
    return buffer.getvalue()


__all__ = [
    "Outcome",
    "Revision",
    "Status",
    "alembic_config",
    "current_revision",
    "database_revision",
    "ensure_audit_partitions",
    "history",
    "offline_sql",
    "plan_rollback",
    "rollback",
    "script_head",
    "status",
    "upgrade",
]

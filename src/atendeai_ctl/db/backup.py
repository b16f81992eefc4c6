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

from atendeai_ctl.db.connect import connect, conninfo, describe
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


def dump(url: str, output: Path) -> Path:
    """Write a custom-format dump of the whole database to `output` (0600, atomic)."""
    output = output.expanduser().resolve()
    if output.is_dir():
        raise AtendeaiError("invalid", f"{output} is a directory", "give a file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtendeaiError(
            "failed", f"cannot create {output.parent}: {exc.strerror or exc}", "nothing was changed"
        ) from None
    tool = find_tool("pg_dump", server_major(url))
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        argv, env = command(tool.path, url, ["--format=custom", f"--file={partial}"])
        _run(argv, env, "pg_dump", url)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def _check_dump(dump_file: Path) -> None:
    try:
        with dump_file.open("rb") as fh:
            magic = fh.read(len(DUMP_MAGIC))
    except FileNotFoundError:
        raise AtendeaiError("not_found", f"{dump_file} does not exist") from None
    except OSError as exc:
        raise AtendeaiError("invalid", f"cannot read {dump_file}: {exc}") from exc
    if magic != DUMP_MAGIC:
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

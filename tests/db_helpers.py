"""Helpers for the schema, RLS and backup tests: catalog queries, schema dumps, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from atendeai_ctl.db.backup import command, find_tool, server_major

ROOT = Path(__file__).resolve().parent.parent
FAILING_MIGRATIONS = Path(__file__).resolve().parent / "failing_migrations"
APP_ROLE = "atendeai_app"
SCHEMA_TABLES = {
    "alembic_version",
    "clinics",
    "users",
    "sessions",
    "refresh_tokens",
    "api_keys",
    "audit_log",
    "patients",
    "conversations",
    "messages",
    "appointments",
}


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def tables(url: str, schema: str = "atendeai") -> set[str]:
    """Tables in `schema`, partitions left out (they are reached only through their parent)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            [schema],
        ).fetchall()
    return {r[0] for r in rows}


def schema_dump(url: str) -> str:
    """pg_dump --schema-only, minus comments and pg_dump's per-run \\restrict keys."""
    tool = find_tool("pg_dump", server_major(url))
    argv, env = command(tool.path, url, ["--schema-only"])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    keep = [
        line
        for line in out.splitlines()
        if line.strip() and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    ]
    return "\n".join(keep)


def current(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('atendeai.alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute("SELECT version_num FROM atendeai.alembic_version").fetchone()
    return row[0] if row else None


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (errors become exit codes only in `main()`)."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", *args],
        env=full_env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        cwd=ROOT,
    )

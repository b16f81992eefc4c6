"""Running `atendeai clinic|user|token|audit` as real subprocesses against test servers."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

OPERATOR = f"cli:{getpass.getuser()}"
TABLES = ("clinics", "users", "sessions", "audit_log")


@dataclass
class Cli:
    env: dict[str, str]
    admin_url: str

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atendeai_ctl", *args],
            env=self.env, input=stdin if stdin is not None else "", capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr
        return done.stdout

    def json(self, *args: str, stdin: str | None = None) -> Any:
        """The command's JSON document; with --json nothing at all goes to stderr."""
        done = self.run(*args, "--json", stdin=stdin)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        assert done.stderr == "", done.stderr
        return json.loads(done.stdout)

    def counts(self) -> dict[str, int]:
        """Rows per table, to show that a refused command wrote nothing."""
        with psycopg.connect(self.admin_url) as conn:
            return {
                t: conn.execute(f"SELECT count(*) FROM atendeai.{t}").fetchone()[0]  # type: ignore[index]
                for t in TABLES
            }

    def audit(self, action: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin_url) as conn:
            return conn.execute(
                "SELECT actor, outcome, target, detail FROM atendeai.audit_log"
                " WHERE action = %s ORDER BY id",
                (action,),
            ).fetchall()


def make_cli(admin_url: str, redis_url: str, keys_dir: Path, state_dir: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(
        ATENDEAI_DATABASE_URL=admin_url,
        ATENDEAI_REDIS_URL=redis_url,
        ATENDEAI_JWT_KEYS_DIR=str(keys_dir),
        ATENDEAI_STATE_DIR=str(state_dir),
        ATENDEAI_AUTH_BCRYPT_COST="10",
        NO_COLOR="1",
    )
    return Cli(env, admin_url)


def assert_refused(done: subprocess.CompletedProcess[str], exit_code: int, fragment: str) -> None:
    """A clear refusal: the exit code, one `Error:` line on stderr, nothing on stdout."""
    assert done.returncode == exit_code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


SEED_PASSWORD = "a long enough secret"


def seed_through_cli(cli: Cli) -> None:
    """Clinic 'alpha' and user ana@alpha.test (SEED_PASSWORD): auth_helpers.seeded_template
    runs this once; tests get copies (the `seeded_db` fixture)."""
    cli.ok("clinic", "create", "Alpha", "--slug", "alpha")
    cli.ok("user", "create", "ana@alpha.test", "--clinic", "alpha", "--password-stdin",
           stdin=SEED_PASSWORD + "\n")  # fmt: skip

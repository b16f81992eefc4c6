"""Hostile input to the CLI (issue 9, finding 5): never a traceback.

Undecodable bytes on stdin or in argv, NUL, empty revisions and huge values are one `Error:`
line and exit 6 with nothing changed; whatever else escapes a command is one line and exit 1
at the boundary (cli/app.py main), the traceback only under ATENDEAI_DEBUG=1. Every command
runs as a real subprocess against a migrated PostgreSQL and a real Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.admin_helpers import SEED_PASSWORD, Cli, make_cli
from tests.auth_helpers import AuthDb

PASSWORD = SEED_PASSWORD
INVALID = 6
BAD_UTF8 = b"\xff\xfe not utf-8 \xc3\x28 at all\n"


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def run_raw(
    cli: Cli, *args: str | bytes, stdin: bytes = b"", env: dict[str, str] | None = None
) -> Done:
    """Like Cli.run, but argv and stdin are bytes as an operator's shell would pass them."""
    done = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", *args],
        env={**cli.env, **(env or {})}, input=stdin, capture_output=True, timeout=60,
        check=False,
    )  # fmt: skip
    return Done(
        done.returncode,
        done.stdout.decode("utf-8", "backslashreplace"),
        done.stderr.decode("utf-8", "backslashreplace"),
    )


def assert_one_line(done: Done, code: int, fragment: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert fragment in lines[0], lines[0]
    assert done.stdout == ""


def snapshot(cli: Cli) -> tuple[object, ...]:
    """Everything a refused command could have changed: rows, password hashes, revision."""
    with psycopg.connect(cli.admin_url) as conn:
        hashes = conn.execute(
            "SELECT email, password_hash, role FROM atendeai.users ORDER BY email"
        ).fetchall()
        revision = conn.execute("SELECT version_num FROM atendeai.alembic_version").fetchall()
    return cli.counts(), hashes, revision


@pytest.fixture
def cli(seeded_db: AuthDb, redis_url: str, keys_dir: Path, state_dir: Path) -> Cli:
    """The CLI on a copy of a database with clinic 'alpha' and ana@alpha.test."""
    return make_cli(seeded_db.admin_url, redis_url, keys_dir, state_dir)


def test_user_create_with_invalid_utf8_on_stdin_is_exit_6(cli: Cli) -> None:
    before = snapshot(cli)
    done = run_raw(cli, "user", "create", "bob@alpha.test", "--clinic", "alpha",
                   "--password-stdin", stdin=BAD_UTF8)  # fmt: skip
    assert_one_line(done, INVALID, "the password on stdin is not valid UTF-8 (byte 0xff")
    assert snapshot(cli) == before


def test_user_set_password_with_invalid_utf8_on_stdin_is_exit_6(cli: Cli) -> None:
    before = snapshot(cli)
    done = run_raw(cli, "user", "set-password", "ana@alpha.test", "--clinic", "alpha",
                   "--password-stdin", stdin=BAD_UTF8)  # fmt: skip
    assert_one_line(done, INVALID, "the password on stdin is not valid UTF-8")
    assert snapshot(cli) == before


def test_a_password_with_nul_is_refused_not_stored(cli: Cli) -> None:
    """bcrypt would hash it, but no login could ever send it: refused, no user made."""
    before = snapshot(cli)
    done = run_raw(cli, "user", "create", "nul@alpha.test", "--clinic", "alpha",
                   "--password-stdin", stdin=b"twelve chars\x00 and more\n")  # fmt: skip
    assert_one_line(done, INVALID, "the password on stdin contains a NUL character")
    assert snapshot(cli) == before


def test_token_verify_with_undecodable_stdin_is_exit_6(cli: Cli) -> None:
    token = cli.ok("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test").strip()
    done = run_raw(cli, "token", "verify", "-", stdin=token.encode() + b"\xff\n")
    assert_one_line(done, INVALID, "the token on stdin is not valid UTF-8")
    done = run_raw(cli, "token", "verify", stdin=b"\x80" * 10)
    assert_one_line(done, INVALID, "the token on stdin is not valid UTF-8 (byte 0x80 at offset 0)")


def test_token_verify_reads_no_more_than_64_kib_of_stdin(cli: Cli) -> None:
    done = run_raw(cli, "token", "verify", "-", stdin=b"a" * (10 * 1024 * 1024))
    assert_one_line(done, INVALID, "the token on stdin is longer than 65536 bytes")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["migrate", "rollback", "--to", ""], "the revision is empty"),
        (["migrate", "rollback", "--to", "", "--yes", "--no-backup"], "the revision is empty"),
        (["migrate", "up", ""], "the revision is empty"),
        (["migrate", "sql", ":"], "the revision is empty"),
    ],
)
def test_an_empty_revision_is_exit_6_and_nothing_rolled_back(
    cli: Cli, args: list[str], fragment: str
) -> None:
    before = snapshot(cli)
    assert_one_line(run_raw(cli, *args), INVALID, fragment)
    assert snapshot(cli) == before


@pytest.mark.parametrize(
    "args",
    [
        [b"user", b"show", b"ana\xff@alpha.test", b"--clinic", b"alpha"],
        [b"user", b"create", b"b\xe9@alpha.test", b"--clinic", b"alpha", b"--generate-password"],
        [b"clinic", b"show", b"alpha\xed\xa0\x80"],  # a UTF-16 surrogate, encoded: not UTF-8
        [b"token", b"issue", b"--clinic", b"alpha", b"--user", b"\xff"],
        [b"token", b"verify", b"eyJ\xff"],
        [b"audit", b"list", b"--action", b"\xfflogin"],
    ],
)
def test_undecodable_argv_bytes_are_exit_6_and_change_nothing(cli: Cli, args: list[bytes]) -> None:
    before = snapshot(cli)
    assert_one_line(run_raw(cli, *args), INVALID, "is not valid UTF-8")
    assert snapshot(cli) == before


def test_the_refusal_names_the_option_but_never_echoes_the_value(cli: Cli) -> None:
    """The value may be a connection string with its password."""
    url = b"postgresql://postgres:hunter2\xff@127.0.0.1:1/db"
    done = run_raw(cli, "clinic", "list", b"--database-url", url)
    assert_one_line(done, INVALID, "argument 4 (after --database-url) is not valid UTF-8")
    assert "hunter2" not in done.stderr


def test_undecodable_atendeai_environment_is_exit_6(cli: Cli) -> None:
    env = {"ATENDEAI_DATABASE_URL": cli.admin_url + "\udcff"}  # as os.environ holds the byte
    done = run_raw(cli, "clinic", "list", env=env)
    assert_one_line(done, INVALID, "environment variable ATENDEAI_DATABASE_URL is not valid")


def test_json_mode_gets_the_error_document(cli: Cli) -> None:
    done = run_raw(cli, "user", "create", "bob@alpha.test", "--clinic", "alpha",
                   "--password-stdin", "--json", stdin=BAD_UTF8)  # fmt: skip
    assert done.returncode == INVALID and "Traceback" not in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "invalid"


def test_a_huge_value_is_refused_in_one_short_line(cli: Cli) -> None:
    huge = "x" * 120_000  # under Linux's 128 KiB limit for one argument
    before = snapshot(cli)
    for args, code in ((["user", "show", huge, "--clinic", "alpha"], 4),
                       (["user", "set-role", "ana@alpha.test", huge, "--clinic", "alpha"], INVALID),
                       (["token", "verify", "--json", huge], 1)):  # fmt: skip
        done = run_raw(cli, *args)
        assert "Traceback" not in done.stderr and done.returncode == code, done.stderr[:300]
        assert len(done.stderr.splitlines()) == 1 and len(done.stderr) < 700
    assert snapshot(cli) == before


CRASHING_COMMAND = textwrap.dedent(
    """
    import sys
    from atendeai_ctl.cli import app as root
    from atendeai_ctl.cli.options import JsonOption

    @root.app.command("boom")
    def boom(json_output: JsonOption = False) -> None:
        secret_local = "hunter2-local-value"
        raise RuntimeError(
            "cannot use postgresql://postgres:hunter2@db/atendeai\\nsecond line " + secret_local[:0]
        )

    @root.app.command("interrupt")
    def interrupt() -> None:
        raise KeyboardInterrupt

    sys.argv = ["atendeai", *sys.argv[1:]]
    root.main()
    """
)


def run_crashing(*args: str, debug: bool = False) -> Done:
    """The real root app and main(), with a command that fails the way a bug would."""
    env = {k: v for k, v in os.environ.items() if k != "ATENDEAI_DEBUG"}
    env["NO_COLOR"] = "1"
    if debug:
        env["ATENDEAI_DEBUG"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_COMMAND, *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return Done(done.returncode, done.stdout, done.stderr)


def test_an_unexpected_error_is_one_line_and_exit_1() -> None:
    done = run_crashing("boom")
    assert_one_line(
        done, 1, "Error: unexpected RuntimeError: cannot use postgresql://postgres:***@db"
    )
    assert "ATENDEAI_DEBUG=1" in done.stderr
    assert "hunter2" not in done.stderr and "second line" not in done.stderr


def test_an_unexpected_error_with_json_is_the_error_document() -> None:
    done = run_crashing("boom", "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "failed"
    assert json.loads(done.stdout)["error"]["message"].startswith("unexpected RuntimeError")


def test_atendeai_debug_adds_a_plain_traceback_without_locals() -> None:
    done = run_crashing("boom", debug=True)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("Error: unexpected RuntimeError")
    assert "hunter2-local-value" not in done.stderr  # Typer's pretty locals stay off
    assert "╭" not in done.stderr


def test_an_interrupt_is_exit_130_without_a_traceback() -> None:
    done = run_crashing("interrupt")
    assert done.returncode == 130
    assert "Traceback" not in done.stderr

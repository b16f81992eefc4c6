"""Property tests over the admin CLI's string arguments and stdin (issue 9).

Whatever text, bytes, NUL, lone surrogate or huge value reaches a command: no traceback, an
exit code from the documented set, and a refused command changes nothing (`clinic list
--json` and `user list --json` the same before and after). The bulk runs in-process through
the real boundary, cli.app.main() (argv, streams and environment swapped, nothing mocked),
against a migrated PostgreSQL and a real Redis; a few run as real subprocesses, where argv
bytes are decoded by Python itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.admin_helpers import Cli, make_cli
from tests.auth_helpers import AuthDb
from tests.cli_helpers import Ran, run_main

DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 5, 6, 7, 8}
PASSWORD = "a long enough secret"
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run(cli: Cli, args: list[str], stdin: bytes = b"") -> Ran:
    return run_main(args, stdin, cli.env)


def listing(cli: Cli) -> tuple[object, object]:
    clinics = run(cli, ["clinic", "list", "--json"])
    users = run(cli, ["user", "list", "--json"])
    assert clinics.code == 0 and users.code == 0, (clinics.stderr, users.stderr)
    return json.loads(clinics.stdout), json.loads(users.stdout)


def check(cli: Cli, args: list[str], stdin: bytes = b"") -> Ran:
    """Run once; the properties every input must keep."""
    before = listing(cli)
    ran = run(cli, args, stdin)
    assert "Traceback" not in ran.stderr, (args, ran.stderr)
    assert ran.code in DOCUMENTED_EXITS, (args, ran.code, ran.stderr)
    if ran.code != 0:
        assert listing(cli) == before, args
        if ran.code != 2:  # Click's usage errors are its own few lines
            assert len(ran.stderr.splitlines()) == 1, (args, ran.stderr)
        if "--json" in args and ran.code != 2:
            assert "error" in json.loads(ran.stdout), (args, ran.stdout)
    return ran


# Text as it reaches a program: any code point (NUL, controls, lone surrogates included),
# bytes decoded the way Python decodes argv (surrogateescape), and huge runs.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
argv_bytes = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
huge = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "-", "a@b."]),
                 st.integers(1_000, 100_000))  # fmt: skip
near_valid = st.sampled_from(
    ["alpha", "ALPHA", "ana@alpha.test", "ANA@Alpha.Test", " alpha ", "alpha\n", "",
     "admin", "base", "head", "-1", "--json", "-", "0001", "15m", "0s", "1e9s"]
)  # fmt: skip
hostile = st.one_of(any_text, argv_bytes, huge, near_valid, st.text(max_size=30))
stdin_bytes = st.one_of(
    st.binary(max_size=120),
    any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(PASSWORD.encode() + b"\n"),
    st.just(b"\x00" * 20),
)


@pytest.fixture
def cli(auth_db: AuthDb, redis_url: str, keys_dir: Path, state_dir: Path) -> Cli:
    made = make_cli(auth_db.admin_url, redis_url, keys_dir, state_dir)
    assert run(made, ["clinic", "create", "Alpha", "--slug", "alpha"]).code == 0
    created = run(made, ["user", "create", "ana@alpha.test", "--clinic", "alpha",
                              "--password-stdin"], PASSWORD.encode() + b"\n")  # fmt: skip
    assert created.code == 0, created.stderr
    return made


@SETTINGS
@given(name=hostile, slug=st.one_of(st.none(), hostile), as_json=st.booleans())
def test_clinic_create_and_show(cli: Cli, name: str, slug: str | None, as_json: bool) -> None:
    args = ["clinic", "create", name] + ([] if slug is None else ["--slug", slug])
    check(cli, args + (["--json"] if as_json else []))
    check(cli, ["clinic", "show", slug if slug is not None else name])


@SETTINGS
@given(email=hostile, clinic=hostile, name=st.one_of(st.none(), hostile), password=stdin_bytes)
def test_user_create(cli: Cli, email: str, clinic: str, name: str | None, password: bytes) -> None:
    args = ["user", "create", email, "--clinic", clinic, "--password-stdin"]
    check(cli, args + ([] if name is None else ["--name", name]), password)


@SETTINGS
@given(email=hostile, clinic=hostile, role=hostile)
def test_user_show_and_set_role(cli: Cli, email: str, clinic: str, role: str) -> None:
    check(cli, ["user", "show", email, "--clinic", clinic])
    check(cli, ["user", "set-role", email, role, "--clinic", clinic, "--json"])


@SETTINGS
@given(password=stdin_bytes, clinic=st.one_of(st.just("alpha"), hostile))
def test_user_set_password_from_stdin(cli: Cli, password: bytes, clinic: str) -> None:
    check(cli, ["user", "set-password", "ana@alpha.test", "--clinic", clinic,
                "--password-stdin"], password)  # fmt: skip


@SETTINGS
@given(token=hostile, stdin=stdin_bytes)
def test_token_verify(cli: Cli, token: str, stdin: bytes) -> None:
    ran = check(cli, ["token", "verify", token])
    assert ran.code != 0 or token.startswith("-")  # nothing here is a valid token
    check(cli, ["token", "verify", "-"], stdin)


@SETTINGS
@given(clinic=hostile, user=hostile, ttl=hostile, jti=hostile)
def test_token_issue_and_revoke(cli: Cli, clinic: str, user: str, ttl: str, jti: str) -> None:
    check(cli, ["token", "issue", "--clinic", clinic, "--user", user, "--ttl", ttl])
    check(cli, ["token", "revoke", "--jti", jti])


@SETTINGS
@given(
    clinic=st.one_of(st.none(), hostile),
    action=st.one_of(st.none(), hostile),
    since=st.one_of(st.none(), hostile),
)
def test_audit_and_user_list_filters(
    cli: Cli, clinic: str | None, action: str | None, since: str | None
) -> None:
    args = ["audit", "list", "--json"]
    for flag, value in (("--clinic", clinic), ("--action", action), ("--since", since)):
        if value is not None:
            args += [flag, value]
    check(cli, args)
    check(cli, ["user", "list"] + ([] if clinic is None else ["--clinic", clinic]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(revision=hostile)
def test_migrate_revisions(cli: Cli, revision: str) -> None:
    check(cli, ["migrate", "rollback", "--to", revision, "--dry-run"])
    check(cli, ["migrate", "up", revision, "--dry-run"])


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(arg=st.binary(min_size=1, max_size=30), stdin=st.binary(max_size=60))
def test_real_processes_with_raw_argv_bytes(cli: Cli, arg: bytes, stdin: bytes) -> None:
    """Python's own argv decoding, in a new process; stdin as raw bytes."""
    if b"\x00" in arg:  # the OS cannot pass a NUL in argv
        arg = arg.replace(b"\x00", b"")
    for args in ([b"user", b"create", arg, b"--clinic", b"alpha", b"--password-stdin"],
                 [b"clinic", b"show", arg], [b"token", b"verify", b"-"]):  # fmt: skip
        before = listing(cli)
        done = subprocess.run(
            [sys.executable, "-m", "atendeai_ctl", *args], env=cli.env, input=stdin,
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        stderr = done.stderr.decode("utf-8", "backslashreplace")
        assert b"Traceback" not in done.stderr, (args, stderr)
        assert done.returncode in DOCUMENTED_EXITS, (args, done.returncode, stderr)
        if done.returncode != 0:
            assert listing(cli) == before, args

"""Bad input to the admin commands: a distinct exit code, one `Error:` line on stderr, no
traceback, and nothing written (every table's row count unchanged, audit included)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests.admin_helpers import SEED_PASSWORD, Cli, assert_refused, make_cli
from tests.auth_helpers import AuthDb, dead_redis_url
from tests.servers import PostgresServer, free_port

PASSWORD = SEED_PASSWORD
CONFLICT, NOT_FOUND, INVALID, REFUSED, UNAVAILABLE = 5, 4, 6, 7, 1


@pytest.fixture
def cli(seeded_db: AuthDb, redis_url: str, keys_dir: Path, state_dir: Path) -> Cli:
    """The CLI on a copy of a database with clinic 'alpha' and ana@alpha.test."""
    return make_cli(seeded_db.admin_url, redis_url, keys_dir, state_dir)


CASES: list[tuple[list[str], str | None, int, str]] = [
    (["clinic", "create", "Other", "--slug", "ALPHA"], None, CONFLICT, "already exists"),
    (["clinic", "create", "Alpha"], None, CONFLICT, "'alpha' already exists"),
    (["user", "create", "ANA@Alpha.TEST", "--clinic", "alpha", "--password-stdin"],
     PASSWORD, CONFLICT, "already exists"),
    (["clinic", "show", "nowhere"], None, NOT_FOUND, "no clinic with slug 'nowhere'"),
    (["clinic", "rename", "nowhere", "X"], None, NOT_FOUND, "no clinic"),
    (["clinic", "disable", "nowhere"], None, NOT_FOUND, "no clinic"),
    (["user", "create", "bob@x.test", "--clinic", "nowhere", "--password-stdin"],
     PASSWORD, NOT_FOUND, "no clinic"),
    (["user", "list", "--clinic", "nowhere"], None, NOT_FOUND, "no clinic"),
    (["user", "show", "bob@alpha.test", "--clinic", "alpha"], None, NOT_FOUND, "no user"),
    (["user", "disable", "bob@alpha.test", "--clinic", "alpha"], None, NOT_FOUND, "no user"),
    (["user", "set-role", "bob@alpha.test", "admin", "--clinic", "alpha"], None, NOT_FOUND,
     "no user"),
    (["user", "set-password", "bob@alpha.test", "--clinic", "alpha", "--password-stdin"],
     PASSWORD, NOT_FOUND, "no user"),
    (["token", "issue", "--clinic", "alpha", "--user", "bob@alpha.test"], None, NOT_FOUND,
     "no user"),
    (["token", "issue", "--clinic", "nowhere", "--user", "ana@alpha.test"], None, NOT_FOUND,
     "no clinic"),
    (["token", "sessions", "--clinic", "alpha", "--user", "bob@alpha.test"], None, NOT_FOUND,
     "no user"),
    (["token", "revoke", "--user", "bob@alpha.test", "--clinic", "alpha"], None, NOT_FOUND,
     "no user"),
    (["audit", "list", "--clinic", "nowhere"], None, NOT_FOUND, "no clinic"),
    (["user", "create", "not-an-email", "--clinic", "alpha", "--password-stdin"], PASSWORD,
     INVALID, "is not an email address"),
    (["user", "create", "a@b@c.test", "--clinic", "alpha", "--password-stdin"], PASSWORD,
     INVALID, "is not an email address"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha", "--password-stdin"], "short",
     INVALID, "at least 12 characters"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha", "--password-stdin"], "é" * 37,
     INVALID, "74 bytes long; the limit is 72"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha", "--password-stdin"], "",
     INVALID, "no password on stdin"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha", "--password-stdin",
      "--generate-password"], PASSWORD, INVALID, "not both"),
    (["user", "set-password", "ana@alpha.test", "--clinic", "alpha", "--password-stdin"],
     "x" * 73, INVALID, "73 bytes long"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha", "--role", "root",
      "--password-stdin"], PASSWORD, INVALID, "role must be one of"),
    (["user", "set-role", "ana@alpha.test", "god", "--clinic", "alpha"], None, INVALID,
     "role must be one of"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha", "--name", "n" * 10_000,
      "--password-stdin"], PASSWORD, INVALID, "10000 characters"),
    (["user", "create", "bob@alpha.test", "--clinic", "alpha"], None, REFUSED,
     "no terminal to ask on"),
    (["user", "set-password", "ana@alpha.test", "--clinic", "alpha"], None, REFUSED,
     "no terminal"),
    (["clinic", "create", "x" * 10_000], None, INVALID, "10000 characters"),
    (["clinic", "create", "Tab\there"], None, INVALID, "control characters"),
    (["clinic", "create", "😀🦷😀"], None, INVALID, "cannot derive a slug"),
    (["clinic", "create", "Beta", "--slug", "bad slug"], None, INVALID, "is not valid"),
    (["clinic", "rename", "alpha", "y" * 201], None, INVALID, "201 characters"),
    (["clinic", "rename", "alpha", "   "], None, INVALID, "must not be empty"),
    (["token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test", "--ttl", "0s"], None,
     INVALID, "--ttl 0s is out of range"),
    (["token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test", "--ttl", "25h"],
     None, INVALID, "out of range"),
    (["token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test", "--ttl", "soon"],
     None, INVALID, "is not a duration"),
    (["token", "revoke"], None, INVALID, "give either --jti"),
    (["token", "revoke", "--jti", "x", "--user", "ana@alpha.test", "--clinic", "alpha"], None,
     INVALID, "give either --jti"),
    (["token", "revoke", "--user", "ana@alpha.test"], None, INVALID, "give either --jti"),
    (["token", "revoke", "--jti", "not-a-uuid"], None, INVALID, "is not a token id"),
    (["audit", "list", "--limit", "0"], None, INVALID, "--limit must be from 1"),
    (["audit", "list", "--since", "yesterday"], None, INVALID, "not a duration"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "stdin", "code", "fragment"), CASES)
def test_bad_input_is_one_line_a_distinct_exit_and_nothing_written(
    cli: Cli, args: list[str], stdin: str | None, code: int, fragment: str
) -> None:
    before = cli.counts()
    done = cli.run(*args, stdin=None if stdin is None else stdin + "\n")
    assert_refused(done, code, fragment)
    assert cli.counts() == before


def test_json_mode_errors_are_a_json_document_with_the_same_exit(cli: Cli) -> None:
    done = cli.run("clinic", "create", "Alpha", "--json")
    assert done.returncode == CONFLICT
    assert json.loads(done.stdout)["error"]["code"] == "conflict"
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr


def test_quotes_and_emoji_in_names_are_stored_exactly(cli: Cli) -> None:
    name = 'Clínica D\'Ávila "Sorriso" 😀; DROP TABLE atendeai.clinics; --'
    made = cli.json("clinic", "create", name)
    assert made["slug"] == "clinica-d-avila-sorriso-drop-table-atendeai-clinics"
    assert cli.json("clinic", "show", made["slug"])["name"] == name
    user = cli.json("user", "create", "o'brien@alpha.test", "--clinic", "alpha", "--name",
                    "Zoë \"Z\" O'Brien 🦷", "--generate-password")  # fmt: skip
    assert user["name"] == 'Zoë "Z" O\'Brien 🦷' and user["email"] == "o'brien@alpha.test"


def test_an_unreachable_database_is_one_line_and_exit_1(cli: Cli) -> None:
    dead = f"postgresql://postgres:secret-pw@127.0.0.1:{free_port()}/atendeai"
    for args in (["clinic", "list"], ["user", "disable", "ana@alpha.test", "--clinic", "alpha"],
                 ["audit", "list"], ["token", "rotate-keys"]):  # fmt: skip
        done = cli.run(*args, "--database-url", dead)
        assert_refused(done, UNAVAILABLE, "cannot connect to PostgreSQL")
        assert "secret-pw" not in done.stderr


def test_without_a_stack_or_url_the_command_says_how_to_target_one(
    cli: Cli, tmp_path: Path
) -> None:
    env = {k: v for k, v in cli.env.items() if k != "ATENDEAI_DATABASE_URL"}
    bare = Cli({**env, "ATENDEAI_STATE_DIR": str(tmp_path / "empty")}, cli.admin_url)
    assert_refused(bare.run("clinic", "list"), NOT_FOUND, "no generated secrets")


def test_redis_down_changes_nothing(cli: Cli, keys_dir: Path) -> None:
    token = cli.json("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")["token"]
    before = cli.counts()
    dead = dead_redis_url()
    for args in (["user", "disable", "ana@alpha.test", "--clinic", "alpha"],
                 ["clinic", "disable", "alpha"],
                 ["token", "revoke", "--user", "ana@alpha.test", "--clinic", "alpha"],
                 ["user", "set-password", "ana@alpha.test", "--clinic", "alpha",
                  "--generate-password"],
                 ["token", "verify", token]):  # fmt: skip
        assert_refused(cli.run(*args, "--redis-url", dead), UNAVAILABLE, "cannot reach Redis")
    assert cli.counts() == before
    assert cli.json("user", "show", "ana@alpha.test", "--clinic", "alpha")["status"] == "active"


def test_a_redis_failure_after_the_database_work_rolls_it_back(
    cli: Cli, seeded_db: AuthDb, redis_url: str
) -> None:
    """Redis answers the opening ping but refuses writes: the revocation must not commit."""
    client = redis.Redis.from_url(redis_url)
    client.config_set("min-replicas-to-write", 1)  # every write now fails (no replicas)
    try:
        cli.ok("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
        before = cli.counts()
        done = cli.run("user", "disable", "ana@alpha.test", "--clinic", "alpha")
        assert_refused(done, UNAVAILABLE, "NOREPLICAS Not enough good replicas")
    finally:
        client.config_set("min-replicas-to-write", 0)
        client.close()
    assert cli.counts() == before
    with psycopg.connect(seeded_db.admin_url) as conn:
        live = conn.execute(
            "SELECT count(*) FROM atendeai.sessions WHERE revoked_at IS NULL"
        ).fetchone()
    assert live == (1,)
    assert cli.json("user", "show", "ana@alpha.test", "--clinic", "alpha")["status"] == "active"


def test_verify_refuses_garbage_and_expired_tokens_with_exit_1(cli: Cli) -> None:
    assert_refused(cli.run("token", "verify", "not.a.token"), 1, "token is not valid: malformed")
    assert_refused(cli.run("token", "verify", stdin=""), 1, "token is not valid: malformed")
    token = cli.ok("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test",
                   "--ttl", "1s").strip()  # fmt: skip
    time.sleep(2.1)
    assert_refused(cli.run("token", "verify", token), 1, "token is not valid: expired")


def test_if_not_exists_exits_0_with_the_existing_record(cli: Cli) -> None:
    before = cli.counts()
    clinic = cli.json("clinic", "create", "Whatever", "--slug", "Alpha", "--if-not-exists")
    assert clinic["slug"] == "alpha" and clinic["name"] == "Alpha" and clinic["created"] is False
    user = cli.json("user", "create", "ANA@alpha.test", "--clinic", "alpha", "--if-not-exists",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert user["email"] == "ana@alpha.test" and user["created"] is False
    assert cli.counts() == before
    human = cli.run("clinic", "create", "Alpha", "--if-not-exists")
    assert human.returncode == 0 and "alpha" in human.stdout and "exists" in human.stderr


def test_wrong_credentials_are_exit_8_without_the_password(
    cli: Cli, seeded_db: AuthDb, redis_url: str
) -> None:
    wrong_db = seeded_db.admin_url.replace("postgres:", "postgres:not-the-pw-", 1)
    done = cli.run("clinic", "list", "--database-url", wrong_db)
    assert_refused(done, 8, "PostgreSQL rejected the credentials")
    assert "not-the-pw" not in done.stderr
    wrong_redis = redis_url.replace("redis://:", "redis://:not-the-pw-", 1)
    done = cli.run("user", "disable", "ana@alpha.test", "--clinic", "alpha",
                   "--redis-url", wrong_redis)  # fmt: skip
    assert_refused(done, 8, "Redis at 127.0.0.1")
    assert "not-the-pw" not in done.stderr


def test_a_database_without_the_schema_says_to_migrate(cli: Cli, pg: PostgresServer) -> None:
    empty = pg.create_database()
    try:
        for args in (["clinic", "list"], ["clinic", "create", "Beta"], ["audit", "list"],
                     ["user", "list"]):  # fmt: skip
            done = cli.run(*args, "--database-url", pg.url(empty))
            assert_refused(done, 3, "no atendeai schema")
            assert "atendeai migrate up" in done.stderr
    finally:
        pg.drop_database(empty)

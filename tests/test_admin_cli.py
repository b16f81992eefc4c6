"""`atendeai clinic|user|token|audit` end to end: real subprocesses, PostgreSQL, Redis, and the
auth service over HTTP (uvicorn on a free loopback port, connected as the RLS-bound role)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from tests.admin_helpers import OPERATOR, Cli, make_cli
from tests.auth_helpers import AuthDb, LiveServer, live_server

PASSWORD = "a long enough secret"


@pytest.fixture
def cli(auth_db: AuthDb, redis_url: str, keys_dir: Path, state_dir: Path) -> Cli:
    return make_cli(auth_db.admin_url, redis_url, keys_dir, state_dir)


@pytest.fixture
def live(auth_db: AuthDb, redis_url: str, keys_dir: Path) -> Iterator[LiveServer]:
    with live_server(auth_db, redis_url, keys_dir) as server:
        yield server


def login(live: LiveServer, clinic: str, email: str, password: str = PASSWORD) -> httpx.Response:
    with live.client() as http:
        return http.post(
            "/auth/login", json={"clinic": clinic, "email": email, "password": password}
        )


def me(live: LiveServer, token: str) -> httpx.Response:
    with live.client() as http:
        return http.get("/auth/me", headers={"Authorization": f"Bearer {token}"})


def setup_clinic(cli: Cli, slug: str, email: str) -> None:
    cli.ok("clinic", "create", f"Clinic {slug}", "--slug", slug)
    cli.ok("user", "create", email, "--clinic", slug, "--password-stdin", stdin=PASSWORD + "\n")


def test_clinic_create_derives_the_slug_and_every_view_agrees(cli: Cli) -> None:
    made = cli.json("clinic", "create", "Clínica Sorriso")
    assert made["slug"] == "clinica-sorriso" and made["name"] == "Clínica Sorriso"
    assert made["created"] is True and made["status"] == "active"
    again = cli.json("clinic", "create", "Clínica Sorriso", "--if-not-exists")
    assert again == {**made, "created": False}
    assert cli.json("clinic", "show", "CLINICA-SORRISO") == {
        k: v for k, v in made.items() if k != "created"
    }
    renamed = cli.json("clinic", "rename", "clinica-sorriso", "Clínica Sorriso & Cia")
    assert renamed["name"] == "Clínica Sorriso & Cia" and renamed["slug"] == "clinica-sorriso"
    listed = cli.json("clinic", "list")
    assert [(c["slug"], c["name"]) for c in listed] == [("clinica-sorriso", renamed["name"])]
    human = cli.ok("clinic", "list")
    assert "clinica-sorriso" in human and "Clínica Sorriso & Cia" in human
    assert [r[0] for r in cli.audit("clinic.create")] == [OPERATOR]
    (rename,) = cli.audit("clinic.rename")
    assert rename[0] == OPERATOR
    assert rename[3] == {"from": "Clínica Sorriso", "to": "Clínica Sorriso & Cia"}


def test_a_cli_user_logs_in_and_a_cli_token_works_until_revoked(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "Ana@Alpha.test")
    assert login(live, "alpha", "ana@alpha.test").status_code == 200
    issued = cli.json("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test",
                      "--ttl", "2h")  # fmt: skip
    assert 7190 <= issued["expires_in"] <= 7200
    body = me(live, issued["token"])
    assert body.status_code == 200, body.text
    assert body.json()["clinic"]["slug"] == "alpha"
    assert body.json()["user"]["email"] == "ana@alpha.test"
    claims = cli.json("token", "verify", issued["token"])
    assert claims["jti"] == issued["jti"] and claims["clinic_id"] == issued["clinic_id"]
    assert cli.json("token", "verify", stdin=issued["token"] + "\n")["jti"] == issued["jti"]

    cli.ok("token", "revoke", "--jti", issued["jti"])
    assert me(live, issued["token"]).status_code == 401
    refused = cli.run("token", "verify", issued["token"])
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "Error: token is not valid: revoked"
    )
    (revoke,) = cli.audit("token.revoke")
    assert revoke[0] == OPERATOR and revoke[2] == f"jti:{issued['jti']}"
    assert [r[0] for r in cli.audit("token.issue")] == [OPERATOR]


def test_plain_output_of_token_issue_is_only_the_token(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    done = cli.run("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
    assert done.returncode == 0
    token = done.stdout.strip()
    assert "\n" not in token and me(live, token).status_code == 200
    assert "jti" in done.stderr


def test_user_disable_refuses_tokens_at_once_and_enable_allows_login_again(
    cli: Cli, live: LiveServer
) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    session = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    issued = cli.json("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
    disabled = cli.json("user", "disable", "ana@alpha.test", "--clinic", "alpha")
    assert disabled["status"] == "disabled"
    assert me(live, session).status_code == 401
    assert me(live, issued["token"]).status_code == 401
    assert login(live, "alpha", "ana@alpha.test").status_code == 401
    assert cli.run("token", "verify", session).returncode == 1
    cli.ok("user", "enable", "ana@alpha.test", "--clinic", "alpha")
    fresh = login(live, "alpha", "ana@alpha.test")
    assert fresh.status_code == 200
    assert me(live, fresh.json()["access_token"]).status_code == 200
    assert me(live, session).status_code == 401  # ended sessions stay ended
    (disable,) = cli.audit("user.disable")
    assert disable[0] == OPERATOR and disable[3]["sessions_revoked"] == 2
    assert [r[0] for r in cli.audit("user.enable")] == [OPERATOR]


def test_set_password_and_set_role(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    old = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    cli.ok("user", "set-password", "ana@alpha.test", "--clinic", "alpha", "--password-stdin",
           stdin="the new one, long enough\n")  # fmt: skip
    assert me(live, old).status_code == 401
    assert login(live, "alpha", "ana@alpha.test").status_code == 401
    assert login(live, "alpha", "ana@alpha.test", "the new one, long enough").status_code == 200
    changed = cli.json("user", "set-role", "ana@alpha.test", "owner", "--clinic", "alpha")
    assert changed["role"] == "owner"
    token = login(live, "alpha", "ana@alpha.test", "the new one, long enough").json()
    assert me(live, token["access_token"]).json()["user"]["role"] == "owner"
    assert [r[0] for r in cli.audit("user.set_password")] == [OPERATOR]
    assert [r[3] for r in cli.audit("user.set_role")] == [{"role": "owner"}]


def test_a_disabled_clinics_users_cannot_log_in(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    session = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    assert cli.json("clinic", "disable", "alpha")["status"] == "disabled"
    assert login(live, "alpha", "ana@alpha.test").status_code == 401
    assert me(live, session).status_code == 401
    refused = cli.run("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
    assert refused.returncode == 5 and "disabled" in refused.stderr
    cli.ok("clinic", "enable", "alpha")
    assert login(live, "alpha", "ana@alpha.test").status_code == 200
    (disable,) = cli.audit("clinic.disable")
    assert disable[0] == OPERATOR and disable[3] == {"sessions_revoked": 1}


def test_sessions_listed_and_revoked_for_one_user(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    tokens = [login(live, "alpha", "ana@alpha.test").json()["access_token"] for _ in range(2)]
    listed = cli.json("token", "sessions", "--clinic", "alpha", "--user", "ana@alpha.test")
    assert len(listed) == 2 and all(s["revoked_at"] is None for s in listed)
    revoked = cli.json("token", "revoke", "--user", "ana@alpha.test", "--clinic", "alpha")
    assert revoked == {"jti": None, "user": "ana@alpha.test", "clinic": "alpha",
                       "sessions_revoked": 2}  # fmt: skip
    assert [me(live, t).status_code for t in tokens] == [401, 401]
    assert cli.json("token", "sessions", "--clinic", "alpha", "--user", "ana@alpha.test") == []
    ended = cli.json("token", "sessions", "--clinic", "alpha", "--user", "ana@alpha.test", "--all")
    assert {s["revoked_reason"] for s in ended} == {"admin"}
    assert [r[0] for r in cli.audit("session.revoke")] == [OPERATOR]


def test_rotate_keys_keeps_old_tokens_valid_and_the_service_signs_with_the_new_key(
    cli: Cli, live: LiveServer
) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    old = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    old_kid = jwt.get_unverified_header(old)["kid"]
    first = cli.json("token", "rotate-keys")
    rotation = cli.json("token", "rotate-keys")  # within a second: still the new one signs
    assert [k["kid"] for k in rotation["keys"]] == [old_kid, first["kid"], rotation["kid"]]
    assert [k["signing"] for k in rotation["keys"]] == [False, False, True]
    assert rotation["pruned"] == []
    time.sleep(1.1)  # the service re-reads the directory at most once a second
    with live.client() as http:
        kids = {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]}
    assert kids == {old_kid, first["kid"], rotation["kid"]}
    assert me(live, old).status_code == 200
    new = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    assert jwt.get_unverified_header(new)["kid"] == rotation["kid"]
    issued = cli.json("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
    assert jwt.get_unverified_header(issued["token"])["kid"] == rotation["kid"]
    assert me(live, issued["token"]).status_code == 200
    audits = cli.audit("key.rotate")
    assert [(a[0], a[2]) for a in audits] == [
        (OPERATOR, f"kid:{first['kid']}"), (OPERATOR, f"kid:{rotation['kid']}"),
    ]  # fmt: skip


def test_audit_list_shows_every_admin_action_with_the_operator(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    setup_clinic(cli, "beta", "bob@beta.test")
    issued = cli.json("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
    cli.ok("token", "revoke", "--jti", issued["jti"])
    cli.ok("token", "revoke", "--user", "ana@alpha.test", "--clinic", "alpha")
    cli.ok("user", "disable", "ana@alpha.test", "--clinic", "alpha")
    cli.ok("user", "enable", "ana@alpha.test", "--clinic", "alpha")
    cli.ok("user", "set-role", "ana@alpha.test", "admin", "--clinic", "alpha")
    cli.ok("user", "set-password", "ana@alpha.test", "--clinic", "alpha", "--generate-password")
    cli.ok("clinic", "rename", "alpha", "Alpha Renamed")
    cli.ok("clinic", "disable", "alpha")
    cli.ok("clinic", "enable", "alpha")
    cli.ok("token", "rotate-keys")
    assert login(live, "alpha", "nobody@alpha.test").status_code == 401

    rows = cli.json("audit", "list", "--clinic", "alpha", "--limit", "100")
    admin_actions = [r["action"] for r in rows if r["actor"] == OPERATOR]
    assert admin_actions == list(reversed([
        "clinic.create", "user.create", "token.issue", "token.revoke", "session.revoke",
        "user.disable", "user.enable", "user.set_role", "user.set_password", "clinic.rename",
        "clinic.disable", "clinic.enable",
    ]))  # fmt: skip
    assert {r["clinic"] for r in rows} == {"alpha"}
    assert [r["detail"]["reason"] for r in rows if r["action"] == "login"] == ["unknown_user"]
    everything = cli.json("audit", "list", "--limit", "1000")
    assert {"key.rotate", "clinic.create"} <= {r["action"] for r in everything}
    assert {r["clinic"] for r in everything} == {"alpha", "beta", None}
    creates = cli.json("audit", "list", "--action", "clinic.create")
    assert [r["clinic"] for r in creates] == ["beta", "alpha"]
    assert len(cli.json("audit", "list", "--limit", "3")) == 3
    with psycopg.connect(cli.admin_url) as conn:
        conn.execute(
            "INSERT INTO atendeai.audit_log (at, actor, action, outcome)"
            " VALUES (now() - interval '2 hours', 'cli:someone', 'old.action', 'success')"
        )
    recent = cli.json("audit", "list", "--since", "1h", "--limit", "1000")
    assert len(recent) == len(everything) and "old.action" not in {r["action"] for r in recent}
    older = cli.json("audit", "list", "--since", "3h", "--limit", "1000")
    assert older[-1]["action"] == "old.action" and len(older) == len(everything) + 1
    human = cli.ok("audit", "list", "--clinic", "beta")
    assert "user.create" in human and OPERATOR in human and "alpha" not in human


def test_generated_password_is_printed_once_and_works(cli: Cli, live: LiveServer) -> None:
    cli.ok("clinic", "create", "Alpha", "--slug", "alpha")
    made = cli.json("user", "create", "ana@alpha.test", "--clinic", "alpha",
                    "--generate-password", "--role", "admin", "--name", "Ana Souza")  # fmt: skip
    assert made["created"] is True and made["role"] == "admin" and made["name"] == "Ana Souza"
    assert len(made["password"]) >= 20
    assert login(live, "alpha", "ana@alpha.test", made["password"]).status_code == 200
    shown = cli.json("user", "show", "ana@alpha.test", "--clinic", "alpha")
    assert "password" not in shown and made["password"] not in cli.ok("user", "list")
    again = cli.json("user", "create", "ANA@alpha.test", "--clinic", "alpha",
                     "--generate-password", "--if-not-exists")  # fmt: skip
    assert again["created"] is False and again["password"] is None and again["id"] == made["id"]
    assert made["password"] not in str(cli.audit("user.create"))


def test_without_a_flag_a_terminal_is_asked_twice_with_hidden_input(
    cli: Cli, live: LiveServer
) -> None:
    cli.ok("clinic", "create", "Alpha", "--slug", "alpha")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal and stdin
        os.execvpe(sys.executable, [sys.executable, "-m", "atendeai_ctl", "user", "create",
                                    "ana@alpha.test", "--clinic", "alpha"], cli.env)  # fmt: skip
    seen = b""
    for prompt in (b"Password: ", b"Repeat for confirmation: "):
        while not seen.endswith(prompt):
            seen += _read(fd)
        os.write(fd, PASSWORD.encode() + b"\n")
    while chunk := _read(fd):
        seen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert PASSWORD.encode() not in seen  # never echoed
    assert b"Created user ana@alpha.test." in seen
    assert login(live, "alpha", "ana@alpha.test").status_code == 200


def _read(fd: int) -> bytes:
    """Bytes from the pty; b"" once the child has exited and closed it."""
    ready, _, _ = select.select([fd], [], [], 30)
    assert ready, "the command stopped answering"
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other side is gone
        return b""


def test_clinic_isolation_through_every_endpoint_and_command(cli: Cli, live: LiveServer) -> None:
    for slug in ("alpha", "beta"):
        setup_clinic(cli, slug, "same@both.test")
    cli.ok("user", "create", "only@alpha.test", "--clinic", "alpha", "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    a = login(live, "alpha", "same@both.test").json()
    b = login(live, "beta", "same@both.test").json()
    issued_a: dict[str, Any] = cli.json("token", "issue", "--clinic", "alpha", "--user",
                                        "same@both.test")  # fmt: skip
    assert login(live, "beta", "only@alpha.test").status_code == 401
    with live.client() as http:
        for token in (a["access_token"], issued_a["token"]):
            auth = {"Authorization": f"Bearer {token}"}
            assert http.get("/auth/me", headers=auth).json()["clinic"]["slug"] == "alpha"
            verified = http.get("/auth/verify", headers=auth).json()
            assert verified["clinic_id"] == issued_a["clinic_id"]
        refreshed = http.post("/auth/refresh", json={"refresh_token": a["refresh_token"]})
        assert me(live, refreshed.json()["access_token"]).json()["clinic"]["slug"] == "alpha"
        logout = http.post("/auth/logout", json={"scope": "global"},
                           headers={"Authorization": f"Bearer {a['access_token']}"})  # fmt: skip
        assert logout.status_code == 204
    assert me(live, b["access_token"]).json()["clinic"]["slug"] == "beta"
    cli.ok("token", "revoke", "--user", "same@both.test", "--clinic", "alpha")
    assert me(live, b["access_token"]).status_code == 200
    assert cli.json("token", "verify", b["access_token"])["clinic_id"] != issued_a["clinic_id"]
    assert [u["email"] for u in cli.json("user", "list", "--clinic", "beta")] == ["same@both.test"]
    assert cli.run("user", "show", "only@alpha.test", "--clinic", "beta").returncode == 4
    beta_sessions = cli.json("token", "sessions", "--clinic", "beta", "--user", "same@both.test")
    assert len(beta_sessions) == 1
    alpha_id = issued_a["clinic_id"]
    assert all(r["clinic_id"] != alpha_id for r in cli.json("audit", "list", "--clinic", "beta"))
    every = cli.json("user", "list")
    assert sorted((u["clinic"], u["email"]) for u in every) == [
        ("alpha", "only@alpha.test"), ("alpha", "same@both.test"), ("beta", "same@both.test"),
    ]  # fmt: skip
    cli.ok("user", "disable", "same@both.test", "--clinic", "alpha")
    cli.ok("clinic", "disable", "alpha")
    assert cli.json("user", "show", "same@both.test", "--clinic", "beta")["status"] == "active"
    assert me(live, b["access_token"]).status_code == 200
    assert login(live, "beta", "same@both.test").status_code == 200


def _documented_keys() -> dict[str, set[str]]:
    """The JSON key table of docs/admin.md: command -> the keys its objects carry."""
    doc = (Path(__file__).parent.parent / "docs" / "admin.md").read_text()
    section = doc.split("## JSON output")[1].split("\n## ")[0]
    found: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"^\| `?([a-z][a-z -]+?)`? \| (.*) \|$", line)
        if match and match.group(1) != "command":  # not the header row
            top_level = re.sub(r"\([^)]*\)", "", match.group(2))  # nested keys aside
            named = re.findall(r"`([^`]+)`", top_level)
            # "array of `clinic show` objects": the same keys as that command's
            found[match.group(1)] = found[named[0]] if named[0] in found else set(named)
    return found


def test_json_keys_are_the_documented_ones(cli: Cli, live: LiveServer) -> None:
    docs = _documented_keys()
    email = ["ana@alpha.test", "--clinic", "alpha"]
    outputs: dict[str, Any] = {
        "clinic create": cli.json("clinic", "create", "Alpha", "--slug", "alpha"),
        "clinic show": cli.json("clinic", "show", "alpha"),
        "clinic list": cli.json("clinic", "list")[0],
        "clinic rename": cli.json("clinic", "rename", "alpha", "Alpha 2"),
        "user create": cli.json("user", "create", *email, "--generate-password"),
        "user show": cli.json("user", "show", *email),
        "user list": cli.json("user", "list")[0],
        "user set-role": cli.json("user", "set-role", "ana@alpha.test", "admin", "--clinic",
                                  "alpha"),
        "token issue": cli.json("token", "issue", "--clinic", "alpha", "--user",
                                "ana@alpha.test"),
        "token sessions": cli.json("token", "sessions", "--clinic", "alpha", "--user",
                                   "ana@alpha.test")[0],
        "token revoke": cli.json("token", "revoke", "--user", "ana@alpha.test", "--clinic",
                                 "alpha"),
        "user disable": cli.json("user", "disable", *email),
        "user enable": cli.json("user", "enable", *email),
        "user set-password": cli.json("user", "set-password", *email, "--generate-password"),
        "clinic disable": cli.json("clinic", "disable", "alpha"),
        "clinic enable": cli.json("clinic", "enable", "alpha"),
        "audit list": cli.json("audit", "list")[0],
    }  # fmt: skip
    issued = cli.json("token", "issue", "--clinic", "alpha", "--user", "ana@alpha.test")
    outputs["token verify"] = json.loads(cli.ok("token", "verify", issued["token"]))
    outputs["token rotate-keys"] = cli.json("token", "rotate-keys")
    outputs["any error"] = json.loads(cli.run("clinic", "show", "nowhere", "--json").stdout)
    assert set(outputs) == set(docs)
    for command, document in outputs.items():
        assert set(document) == docs[command], command
    assert set(outputs["token rotate-keys"]["keys"][0]) == {"kid", "created_at", "signing"}
    assert set(outputs["any error"]["error"]) == {"code", "message", "hint"}


def test_revoking_a_login_tokens_jti_refuses_it_at_once(cli: Cli, live: LiveServer) -> None:
    setup_clinic(cli, "alpha", "ana@alpha.test")
    token = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    other = login(live, "alpha", "ana@alpha.test").json()["access_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    cli.ok("token", "revoke", "--jti", jti.upper())
    assert me(live, token).status_code == 401
    assert me(live, other).status_code == 200  # only that token
    (row,) = cli.audit("token.revoke")
    assert row == (OPERATOR, "success", f"jti:{jti}", {"issued_by_cli": False})

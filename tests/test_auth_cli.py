"""`atendeai auth serve | rotate-key | keys` as an operator runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.auth_helpers import PASSWORD, AuthDb
from tests.serve_helpers import auth_serve
from tests.servers import free_port


def atendeai(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    return {**env, "ATENDEAI_STATE_DIR": str(state_dir), **extra}


def test_serve_with_two_workers_answers_and_logs_json(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, state_dir: Path
) -> None:
    env = _env(
        state_dir,
        ATENDEAI_DATABASE_URL=auth_db.app_url,
        ATENDEAI_REDIS_URL=redis_url,
        ATENDEAI_JWT_KEYS_DIR=str(keys_dir),
        ATENDEAI_AUTH_BCRYPT_COST="10",
    )
    with auth_serve(env, "--workers", "2") as served:
        login = httpx.post(
            served.url + "/auth/login",
            json={"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD},
        )
        assert login.status_code == 200
        assert httpx.get(served.url + "/health/ready").status_code == 200
    out = served.output
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert events.count("started") == 2
    assert "login" in events
    assert PASSWORD not in out


def test_serve_refuses_to_start_without_keys(
    auth_db: AuthDb, redis_url: str, tmp_path: Path, state_dir: Path
) -> None:
    env = _env(
        state_dir,
        ATENDEAI_DATABASE_URL=auth_db.app_url,
        ATENDEAI_REDIS_URL=redis_url,
        ATENDEAI_JWT_KEYS_DIR=str(tmp_path / "missing"),
    )
    result = atendeai("auth", "serve", "--port", str(free_port()), env=env)
    assert result.returncode == 4
    assert "keys directory" in result.stderr and "does not exist" in result.stderr


def test_rotate_key_and_list_keys(tmp_path: Path, state_dir: Path) -> None:
    keys_dir = tmp_path / "jwt"
    env = _env(state_dir)
    first = atendeai("auth", "rotate-key", "--keys-dir", str(keys_dir), "--json", env=env)
    assert first.returncode == 0, first.stderr
    kid = json.loads(first.stdout)["kid"]
    listed = atendeai("auth", "keys", "--keys-dir", str(keys_dir), "--json", env=env)
    assert listed.returncode == 0 and listed.stderr == ""
    assert [(k["kid"], k["signing"]) for k in json.loads(listed.stdout)] == [(kid, True)]

"""Settings precedence (flag > environment > .env > configs/) and the state directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atendeai_ctl.config import load_config
from atendeai_ctl.errors import AtendeaiError

ROOT = Path(__file__).parent.parent


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(ROOT / "compose", root / "compose")
    shutil.copytree(ROOT / "configs", root / "configs")
    return root


def test_precedence_flag_env_dotenv_defaults(state_dir: Path, project_dir: Path) -> None:
    (project_dir / ".env").write_text("ATENDEAI_REDIS_PORT=7000\nATENDEAI_AUTH_PORT=7001\n")
    env = {"ATENDEAI_PROJECT_DIR": str(project_dir), "ATENDEAI_AUTH_PORT": "8001"}
    cfg = load_config({"ATENDEAI_POSTGRES_PORT": "9432", "ATENDEAI_BIND": None}, environ=env)
    assert cfg.settings["ATENDEAI_POSTGRES_PORT"].value == "9432"
    assert cfg.settings["ATENDEAI_POSTGRES_PORT"].source == "flag"
    assert (cfg.get("ATENDEAI_AUTH_PORT"), cfg.settings["ATENDEAI_AUTH_PORT"].source) == (
        "8001",
        "environment",
    )
    assert (cfg.get("ATENDEAI_REDIS_PORT"), cfg.settings["ATENDEAI_REDIS_PORT"].source) == (
        "7000",
        ".env",
    )
    assert cfg.settings["ATENDEAI_BIND"].source == "configs/atendeai.env"
    assert cfg.get("ATENDEAI_BIND") == "127.0.0.1"


def test_secrets_are_generated_once_with_0600(state_dir: Path) -> None:
    first = load_config().with_secrets(generate=True)
    secrets_file = state_dir / "atendeai" / "secrets.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert (state_dir / "atendeai").stat().st_mode & 0o777 == 0o700
    again = load_config().with_secrets(generate=True)
    for key in (
        "ATENDEAI_POSTGRES_PASSWORD",
        "ATENDEAI_REDIS_PASSWORD",
        "ATENDEAI_APP_DB_PASSWORD",
    ):
        value = first.get(key)
        assert value and len(value) >= 32 and again.get(key) == value
    assert "127.0.0.1:5432/atendeai" in first.database_url()
    assert first.database_url(role="app").startswith("postgresql://atendeai_app:")


def test_no_secrets_means_a_clear_error(state_dir: Path) -> None:
    with pytest.raises(AtendeaiError, match="no generated secrets") as caught:
        load_config().with_secrets(generate=False).database_url()
    assert caught.value.code == "not_found"
    assert caught.value.hint and "atendeai up" in caught.value.hint


@pytest.mark.parametrize(
    ("overrides", "message", "code"),
    [
        ({"ATENDEAI_PROJECT": "Bad Name"}, "project name 'Bad Name' is not valid", "invalid"),
        (
            {"ATENDEAI_PROJECT_DIR": "/nonexistent"},
            "has no compose/docker-compose.yml",
            "not_found",
        ),
    ],
)
def test_bad_settings(state_dir: Path, overrides: dict[str, str], message: str, code: str) -> None:
    with pytest.raises(AtendeaiError, match=message) as caught:
        load_config(overrides)
    assert caught.value.code == code


def test_bad_port_setting_is_one_line(state_dir: Path) -> None:
    with pytest.raises(AtendeaiError, match="'http' is not a port number") as caught:
        load_config({"ATENDEAI_POSTGRES_PORT": "http"}).port("ATENDEAI_POSTGRES_PORT")
    assert caught.value.code == "invalid" and "\n" not in caught.value.message


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", *args],
        env=env, cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip


def test_config_show_masks_secrets_and_names_sources(state_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ATENDEAI_REDIS_PORT": "6500"}
    shown = _cli("config", "env", env=env, cwd=tmp_path)
    secrets = dict(line.split("=", 1) for line in shown.stdout.splitlines())
    doc = json.loads(_cli("config", "show", "--json", env=env, cwd=tmp_path).stdout)
    settings = doc["settings"]
    assert settings["ATENDEAI_REDIS_PORT"] == {"value": "6500", "source": "environment"}
    assert settings["ATENDEAI_POSTGRES_PASSWORD"] == {"value": "********", "source": "state"}
    human = _cli("config", "show", env=env, cwd=tmp_path).stdout
    assert secrets["ATENDEAI_POSTGRES_PASSWORD"] not in human + json.dumps(doc)


def test_config_env_makes_the_signing_key_compose_mounts(state_dir: Path, tmp_path: Path) -> None:
    """`docker compose --env-file <(atendeai config env)` on a fresh state dir: the auth
    service mounts ATENDEAI_JWT_KEYS_DIR and never became ready when it held no key."""
    shown = _cli("config", "env", env=dict(os.environ), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    values = dict(line.split("=", 1) for line in shown.stdout.splitlines())
    keys_dir = Path(values["ATENDEAI_JWT_KEYS_DIR"])
    assert keys_dir.is_relative_to(state_dir)
    keys = [p for p in keys_dir.iterdir() if p.is_file()]
    assert keys, f"no signing key in {keys_dir}"
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys)


def test_version_and_module_entry_point(tmp_path: Path) -> None:
    from atendeai_ctl import __version__

    done = _cli("--version", env=dict(os.environ), cwd=tmp_path)
    assert done.stdout.strip() == f"atendeai {__version__}"
    console = shutil.which("atendeai")
    assert console is not None
    assert (
        subprocess.run([console, "--version"], capture_output=True, text=True).stdout == done.stdout
    )

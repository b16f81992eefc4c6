"""The wheel carries compose/, migrations/ and configs/, so an installed atendeai works from any
directory without a checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_ships_the_project_files_and_uses_them(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("atendeai_ctl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "atendeai_ctl/_project/compose/docker-compose.yml",
        "atendeai_ctl/_project/compose/auth/Dockerfile",
        "atendeai_ctl/_project/configs/atendeai.env",
        "atendeai_ctl/_project/migrations/env.py",
        "atendeai_ctl/_project/migrations/script.py.mako",
        "atendeai_ctl/_project/requirements/runtime.txt",
    ):
        assert required in names
    # every revision of the checkout, not just the migrations directory's scaffolding
    revisions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert revisions, "the checkout has no revisions: this test would prove nothing"
    shipped = sorted(
        name.rsplit("/", 1)[1]
        for name in names
        if name.startswith("atendeai_ctl/_project/migrations/versions/") and name.endswith(".py")
    )
    assert shipped == revisions
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(PYTHONPATH=str(unpacked), ATENDEAI_STATE_DIR=str(tmp_path / "state"))
    shown = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "config", "show", "--json"],
        env=env, cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    project_dir = json.loads(shown.stdout)["settings"]["ATENDEAI_PROJECT_DIR"]["value"]
    assert project_dir == str(unpacked / "atendeai_ctl" / "_project")
    # and the shipped revisions are the ones the installed command migrates with (offline SQL)
    sql = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "migrate", "sql", "base:head"],
        env=env, cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert sql.returncode == 0, sql.stderr
    ids = [name.split("_", 1)[0] for name in revisions]
    steps = [line for line in sql.stdout.splitlines() if line.startswith("-- Running upgrade")]
    assert [line.rsplit("-> ", 1)[1].strip() for line in steps] == ids

"""The `backup` service on the real engine (stand-in images), and `down --volumes`, which
takes and verifies a backup before it deletes anything (unless --no-backup)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from atendeai_ctl.db.backup import list_backups
from atendeai_ctl.db.schedule import read_status
from tests.stack_helpers import admin_url, new_project, project_resources, remove_project
from tests.test_audit_partitions import attached_partitions, coming_partitions, drop_future

pytestmark = pytest.mark.docker


def _wait(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_the_backup_service_runs_on_schedule_and_down_volumes_keeps_a_verified_backup(
    tmp_path: Path,
) -> None:
    project = new_project(
        tmp_path,
        prefix="bk",
        ATENDEAI_BACKUP_SCHEDULE="*/3 * * * * *",
        ATENDEAI_BACKUP_KEEP="2",
    )
    backups = project.state_dir / project.name / "backups"
    try:
        up = project.run("up", "--profile", "backup", timeout=900)
        assert up.returncode == 0, up.stderr[-3000:]
        first = _wait("a scheduled backup", lambda: read_status(backups))
        assert first["last_run"]["ok"] is True, first
        # The scheduler creates the coming audit partitions on each run.
        url = admin_url(project)
        drop_future(url)
        seen = {first["last_run"]["file"]}

        def next_run() -> dict[str, Any] | None:
            note = read_status(backups)
            if note and note["last_run"]["file"] not in seen:
                return note
            return None

        for _ in range(2):
            note = _wait("the next scheduled backup", next_run, 60)
            assert note["last_run"]["ok"] is True and note["last_run"]["verified"] is True
            seen.add(note["last_run"]["file"])
        assert set(coming_partitions(url)) <= attached_partitions(url)
        entries = [e for e in list_backups(backups) if e.manifest]
        assert len(entries) == 2  # ATENDEAI_BACKUP_KEEP
        for entry in entries:
            assert entry.manifest is not None and entry.manifest.reason == "scheduled"
            assert entry.manifest.verified is not None and entry.manifest.verified.ok
        logs = project.run("logs", "backup")
        assert logs.stdout.count(" backup ok ") >= 3, logs.stdout[-2000:]

        status = project.json("status")
        assert status["warnings"] == [], status["warnings"]
        assert "backup" in {s["name"] for s in status["services"]}

        import docker

        container = docker.from_env().containers.get(f"{project.name}-backup-1")
        stopped = time.monotonic()
        container.stop(timeout=30)
        # SIGTERM ends the wait at once, or the backup under way first (a few seconds here);
        # exit 0, not the 137 of the SIGKILL that would follow the 30 s.
        assert time.monotonic() - stopped < 20
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0

        down = project.run("down", "--volumes", "--yes", "--json")
        assert down.returncode == 0, down.stderr
        taken = json.loads(down.stdout)["backup"]
        assert taken["verified"] is True
        (entry,) = [e for e in list_backups(backups) if str(e.path) == taken["file"]]
        assert entry.manifest is not None and entry.manifest.reason == "pre-down"
        assert entry.manifest.verified is not None and entry.manifest.verified.ok
        assert project_resources(project.name) == {"containers": [], "networks": [], "volumes": []}
    finally:
        remove_project(project.name)


def test_down_volumes_deletes_nothing_when_the_backup_fails_and_no_backup_skips_it(
    tmp_path: Path,
) -> None:
    project = new_project(tmp_path, prefix="bk")
    backups = project.state_dir / project.name / "backups"
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory\n")
    try:
        up = project.run("up", timeout=900)
        assert up.returncode == 0, up.stderr[-3000:]
        before = project_resources(project.name)
        failed = project.run(
            "down",
            "--volumes",
            "--yes",
            extra_env={"ATENDEAI_BACKUP_DIR": str(in_the_way / "backups")},
        )
        assert failed.returncode == 1
        assert "nothing was deleted" in failed.stderr and "--no-backup" in failed.stderr
        assert project_resources(project.name) == before
        assert project.run("status").returncode == 0  # still running, untouched

        skipped = project.run("down", "--volumes", "--yes", "--no-backup", "--json")
        assert skipped.returncode == 0, skipped.stderr
        assert json.loads(skipped.stdout)["backup"] is None
        assert list_backups(backups) == []
        assert project_resources(project.name)["volumes"] == []
    finally:
        remove_project(project.name)

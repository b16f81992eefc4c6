"""`down` on the local runtime against a process that will not stop when asked.

A service that ignores SIGTERM (and has a child that ignores it too) must be killed once its
`stop_grace_period` has passed, not waited on forever, and not killed before the grace: the
test times `down` and looks for every pid afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.test_local_runtime import local_project, running, scratch

GRACE_S = 2.0

# Ignores SIGTERM, forks a child that inherits that, says both pids, then sleeps forever.
STUBBORN = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = os.fork()\n"
    "if child == 0:\n"
    "    while True: time.sleep(1)\n"
    "print(f'stubborn {os.getpid()} {child}', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def _compose(grace: str) -> str:
    return json.dumps(
        {
            "x-atendeai": {"schema": 1},
            "services": {
                "stubborn": {
                    "image": "unused:0",
                    "x-atendeai": {
                        "local": {"kind": "python", "command": ["python", "-c", STUBBORN]}
                    },
                    "stop_grace_period": grace,
                }
            },
        }
    )


@pytest.mark.local
def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    with scratch() as base:
        project_dir = base / "proj"
        root = Path(__file__).parent.parent
        for sub in ("configs", "migrations"):
            shutil.copytree(root / sub, project_dir / sub)
        (project_dir / "compose").mkdir()
        (project_dir / "compose" / "docker-compose.yml").write_text(_compose(f"{GRACE_S:g}s"))
        project = local_project(base, ATENDEAI_PROJECT_DIR=str(project_dir))
        pids: list[int] = []
        try:
            up = project.run("up", "--json")
            assert up.returncode == 0, up.stdout + up.stderr
            deadline = time.monotonic() + 10
            while not pids:
                said = project.run("logs", "stubborn").stdout.split()
                if "stubborn" in said:
                    at = said.index("stubborn")
                    pids = [int(said[at + 1]), int(said[at + 2])]
                assert time.monotonic() < deadline, "the stubborn service never said its pids"
                time.sleep(0.1)
            assert all(running(pid) for pid in pids)
            ignored = Path(f"/proc/{pids[0]}/status").read_text()
            sig_ign = next(line for line in ignored.splitlines() if line.startswith("SigIgn:"))
            assert int(sig_ign.split()[1], 16) & (1 << (signal.SIGTERM - 1))  # really ignores it

            started = time.monotonic()
            down = project.run("down", timeout=60)
            took = time.monotonic() - started
            assert down.returncode == 0, down.stderr
            assert [pid for pid in pids if running(pid)] == []
            assert took >= GRACE_S, f"killed after {took:.1f}s, before the {GRACE_S}s grace"
            assert took < GRACE_S + 8, f"down took {took:.1f}s for a {GRACE_S}s grace"
            status = project.run("status", "--json")
            services = json.loads(status.stdout)["services"]
            assert [(s["name"], s["state"]) for s in services] == [("stubborn", "missing")]
        finally:
            for pid in pids:  # only if the test failed before `down` killed them
                if running(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            project.run("down", "--volumes", "--yes", "--no-backup", timeout=60)

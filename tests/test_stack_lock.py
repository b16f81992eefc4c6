"""The per-project lock: commands that change a project (`up`, `down`, `migrate up|rollback`,
`db restore`) run one at a time; a second one waits and says for whom, or with `--no-wait`
fails at once with exit 5. No Docker needed: the lock is taken before anything else."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.state import project_state
from tests.stack_helpers import Project, new_project

HOLD = """
import sys, time
from pathlib import Path
from atendeai_ctl.state import project_state

with project_state(Path(sys.argv[1]), sys.argv[2]).lock("up"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return new_project(tmp_path, images=False)


class Holder:
    """Another process holding the project's lock, as a running `atendeai up` would."""

    def __init__(self, project: Project, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(project.state_dir), project.name, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self) -> None:
        self.proc.wait(timeout=30)


@pytest.fixture
def holder(project: Project) -> Iterator[Holder]:
    held = Holder(project, 30)
    yield held
    held.proc.kill()
    held.wait()


def test_a_second_lock_fails_at_once_without_wait_and_names_the_holder(tmp_path: Path) -> None:
    state = project_state(tmp_path, "p1")
    with state.lock("up"), pytest.raises(AtendeaiError) as err, state.lock("down", wait=False):
        pass
    assert err.value.code == "conflict"
    assert f"pid {os.getpid()}, atendeai up" in err.value.message
    with state.lock("down", wait=False):  # released: free again
        pass


def test_a_second_lock_waits_says_so_and_gets_it_after_release(tmp_path: Path) -> None:
    state = project_state(tmp_path, "p1")
    heard: list[str] = []
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with state.lock("up"):
            first_in.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with state.lock("down", on_wait=heard.append):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert heard == [
        f"waiting for another atendeai command on project p1 (pid {os.getpid()}, atendeai up)…"
    ]


def test_other_projects_are_not_locked(tmp_path: Path) -> None:
    with project_state(tmp_path, "p1").lock("up"), project_state(tmp_path, "p2").lock("up"):
        pass


@pytest.mark.parametrize(
    "command",
    [
        ["up"],
        ["down"],
        ["migrate", "up"],
        ["migrate", "rollback", "--yes"],
    ],
    ids=" ".join,
)
def test_no_wait_exits_5_while_another_command_holds_the_project(
    project: Project, holder: Holder, command: list[str]
) -> None:
    _write_secrets(project)
    started = time.monotonic()
    done = project.run(*command, "--no-wait", "--json", timeout=60)
    assert done.returncode == 5, done.stderr
    assert time.monotonic() - started < 20
    assert f"pid {holder.pid}, atendeai up" in done.stderr
    assert '"code": "conflict"' in done.stdout


def test_db_restore_no_wait_exits_5(project: Project, holder: Holder, tmp_path: Path) -> None:
    _write_secrets(project)
    dump = tmp_path / "some.dump"
    dump.write_bytes(b"PGDMP")
    done = project.run("db", "restore", str(dump), "--yes", "--no-wait")
    assert done.returncode == 5, done.stderr
    assert f"pid {holder.pid}" in done.stderr


def test_a_command_waits_for_the_holder_then_runs(project: Project) -> None:
    held = Holder(project, 2)
    started = time.monotonic()
    # `down` of a project with nothing running only needs the lock: it removes nothing.
    done = project.run("down", "--runtime", "local")
    waited = time.monotonic() - started
    held.wait()
    assert done.returncode == 0, done.stderr
    assert (
        f"waiting for another atendeai command on project {project.name} (pid {held.pid}, "
        "atendeai up)…" in done.stderr
    )
    assert waited >= 1.0


def test_an_explicit_database_url_is_not_the_project_and_takes_no_lock(
    project: Project, holder: Holder, database_url: str
) -> None:
    """The stack's own migrate job runs `migrate up` with its URL while `up` holds the lock
    (local runtime): it must not wait for it."""
    done = project.run("migrate", "up", "--database-url", database_url, "--no-wait")
    assert done.returncode == 0, done.stderr


def _write_secrets(project: Project) -> None:
    """Secrets as `up` writes them, so commands get as far as the lock."""
    project_state(project.state_dir, project.name).ensure_secrets()

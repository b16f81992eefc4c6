"""The ready path on a real Docker engine: concurrent `up`s, a migrate job run only when the
schema is behind, a `status` that imports nothing heavy yet asks the engine, a project never
stuck on duplicate networks, and a data volume initialised with another password.

One project for the module, taken through its life in order (like test_stack_docker.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.stack_helpers import Project, new_project, project_resources, remove_project

pytestmark = pytest.mark.docker
ROOT = Path(__file__).parent.parent

HEAVY = (
    "docker", "requests", "alembic", "sqlalchemy", "uvicorn", "psycopg_pool", "starlette",
    "pydantic",  # Typer 0.29+ parameter adapters (pyproject pins below 0.29)
    "typer", "click", "rich",  # cli/main.py answers `status` before the command tree
)  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_project(tmp_path_factory.mktemp("fast"))
    yield project
    project.run("down", "--volumes", "--yes", "--no-backup")
    remove_project(project.name)


def _env(project: Project) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    return {**env, **project.env}


def _popen(project: Project, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "atendeai_ctl", *args],
        env=_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _results(report: dict[str, object]) -> dict[str, tuple[str, str]]:
    services = report["services"]
    assert isinstance(services, list)
    return {s["name"]: (s["action"], s["result"]) for s in services}


def _migrate_started_at(project: Project) -> str:
    import docker

    container = docker.from_env().containers.get(f"{project.name}-migrate-1")
    return str(container.attrs["State"]["StartedAt"])


def test_two_ups_started_together_both_succeed_on_one_network(stack: Project) -> None:
    assert project_resources(stack.name)["networks"] == []
    procs = [_popen(stack, "up", "--json") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["ok"] is True
    waited = [err for _, err in outputs if "waiting for another atendeai command" in err]
    assert len(waited) == 1, [err for _, err in outputs]
    assert project_resources(stack.name)["networks"] == [f"{stack.name}-network"]
    second = json.loads(next(out for out, err in outputs if err in waited))
    assert _results(second)["postgres"] == ("unchanged", "healthy")
    assert _results(second)["redis"] == ("unchanged", "healthy")


def test_unchanged_up_leaves_the_migrate_job_alone(stack: Project) -> None:
    before = _migrate_started_at(stack)
    report = stack.json("up")
    assert report["ok"] is True
    assert _results(report)["migrate"] == ("unchanged", "current")
    assert _migrate_started_at(stack) == before
    status = stack.json("status")
    migrate = next(s for s in status["services"] if s["name"] == "migrate")
    assert (migrate["state"], migrate["exit_code"]) == ("exited", 0)


def test_up_runs_the_migrate_job_when_the_schema_is_behind(stack: Project) -> None:
    rolled = stack.run("migrate", "rollback", "--steps", "1", "--yes", "--no-backup")
    assert rolled.returncode == 0, rolled.stderr
    before = _migrate_started_at(stack)
    report = stack.json("up")
    assert report["ok"] is True
    assert _results(report)["migrate"] == ("unchanged", "completed")
    assert _migrate_started_at(stack) != before
    status = stack.json("migrate", "status")
    assert status["pending"] == [] and status["current"] == status["head"]


def test_status_asks_the_engine_and_imports_nothing_heavy(stack: Project) -> None:
    import docker

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "atendeai_ctl", "status", "--json"],
        env=_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "atendeai_ctl.stack.docker_runtime" in imported  # the measure works
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []
    # Still the engine's word, not a cache: a container stopped behind our back shows at once.
    docker.from_env().containers.get(f"{stack.name}-redis-1").stop(timeout=1)
    after = stack.run("status", "--json")
    assert after.returncode == 3
    redis = next(s for s in json.loads(after.stdout)["services"] if s["name"] == "redis")
    assert redis["state"] == "exited"
    assert stack.run("up").returncode == 0


def test_status_right_after_a_restart_asks_the_services_not_exec(stack: Project) -> None:
    """Until Docker's first healthcheck runs (5 s after a start), the engine says `starting`;
    `status` settles that by asking PostgreSQL and Redis through their published ports (no
    `docker exec`), so it says `healthy` as soon as they answer, before the engine does."""
    import docker

    client = docker.from_env()
    names = {"postgres": f"{stack.name}-postgres-1", "redis": f"{stack.name}-redis-1"}
    since = time.time()
    for name in names.values():
        client.containers.get(name).restart(timeout=2)
    deadline = time.monotonic() + 60
    while True:
        done = stack.run("status", "--json")
        ours = {s["name"]: s["health"] for s in json.loads(done.stdout)["services"]}
        if all(ours[s] == "healthy" for s in names):
            break
        assert time.monotonic() < deadline, done.stdout
        time.sleep(0.2)
    assert done.returncode == 0, done.stderr

    def checks_since_restart(name: str) -> list[float]:
        log = client.api.inspect_container(name)["State"]["Health"]["Log"] or []
        starts = [datetime.fromisoformat(c["Start"][:26].rstrip("Z") + "+00:00") for c in log]
        return sorted(s.timestamp() for s in starts if s.timestamp() > since)

    for service, name in names.items():
        until_checked = time.monotonic() + 60
        while not checks_since_restart(name):
            assert time.monotonic() < until_checked, f"{service}: the engine never checked"
            time.sleep(0.5)
        engine_checked = checks_since_restart(name)[0]
        execs = [
            event
            for event in client.events(
                since=since, until=engine_checked - 0.05, decode=True,
                filters={"container": name, "event": "exec_create"},
            )
        ]  # fmt: skip
        assert execs == [], f"{service}: status exec'd before the engine's first check"


def test_status_options_outside_the_short_path_get_typer_parsing(stack: Project) -> None:
    unknown = stack.run("status", "--bogus")
    assert unknown.returncode == 2 and "No such option: --bogus" in unknown.stderr
    missing = stack.run("status", "--runtime")
    assert missing.returncode == 2 and "--runtime" in missing.stderr
    spelled = stack.run("status", f"--project-dir={ROOT}", "--runtime", "docker", "--json")
    assert spelled.returncode == 0, spelled.stderr
    assert json.loads(spelled.stdout)["project"] == stack.name


def test_duplicate_networks_never_leave_the_project_stuck(stack: Project) -> None:
    import docker

    assert stack.run("down").returncode == 0
    client = docker.from_env()
    labels = {"com.docker.compose.project": stack.name, "com.docker.compose.network": "default"}
    for _ in range(2):  # what two racing `up`s (or another tool) can leave on the engine
        client.api.create_network(f"{stack.name}-network", labels=labels, check_duplicate=False)
    done = stack.run("up", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {a for a, _ in _results(report).values()} == {"created"}
    # After `down` the data is kept: the schema is at head, the job runs without holding up auth.
    assert _results(report)["migrate"] == ("created", "completed")
    assert project_resources(stack.name)["networks"] == [f"{stack.name}-network"]


def test_a_volume_initialised_with_another_password_names_the_ways_out(
    stack: Project, tmp_path: Path
) -> None:
    other_state = tmp_path / "another-state-dir"
    moved = Project(stack.name, other_state, {**stack.env, "ATENDEAI_STATE_DIR": str(other_state)})
    done = moved.run("up")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: service migrate failed: PostgreSQL refuses the password in ")
    assert str(other_state) in last
    assert "initialised with another password" in last
    assert "ATENDEAI_STATE_DIR" in last and "`atendeai down --volumes`" in last
    assert "exit code" not in last
    back = stack.run("up")  # the old state dir is the first way out
    assert back.returncode == 0, back.stderr

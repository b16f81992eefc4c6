"""The stack without Docker: the real CLI with an unreachable engine, real local processes.

One stack is taken through its life (up, status, login, heal, down/up, stale pid file,
down --volumes); separate tests cover a taken port, two projects side by side and the system
binaries. Every process started here is stopped at the end, by its recorded pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from atendeai_ctl.stack import processes
from atendeai_ctl.stack.ports import port_is_free
from tests.secret_helpers import leaked, mask, project_secrets
from tests.servers import free_port
from tests.stack_helpers import Project, admin_url, new_project, secrets

NO_ENGINE = "unix:///nonexistent.sock"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = Path("/usr/bin/redis-server")


@contextmanager
def scratch() -> Iterator[Path]:
    """A state root outside pytest's tmp dirs: a concurrent pytest session resets
    /tmp/pytest-of-<user> to 0700, which would lock the unprivileged PostgreSQL user out."""
    path = Path(tempfile.mkdtemp(prefix="atendeai-local-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_project(tmp_path: Path, **extra: str) -> Project:
    return new_project(tmp_path, prefix="l", images=False, DOCKER_HOST=NO_ENGINE, **extra)


def local_dir(project: Project) -> Path:
    return project.state_dir / project.name / "local"


def force_cleanup(project: Project) -> None:
    """Whatever `down` left (if a test failed half-way) is killed by its recorded pid."""
    project.run("down", "--volumes", "--yes", "--no-backup")
    records = processes.Records(local_dir(project) / "run")
    for name in records.names():
        record = records.load(name)
        if record is not None:
            processes.stop(record, signal.SIGKILL, 1.0)


def running(pid: int) -> bool:
    found = processes.proc_stat(pid)
    return found is not None and found.state not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """`pid` and every live process below it (PostgreSQL's children start their own sessions)."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(text[text.rindex(")") + 2 :].split()[1])
    found, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.update(children)
        frontier.extend(children)
    return {p for p in found if running(p)}


def status(project: Project) -> tuple[int, dict[str, dict[str, Any]]]:
    done = project.run("status", "--json")
    assert done.stderr == "", done.stderr
    return done.returncode, {s["name"]: s for s in json.loads(done.stdout)["services"]}


def pids(project: Project) -> dict[str, int]:
    return {name: int(s["id"]) for name, s in status(project)[1].items() if s["id"]}


def up_ok(project: Project, **extra_env: str) -> dict[str, Any]:
    done = project.run("up", "--json", extra_env=extra_env or None)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["ok"] is True and report["runtime"] == "local"
    return report


@pytest.fixture(scope="module")
def stack() -> Iterator[Project]:
    with scratch() as base:
        project = local_project(base)
        yield project
        force_cleanup(project)


@pytest.mark.local
def test_up_without_an_engine_picks_local_and_says_so(stack: Project) -> None:
    started = time.monotonic()
    done = stack.run("up", "--json")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("runtime:")]
    assert said == [f"runtime: local (no Docker engine answers at {NO_ENGINE})"]
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["runtime"] == "local"
    results = {s["name"]: s["result"] for s in report["services"]}
    assert results == {
        "postgres": "healthy", "redis": "healthy", "migrate": "completed", "auth": "healthy",
    }  # fmt: skip
    assert {s["action"] for s in report["services"]} == {"created"}
    assert time.monotonic() - started < 60


@pytest.mark.local
def test_status_json_names_the_runtime_and_the_pids(stack: Project) -> None:
    code, services = status(stack)
    assert code == 0
    done = stack.run("status", "--json")
    assert json.loads(done.stdout)["runtime"] == "local"
    commands = {
        name: Path(f"/proc/{s['id']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        for name, s in services.items()
        if s["state"] == "running"
    }
    assert commands["postgres"].split()[0].endswith("/postgres")
    assert "redis-server" in commands["redis"]
    assert "atendeai_ctl auth serve" in commands["auth"]
    assert services["migrate"]["state"] == "exited" and services["migrate"]["exit_code"] == 0
    for name, key, target in (("postgres", "POSTGRES", 5432), ("redis", "REDIS", 6379)):
        port = int(stack.env[f"ATENDEAI_{key}_PORT"])
        assert services[name]["ports"] == [{"host": "127.0.0.1", "port": port, "target": target}]
        assert services[name]["health"] == "healthy"
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged user
        assert Path(f"/proc/{services['postgres']['id']}").stat().st_uid != 0
    # With an engine answering, auto still finds the project where it runs.
    answering = {k: v for k, v in stack.env.items() if k != "DOCKER_HOST"}
    done = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "status", "--json"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")},
             **answering},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert json.loads(done.stdout)["runtime"] == "local"


@pytest.mark.local
def test_secrets_stay_off_argv_and_private(stack: Project) -> None:
    values = project_secrets(stack.state_dir, stack.name)
    service_pids = {name: pid for name, pid in pids(stack).items() if name != "migrate"}
    assert set(service_pids) == {"postgres", "redis", "auth"}
    ours = set().union(*(descendants(pid) for pid in service_pids.values()))
    scanned: set[int] = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        scanned.add(int(entry))
        assert leaked(cmdline, values) == [], mask(cmdline, values)
    assert ours <= scanned  # the stack's own processes were among those read
    base = local_dir(stack)
    assert (base / "conf" / "redis.conf").stat().st_mode & 0o777 == 0o600
    assert not list(base.rglob(".pwfile"))
    records = sorted((base / "run").iterdir())
    assert {path.stem for path in records} >= {"postgres", "redis", "migrate", "auth"}
    for record in records:
        assert record.stat().st_mode & 0o777 == 0o600
        assert leaked(record.read_text(), values) == []


@pytest.mark.local
def test_login_through_the_local_auth_service(stack: Project) -> None:
    import httpx

    from atendeai_ctl.auth import clinics, users
    from atendeai_ctl.auth.settings import AuthSettings

    with psycopg.connect(admin_url(stack)) as conn:
        clinics.create_clinic(conn, slug="local", name="Local Clinic", actor="cli:test")
        users.create_user(
            conn,
            AuthSettings(bcrypt_cost=10),
            clinic="local",
            email="ana@local.test",
            password="correct horse battery",
            actor="cli:test",
        )
    base = f"http://127.0.0.1:{stack.env['ATENDEAI_AUTH_PORT']}"
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/health/live").status_code == 200
        response = http.post(
            "/auth/login",
            json={
                "clinic": "local",
                "email": "ana@local.test",
                "password": "correct horse battery",
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "Bearer"
        wrong = http.post(
            "/auth/login",
            json={"clinic": "local", "email": "ana@local.test", "password": "wrong horse battery"},
        )
        assert wrong.status_code == 401


@pytest.mark.local
def test_second_up_changes_nothing(stack: Project) -> None:
    before = pids(stack)
    report = up_ok(stack)
    actions = {s["name"]: s["action"] for s in report["services"]}
    assert set(actions.values()) == {"unchanged"}
    after = pids(stack)
    assert {k: v for k, v in after.items() if k != "migrate"} == {
        k: v for k, v in before.items() if k != "migrate"
    }


@pytest.mark.local
def test_logs_tail_and_unknown_service(stack: Project) -> None:
    done = stack.run("logs", "migrate", "--tail", "1")
    assert done.returncode == 0
    assert done.stdout.startswith("at ") or "nothing to do" in done.stdout
    assert len(done.stdout.splitlines()) == 1
    missing = stack.run("logs", "nosuch")
    assert missing.returncode == 4 and "no service 'nosuch'" in missing.stderr


@pytest.mark.local
def test_killed_postgres_is_reported_and_healed(stack: Project) -> None:
    with psycopg.connect(admin_url(stack), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.keepme (v text)")
        conn.execute("INSERT INTO public.keepme VALUES ('still here')")
    before = pids(stack)
    os.kill(before["postgres"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(before["postgres"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    code, services = status(stack)
    assert code == 3
    assert services["postgres"]["state"] == "exited"
    assert services["redis"]["state"] == "running"
    up_ok(stack)
    after = pids(stack)
    assert after["postgres"] != before["postgres"] and running(after["postgres"])
    assert after["redis"] == before["redis"]
    # Healed: every service healthy on the first `status` after `up`. (It once said auth was
    # not: the worker that had met the outage kept pools stuck on psycopg_pool's reconnect
    # backoff, tests/test_auth_db_restart.py.) What was unhealthy is in the message.
    final = status(stack)
    assert final[0] == 0, {k: (v["state"], v["health"]) for k, v in final[1].items()}
    with psycopg.connect(admin_url(stack)) as conn:
        assert conn.execute("SELECT v FROM public.keepme").fetchall() == [("still here",)]


@pytest.mark.local
def test_down_leaves_no_process_and_data_survives(stack: Project) -> None:
    service_pids = pids(stack)
    # each tree checked by itself: PostgreSQL's own children (checkpointer, walwriter ...) and
    # the auth service's workers, so one service's helpers cannot stand in for another's
    postgres_tree = descendants(service_pids["postgres"])
    assert len(postgres_tree - {service_pids["postgres"]}) >= 3, postgres_tree
    auth_tree = descendants(service_pids["auth"])
    assert len(auth_tree - {service_pids["auth"]}) >= 1, auth_tree
    tree = set().union(*(descendants(pid) for pid in service_pids.values()))
    assert postgres_tree | auth_tree <= tree
    down = stack.run("down")
    assert down.returncode == 0, down.stderr
    assert "data kept" in down.stderr
    assert [pid for pid in tree if running(pid)] == []
    for key in ("POSTGRES", "REDIS", "AUTH"):
        assert port_is_free("127.0.0.1", int(stack.env[f"ATENDEAI_{key}_PORT"]))
    code, services = status(stack)
    assert code == 3 and {s["state"] for s in services.values()} == {"missing"}
    report = up_ok(stack)
    assert {s["action"] for s in report["services"]} == {"created"}
    with psycopg.connect(admin_url(stack)) as conn:
        assert conn.execute("SELECT v FROM public.keepme").fetchall() == [("still here",)]


@pytest.mark.local
def test_stale_pid_file_naming_another_process_is_not_ours(stack: Project) -> None:
    assert stack.run("down").returncode == 0
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        records = processes.Records(local_dir(stack) / "run")
        found = processes.proc_stat(stranger.pid)
        assert found is not None
        records.save(
            "redis",
            processes.Record(
                pid=stranger.pid,
                starttime=found.starttime - 1,  # what the pid was when the file was written
                boot_id=processes.boot_id(),
                config_hash="stale",
                started_at="2026-01-01T00:00:00.000000Z",
            ),
        )
        code, services = status(stack)
        assert code == 3
        assert services["redis"]["state"] == "exited"
        assert services["redis"]["id"] == str(stranger.pid)
        report = up_ok(stack)
        assert {s["name"]: s["action"] for s in report["services"]}["redis"] == "recreated"
        assert pids(stack)["redis"] != stranger.pid
        assert stack.run("down").returncode == 0
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.local
def test_changed_service_is_recreated_with_what_connects_to_it(stack: Project) -> None:
    up_ok(stack)
    before = pids(stack)
    stack.env["ATENDEAI_REDIS_PORT"] = str(free_port())
    report = up_ok(stack)
    actions = {s["name"]: s["action"] for s in report["services"]}
    # auth's Redis URL names the new port, so it is recreated too (in Docker it would not be:
    # there it reaches redis:6379 on the project network).
    assert actions == {
        "postgres": "unchanged", "redis": "recreated", "migrate": "unchanged", "auth": "recreated",
    }  # fmt: skip
    after = pids(stack)
    assert after["postgres"] == before["postgres"] and after["redis"] != before["redis"]
    assert not running(before["redis"]) and not running(before["auth"])
    with socket.create_connection(("127.0.0.1", int(stack.env["ATENDEAI_REDIS_PORT"])), 2):
        pass
    assert status(stack)[0] == 0


@pytest.mark.local
def test_down_volumes_needs_yes_then_deletes_the_data(stack: Project) -> None:
    up_ok(stack)
    refused = stack.run("down", "--volumes")
    assert refused.returncode == 7 and "--yes" in refused.stderr
    assert status(stack)[0] == 0
    service_pids = pids(stack)
    done = stack.run("down", "--volumes", "--yes")
    assert done.returncode == 0, done.stderr
    assert not any(running(pid) for pid in service_pids.values())
    assert list((local_dir(stack) / "volumes").iterdir()) == []
    report = up_ok(stack)
    assert {s["action"] for s in report["services"]} == {"created"}
    with psycopg.connect(admin_url(stack)) as conn:
        assert conn.execute("SELECT to_regclass('public.keepme')").fetchone() == (None,)


@pytest.fixture
def project() -> Iterator[Project]:
    with scratch() as base:
        p = local_project(base)
        yield p
        force_cleanup(p)


@pytest.mark.local
def test_port_in_use_is_named_before_anything_starts(project: Project) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(project.env["ATENDEAI_POSTGRES_PORT"])))
        holder.listen()
        done = project.run("up")
    assert done.returncode == 5
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1
    assert f"127.0.0.1:{project.env['ATENDEAI_POSTGRES_PORT']}" in lines[0]
    assert "python" in lines[0]  # who holds it: this test's own process
    assert "ATENDEAI_POSTGRES_PORT" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (local_dir(project) / "run").exists() or not list(
        (local_dir(project) / "run").iterdir()
    )
    assert port_is_free("127.0.0.1", int(project.env["ATENDEAI_REDIS_PORT"]))


@pytest.mark.local
def test_a_second_replicas_port_in_use_names_the_replica_and_the_setting(
    project: Project,
) -> None:
    """Replica 2 publishes ATENDEAI_AUTH_PORT + 1: the error says which copy and which
    setting moves it (it said `auth` and "a free port", for a port the setting does not name)."""
    second = int(project.env["ATENDEAI_AUTH_PORT"]) + 1
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", second))
        holder.listen()
        done = project.run("up", "--scale", "auth=2")
    assert done.returncode == 5, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{second} for service auth-2 is in use by python" in lines[0]
    assert "ATENDEAI_AUTH_PORT + 1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.local
def test_two_projects_side_by_side() -> None:
    with scratch() as base:
        one = local_project(base / "one")
        two = local_project(base / "two")
        try:
            up_ok(one)
            up_ok(two)
            assert set(pids(one).values()).isdisjoint(pids(two).values())
            with psycopg.connect(admin_url(one), autocommit=True) as conn:
                conn.execute("CREATE TABLE public.only_in_one (v int)")
            with psycopg.connect(admin_url(two)) as conn:
                assert conn.execute("SELECT to_regclass('public.only_in_one')").fetchone() == (
                    None,
                )
            assert (
                secrets(one)["ATENDEAI_POSTGRES_PASSWORD"]
                != secrets(two)["ATENDEAI_POSTGRES_PASSWORD"]
            )
            assert one.run("down").returncode == 0
            assert status(two)[0] == 0
        finally:
            force_cleanup(one)
            force_cleanup(two)


@pytest.mark.local
@pytest.mark.skipif(
    not (PG_BIN / "postgres").exists() or not REDIS_SERVER.exists(),
    reason="needs the system's postgresql and redis-server packages",
)
def test_system_binaries(project: Project) -> None:
    up_ok(
        project,
        ATENDEAI_POSTGRES_BIN_DIR=str(PG_BIN),
        ATENDEAI_REDIS_SERVER=str(REDIS_SERVER),
        ATENDEAI_RUNTIME="local",
    )
    service_pids = pids(project)
    assert os.readlink(f"/proc/{service_pids['postgres']}/exe") == str(PG_BIN / "postgres")
    assert os.readlink(f"/proc/{service_pids['redis']}/exe") == os.path.realpath(REDIS_SERVER)
    with psycopg.connect(admin_url(project)) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")  # type: ignore[index]


def test_missing_binaries_fail_before_anything_starts(project: Project) -> None:
    done = project.run("up", extra_env={"ATENDEAI_POSTGRES_BIN_DIR": "/nonexistent/bin"})
    assert done.returncode == 4
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith(
        "Error: /nonexistent/bin/initdb is not an executable (from ATENDEAI_POSTGRES_BIN_DIR)"
    )
    assert not list((local_dir(project) / "run").glob("*.json"))


def test_unknown_runtime_is_refused(project: Project) -> None:
    done = project.run("status", "--runtime", "podman")
    assert done.returncode == 6
    assert "unknown runtime 'podman'" in done.stderr and "auto, docker, local" in done.stderr


def test_a_record_is_ours_only_with_the_same_start_time() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        found = processes.proc_stat(proc.pid)
        assert found is not None
        record = processes.Record(proc.pid, found.starttime, processes.boot_id(), "h", "t")
        assert record.alive() and not record.pid_reused()
        reused = processes.Record(proc.pid, found.starttime + 1, processes.boot_id(), "h", "t")
        assert not reused.alive() and reused.pid_reused()
        processes.stop(reused, signal.SIGKILL, 0.5)
        assert proc.poll() is None  # a stale record never signals the process it names
        processes.stop(record, signal.SIGTERM, 5.0)
        assert proc.wait(5) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()

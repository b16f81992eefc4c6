"""The stack on a real Docker engine, driven through the real CLI.

One stack is brought up for the module and taken through its life: up, idempotent up, status,
heal, recreate on change, data across down/up, down --volumes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.secret_helpers import PASSWORD_NAMES, leaked, mask, project_secrets
from tests.stack_helpers import Project, admin_url, new_project, project_resources, remove_project

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_project(tmp_path_factory.mktemp("stack"))
    yield project
    project.run("down", "--volumes", "--yes", "--no-backup")
    remove_project(project.name)


def _ids(project: Project) -> dict[str, str]:
    doc = project.json("status")
    return {s["name"]: s["id"] for s in doc["services"]}


def test_up_from_nothing_brings_every_service_to_healthy(stack: Project) -> None:
    assert project_resources(stack.name) == {"containers": [], "networks": [], "volumes": []}
    done = stack.run("up", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    results = {s["name"]: s["result"] for s in report["services"]}
    assert results == {
        "postgres": "healthy", "redis": "healthy", "migrate": "completed", "auth": "healthy",
    }  # fmt: skip
    assert all(s["action"] == "created" for s in report["services"])
    status = stack.run("status", "--json")
    assert status.returncode == 0, status.stdout
    doc = json.loads(status.stdout)
    assert doc["schema"] == 1 and doc["project"] == stack.name and doc["runtime"] == "docker"
    by_name = {s["name"]: s for s in doc["services"]}
    assert by_name["postgres"]["ports"] == [
        {"host": "127.0.0.1", "port": int(stack.env["ATENDEAI_POSTGRES_PORT"]), "target": 5432}
    ]
    assert by_name["auth"]["health"] == "healthy"
    assert by_name["migrate"]["state"] == "exited" and by_name["migrate"]["exit_code"] == 0
    res = project_resources(stack.name)
    assert res["networks"] == [f"{stack.name}-network"]
    assert sorted(res["volumes"]) == [f"{stack.name}_pgdata", f"{stack.name}_redisdata"]
    # Fresh, auth started beside the migrate job (x-atendeai.start_early), not after it,
    # and was judged ready only after it: the database lets it in the moment `up` returns.
    started, finished = _started_at(stack, "auth"), _finished_at(stack, "migrate")
    assert started < finished, (started, finished)
    assert httpx.get(f"{_auth_url(stack)}/health/ready", timeout=5).status_code == 200
    # And the migrate job started beside PostgreSQL (start_early: all; it waits for the
    # server itself, `migrate up --wait-db`), not once PostgreSQL was healthy.
    events = [line.split(" (")[0] for line in done.stderr.splitlines()]
    assert events.index("migrate: starting") < events.index("postgres: healthy"), events
    # Auth too (start_early: all): it started before Redis was healthy, not after.
    assert events.index("auth: starting") < events.index("redis: healthy"), events


def _state(project: Project, service: str) -> dict[str, str]:
    import docker

    [container] = docker.from_env().containers.list(
        all=True,
        filters={"label": [f"com.docker.compose.project={project.name}",
                           f"com.docker.compose.service={service}"]},
    )  # fmt: skip
    state: dict[str, str] = container.attrs["State"]
    return state


def _started_at(project: Project, service: str) -> str:
    return _state(project, service)["StartedAt"]  # RFC 3339, UTC: compares as text


def _finished_at(project: Project, service: str) -> str:
    return _state(project, service)["FinishedAt"]


def _auth_url(project: Project) -> str:
    return f"http://127.0.0.1:{project.env['ATENDEAI_AUTH_PORT']}"


def test_schema_is_migrated_and_the_cli_targets_the_stack(stack: Project) -> None:
    status = stack.run("migrate", "status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["pending"] == [] and doc["current"] == doc["head"]
    backup = stack.state_dir / "stack.dump"
    done = stack.run("db", "backup", "--output", str(backup))
    assert done.returncode == 0, done.stderr
    assert backup.read_bytes()[:5] == b"PGDMP"


def test_auth_service_answers_on_the_published_port(stack: Project) -> None:
    import urllib.request

    base = f"http://127.0.0.1:{stack.env['ATENDEAI_AUTH_PORT']}"
    with urllib.request.urlopen(f"{base}/health/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{base}/.well-known/jwks.json", timeout=5) as resp:
        keys = json.load(resp)["keys"]
    kid = next((stack.state_dir / stack.name / "jwt").glob("*.pem")).stem
    assert [k["kid"] for k in keys] == [kid]


def _argv_of_every_process(project: Project) -> dict[str, list[str]]:
    """Every command line the project's containers ran or run: each container's configured
    entrypoint/command and healthcheck (exited ones too, e.g. migrate), the exec instances
    the engine still knows (active probes), and the live process list of running ones."""
    import docker

    client = docker.from_env()
    found: dict[str, list[str]] = {}
    for container in client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project.name}"}
    ):
        attrs = container.attrs
        config = attrs["Config"]
        lines = [
            " ".join([attrs["Path"], *attrs["Args"]]),
            " ".join(config.get("Entrypoint") or []),
            " ".join(config.get("Cmd") or []),
            " ".join((config.get("Healthcheck") or {}).get("Test") or []),
        ]
        for exec_id in attrs.get("ExecIDs") or []:
            with contextlib.suppress(docker.errors.NotFound):
                process = client.api.exec_inspect(exec_id)["ProcessConfig"]
                lines.append(" ".join([process["entrypoint"], *process["arguments"]]))
        if container.status == "running":
            top = container.top(ps_args="-eo pid,args")
            lines += [" ".join(proc) for proc in top["Processes"]]
        found[config["Labels"]["com.docker.compose.service"]] = lines
    return found


def test_secrets_are_private_and_never_printed(stack: Project) -> None:
    secrets_file = stack.state_dir / stack.name / "secrets.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    secrets = project_secrets(stack.state_dir, stack.name)
    shown = stack.run("config", "show")
    assert leaked(shown.stdout + shown.stderr, secrets) == []
    env_lines = stack.run("config", "env").stdout
    for name in PASSWORD_NAMES:
        assert secrets[name] in env_lines  # `config env` is the one command that prints them
    argv = _argv_of_every_process(stack)
    assert set(argv) == {"postgres", "redis", "migrate", "auth"}  # the exited job included
    for service, lines in argv.items():
        for line in lines:
            assert leaked(line, secrets) == [], f"{service}: {mask(line, secrets)}"


def test_second_up_recreates_nothing(stack: Project) -> None:
    before = _ids(stack)
    report = stack.json("up")
    assert report["ok"] is True
    assert {s["action"] for s in report["services"]} == {"unchanged"}
    assert _ids(stack) == before


def test_compose_sees_the_same_containers(stack: Project) -> None:
    env_file = stack.state_dir / "compose.env"
    env_file.write_text(stack.run("config", "env").stdout)
    done = subprocess.run(
        ["docker-compose", "-p", stack.name, "--env-file", str(env_file),
         "-f", "compose/docker-compose.yml", "ps", "--services", "--filter", "status=running"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["auth", "postgres", "redis"]


def test_logs_tail(stack: Project) -> None:
    done = stack.run("logs", "postgres", "--tail", "5")
    assert done.returncode == 0
    assert 0 < len(done.stdout.splitlines()) <= 5
    missing = stack.run("logs", "nosuch")
    assert missing.returncode == 4 and "no service 'nosuch'" in missing.stderr


def test_stopped_container_is_reported_and_healed(stack: Project) -> None:
    import docker

    before = _ids(stack)
    docker.from_env().containers.get(f"{stack.name}-redis-1").stop()
    assert stack.run("status").returncode == 3
    report = stack.json("up")
    assert report["ok"] is True
    assert _ids(stack) == before
    assert stack.run("status").returncode == 0


def test_removed_container_is_brought_back(stack: Project) -> None:
    import docker

    before = _ids(stack)
    docker.from_env().containers.get(f"{stack.name}-auth-1").remove(force=True)
    assert stack.run("status").returncode == 3
    report = stack.json("up")
    assert report["ok"] is True
    actions = {s["name"]: s["action"] for s in report["services"]}
    assert actions == {
        "postgres": "unchanged", "redis": "unchanged", "migrate": "unchanged", "auth": "created",
    }  # fmt: skip
    after = _ids(stack)
    assert after["auth"] != before["auth"] and after["postgres"] == before["postgres"]


def test_data_survives_down_and_up(stack: Project) -> None:
    with psycopg.connect(admin_url(stack), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.keepme (v text)")
        conn.execute("INSERT INTO public.keepme VALUES ('still here')")
    down = stack.run("down")
    assert down.returncode == 0, down.stderr
    left = project_resources(stack.name)
    assert left["containers"] == [] and left["networks"] == [] and len(left["volumes"]) == 2
    assert stack.run("status").returncode == 3
    assert stack.run("up").returncode == 0
    with psycopg.connect(admin_url(stack)) as conn:
        assert conn.execute("SELECT v FROM public.keepme").fetchall() == [("still here",)]


def test_changed_service_is_recreated_alone(stack: Project) -> None:
    before = _ids(stack)
    from tests.servers import free_port

    stack.env["ATENDEAI_REDIS_PORT"] = str(free_port())
    report = stack.json("up")
    assert report["ok"] is True
    actions = {s["name"]: s["action"] for s in report["services"]}
    # auth reaches redis:6379 on the project network, so the published port is not its concern
    assert actions["redis"] == "recreated"
    assert actions["postgres"] == "unchanged" and actions["auth"] == "unchanged"
    assert actions["migrate"] != "recreated"
    after = _ids(stack)
    assert after["redis"] != before["redis"]
    assert {k: v for k, v in after.items() if k != "redis"} == {
        k: v for k, v in before.items() if k != "redis"
    }
    assert set(after) == {"postgres", "redis", "migrate", "auth"}
    with socket.create_connection(("127.0.0.1", int(stack.env["ATENDEAI_REDIS_PORT"])), 2):
        pass


def test_a_replaced_auth_still_waits_for_the_migrate_job(stack: Project) -> None:
    """start_early is for a fresh service only: when auth and migrate are both replaced (a
    new image name here), the old auth keeps serving until the job has run, and the new one
    starts after it, so new code never serves beside a schema it was not migrated for."""
    import docker

    image = docker.from_env().images.get(
        stack.env.get("ATENDEAI_AUTH_IMAGE", "atendeai-auth:latest")
    )
    retagged = f"atendeai-test/auth-retag:{stack.name}"
    image.tag(retagged)
    previous = stack.env.get("ATENDEAI_AUTH_IMAGE")
    try:
        stack.env["ATENDEAI_AUTH_IMAGE"] = retagged
        report = stack.json("up")
        assert report["ok"] is True, report
        actions = {s["name"]: s["action"] for s in report["services"]}
        assert actions["auth"] == "recreated" and actions["migrate"] == "recreated", actions
        started, finished = _started_at(stack, "auth"), _finished_at(stack, "migrate")
        assert started > finished, (started, finished)
        assert httpx.get(f"{_auth_url(stack)}/health/ready", timeout=5).status_code == 200
    finally:
        if previous is None:
            stack.env.pop("ATENDEAI_AUTH_IMAGE", None)
        else:
            stack.env["ATENDEAI_AUTH_IMAGE"] = previous
        assert stack.json("up")["ok"] is True
        docker.from_env().images.remove(retagged)


def test_down_volumes_needs_yes_without_a_terminal(stack: Project) -> None:
    refused = stack.run("down", "--volumes")
    assert refused.returncode == 7
    assert "--yes" in refused.stderr
    assert len(project_resources(stack.name)["containers"]) == 4


def test_down_volumes_leaves_nothing(stack: Project) -> None:
    done = stack.run("down", "--volumes", "--yes")
    assert done.returncode == 0, done.stderr
    assert project_resources(stack.name) == {"containers": [], "networks": [], "volumes": []}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = new_project(tmp_path)
    yield p
    remove_project(p.name)


def test_port_in_use_is_named_before_anything_starts(project: Project) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(project.env["ATENDEAI_REDIS_PORT"])))
        holder.listen()
        started = time.monotonic()
        done = project.run("up")
    assert done.returncode == 5
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1
    assert f"127.0.0.1:{project.env['ATENDEAI_REDIS_PORT']}" in lines[0]
    assert "ATENDEAI_REDIS_PORT" in lines[0]
    assert "python" in lines[0]  # who holds it: this test's own process
    assert "Traceback" not in done.stderr
    assert project_resources(project.name)["containers"] == []
    assert time.monotonic() - started < 60


def test_missing_image_is_reported_before_anything_starts(project: Project) -> None:
    done = project.run("up", extra_env={"ATENDEAI_REDIS_IMAGE": "127.0.0.1:9/nope/redis:0"})
    assert done.returncode == 4, done.stderr
    assert "127.0.0.1:9/nope/redis:0" in done.stderr
    assert "offline-images" in done.stderr
    assert project_resources(project.name)["containers"] == []


def test_broken_compose_file_is_one_line(project: Project, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "proj"
    root = Path(__file__).parent.parent
    for sub in ("compose", "configs", "migrations"):
        shutil.copytree(root / sub, copy / sub)
    compose = copy / "compose" / "docker-compose.yml"
    postgres = "    stop_signal: SIGINT\n    restart: unless-stopped"  # the postgres service's
    text = compose.read_text()
    assert text.count(postgres) == 1
    compose.write_text(text.replace(postgres, "    stop_signal: SIGINT\n    restartt: no"))
    done = project.run("up", "--project-dir", str(copy))
    assert done.returncode == 6
    assert done.stderr.count("\n") == 1
    assert "services.postgres.restartt: unknown key" in done.stderr
    assert project_resources(project.name)["containers"] == []


def test_engine_unreachable(project: Project) -> None:
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "ATENDEAI_RUNTIME": "docker"}
    for command in (["status"], ["up"], ["down"]):
        done = project.run(*command, extra_env=env)
        assert done.returncode == 1, command
        assert done.stderr.startswith(
            "Error: cannot reach the Docker engine at unix:///nonexistent"
        )
        assert "Traceback" not in done.stderr
    as_json = project.run("status", "--json", extra_env=env)
    assert json.loads(as_json.stdout)["error"]["code"] == "unavailable"


def test_docker_compose_converges_a_project_atendeai_started(
    project: Project, tmp_path: Path
) -> None:
    """docker-compose 1.x reads com.docker.compose.version on every container of the project
    and crashed ('ComposeVersion' object has no attribute 'version') without it."""
    assert project.run("up").returncode == 0
    env_file = tmp_path / "compose.env"
    env_file.write_text(project.run("config", "env").stdout)
    done = subprocess.run(
        ["docker-compose", "-p", project.name, "--env-file", str(env_file),
         "-f", "compose/docker-compose.yml", "up", "-d", "--no-build"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    status = project.json("status")
    running = {s["name"] for s in status["services"] if s["state"] == "running"}
    assert running == {"postgres", "redis", "auth"}

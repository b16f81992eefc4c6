"""Auth replicas behind the gateway on the real engine: scale, a killed replica, rollouts.

wrk (bench/wrk/auth.lua, MODE=verify) drives `GET /auth/verify` through the gateway while a
replica dies or the replicas are replaced; its done() line is parsed and every failed
request (non-2xx, connect/read/write errors, timeouts) fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml

from atendeai_ctl.stack.docker_runtime import DockerRuntime
from atendeai_ctl.stack.rollout import Pool
from atendeai_ctl.stack.spec import StackSpec
from tests.servers import free_port
from tests.stack_helpers import Project, new_project, remove_project

pytestmark = pytest.mark.docker

ROOT = Path(__file__).parent.parent
WRK = shutil.which("wrk")
PASSWORD = "correct horse battery staple 42"
SPAN = 5
"""Consecutive free ports the auth replicas may publish (base + k - 1)."""


def project_copy(dest: Path) -> Path:
    """The project with the auth service's per-address request limit raised: wrk is one
    client address, and the limit (6000 a minute) is not what these tests look at."""
    for sub in ("compose", "migrations", "configs"):
        shutil.copytree(ROOT / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "alembic.ini", dest / "alembic.ini")
    compose = dest / "compose" / "docker-compose.yml"
    spec = yaml.safe_load(compose.read_text())
    spec["services"]["auth"]["environment"]["ATENDEAI_AUTH_REQUESTS_PER_IP"] = "1000000000"
    compose.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    tmp = tmp_path_factory.mktemp("replicas")
    project = new_project(
        tmp,
        ATENDEAI_PROJECT_DIR=str(project_copy(tmp / "project")),
        ATENDEAI_GATEWAY_PORT=str(free_port()),
        ATENDEAI_AUTH_PORT=str(free_port(SPAN)),
        ATENDEAI_GATEWAY_RATE_LIMIT="100000000",  # wrk is one client: the outer limit is not
        # what these tests look at
        ATENDEAI_PROFILES="edge",
    )
    try:
        done = project.run("up")
        assert done.returncode == 0, done.stderr
        _cli(project, "clinic", "create", "Alpha", "--slug", "alpha")
        _cli(project, "user", "create", "ana@alpha.test", "--clinic", "alpha",
             "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        yield project
    finally:
        project.run("down", "--volumes", "--yes", "--no-backup")
        remove_project(project.name)


def _cli(project: Project, *args: str, stdin: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(project.env)
    done = subprocess.run([sys.executable, "-m", "atendeai_ctl", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _gateway_url(project: Project) -> str:
    return f"http://127.0.0.1:{project.env['ATENDEAI_GATEWAY_PORT']}"


def _token(project: Project) -> str:
    body = {"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD}
    done = httpx.post(_gateway_url(project) + "/auth/login", json=body, timeout=30)
    assert done.status_code == 200, done.text
    return str(done.json()["access_token"])


def _scale(project: Project, count: int) -> None:
    done = project.run("up", "--scale", f"auth={count}")
    assert done.returncode == 0, done.stderr
    _wait_pool(project, count)


def _pool(project: Project) -> tuple[Pool, StackSpec]:
    """The gateway's pool, read the way `rollout` reads it (its runtime API)."""
    from atendeai_ctl.config import load_config
    from atendeai_ctl.stack.project import load_stack

    saved = dict(os.environ)
    try:
        os.environ.update(project.env)
        config = load_config().with_secrets(generate=False)
        spec = load_stack(config)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    runtime = DockerRuntime(project.name)
    return Pool(spec, runtime, spec.services["auth"]), spec


def _wait_pool(project: Project, count: int, timeout: float = 60) -> None:
    """Until exactly `count` auth servers take requests through the gateway."""
    pool, _ = _pool(project)
    deadline = time.monotonic() + timeout
    serving: list[str] = []
    while time.monotonic() < deadline:
        members = pool.members()
        assert members is not None, "the gateway's runtime API does not answer"
        serving = [m.address for m in members if m.serving]
        if len(serving) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{len(serving)} servers in the gateway's pool, wanted {count}")


def _auth_rows(project: Project) -> list[dict[str, Any]]:
    status = project.json("status")
    assert "services" in status, status
    return [s for s in status["services"] if s["service"] == "auth"]


def _containers(project: Project) -> dict[str, Any]:
    label = {"label": [f"com.docker.compose.project={project.name}",
                       "com.docker.compose.service=auth"]}  # fmt: skip
    return {c.name: c for c in docker.from_env().containers.list(all=True, filters=label)}


class Wrk:
    """wrk driving GET /auth/verify through the gateway, in the background."""

    def __init__(self, project: Project, seconds: int, connections: int = 8) -> None:
        assert WRK is not None
        env = {**os.environ, "MODE": "verify", "TOKEN": _token(project)}
        self.proc = subprocess.Popen(
            [WRK, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
             "-s", str(ROOT / "bench" / "wrk" / "auth.lua"), _gateway_url(project)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Ends the run early; wrk still prints its summary and runs done()."""
        self.proc.send_signal(signal.SIGINT)

    def result(self, timeout: float = 180) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, f"wrk printed no RESULT line:\n{out}\n{err}"
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
        return result


def assert_no_failed_request(result: dict[str, Any], minimum: int = 200) -> None:
    failures = {
        key: result[key]
        for key in ("non2xx", "connect_errors", "read_errors", "write_errors", "timeouts")
        if result[key]
    }
    assert not failures, f"failed requests through the gateway: {failures} ({result})"
    assert result["ok"] >= minimum, result
    assert result["ok"] == result["responses"], result


def test_scale_1_to_3_to_2_status_shows_each_replica_highest_removed(edge: Project) -> None:
    base = int(edge.env["ATENDEAI_AUTH_PORT"])
    [single] = _auth_rows(edge)
    assert (single["name"], single["replica"]) == ("auth", 1)

    _scale(edge, 3)
    rows = _auth_rows(edge)
    assert [r["name"] for r in rows] == ["auth", "auth-2", "auth-3"]
    assert [r["replica"] for r in rows] == [1, 2, 3]
    assert all(r["state"] == "running" and r["health"] == "healthy" for r in rows), rows
    assert [r["ports"][0]["port"] for r in rows] == [base, base + 1, base + 2]
    containers = _containers(edge)
    assert sorted(containers) == [f"{edge.name}-auth-{k}" for k in (1, 2, 3)]
    numbers = {c.labels["com.docker.compose.container-number"] for c in containers.values()}
    assert numbers == {"1", "2", "3"}
    for k in (1, 2, 3):  # each replica answers on its own published port
        assert httpx.get(f"http://127.0.0.1:{base + k - 1}/health/ready").status_code == 200
    human = edge.run("status")
    assert "auth-3" in human.stdout and f"127.0.0.1:{base + 2}->3001" in human.stdout

    _scale(edge, 2)
    rows = _auth_rows(edge)
    assert [r["name"] for r in rows] == ["auth", "auth-2"]
    assert sorted(_containers(edge)) == [f"{edge.name}-auth-1", f"{edge.name}-auth-2"]


def test_bad_scale_is_one_line_before_anything_changes(edge: Project) -> None:
    for args, words in (
        (("--scale", "auth"), "SERVICE=N"),
        (("--scale", "auth=0"), "replica count"),
        (("--scale", "nope=2"), "no such service"),
        (("--scale", "postgres=2"), "named volume"),
        (("--scale", "migrate=2"), "one-shot"),
    ):
        done = edge.run("up", *args)
        assert done.returncode != 0
        assert words in done.stderr, done.stderr
    done = edge.run("up", extra_env={"ATENDEAI_AUTH_REPLICAS": "many"})
    assert done.returncode != 0 and "ATENDEAI_AUTH_REPLICAS" in done.stderr


@pytest.mark.skipif(WRK is None, reason="wrk is not installed")
def test_a_killed_replica_fails_no_request_through_the_gateway(edge: Project) -> None:
    _scale(edge, 2)
    wrk = Wrk(edge, seconds=15)
    time.sleep(4)
    docker.from_env().containers.get(f"{edge.name}-auth-2").kill()
    result = wrk.result()
    print(f"\nkill: wrk {json.dumps(result)}")  # the figures, with -s
    assert_no_failed_request(result)
    _scale(edge, 2)  # the killed one back


@pytest.mark.skipif(WRK is None, reason="wrk is not installed")
def test_rollout_under_load_drops_nothing(edge: Project) -> None:
    _scale(edge, 2)
    before = {name: c.id for name, c in _containers(edge).items()}
    wrk = Wrk(edge, seconds=300)
    load_began = time.monotonic()
    time.sleep(3)
    began = time.monotonic()
    done = edge.run("rollout", "auth", "--json")
    took = time.monotonic() - began
    # The 20 s of load; a rollout is quicker now (a drained slot is released at once).
    time.sleep(max(3.0, 21 - (time.monotonic() - load_began)))
    wrk.stop()
    result = wrk.result()
    print(f"\nrollout: {took:.1f}s, wrk {json.dumps(result)}")  # the figures, with -s
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["gateway"] == "runtime-api", report
    assert [r["replica"] for r in report["replaced"]] == [1, 2]
    after = {name: c.id for name, c in _containers(edge).items()}
    assert sorted(after) == sorted(before)  # same names, numbers and ports...
    assert not set(after.values()) & set(before.values())  # ...every container new
    assert result["duration_s"] >= took + 3  # wrk ran for the whole rollout...
    assert result["duration_s"] >= 20  # ...and for at least 20 s
    assert_no_failed_request(result)
    _wait_pool(edge, 2)


def test_rollout_to_a_replica_that_never_gets_ready_rolls_back(edge: Project) -> None:
    _scale(edge, 1)
    before = {name: c.id for name, c in _containers(edge).items()}
    # The new replica's configuration makes `auth serve` refuse to start (0 workers).
    done = edge.run("rollout", "auth", "--json", "--timeout", "60",
                    extra_env={"ATENDEAI_AUTH_WORKERS": "0"})  # fmt: skip
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert not report["ok"] and report["replaced"] == []
    failure = report["failure"]
    assert failure["service"] == "auth-2"
    assert "crashing" in failure["reason"] or "exited" in failure["reason"], failure
    assert any("workers" in line.lower() for line in failure["logs"]), failure["logs"]
    # The new one is gone, the old one untouched and still serving through the gateway.
    assert {name: c.id for name, c in _containers(edge).items()} == before
    assert httpx.get(_gateway_url(edge) + "/.well-known/jwks.json").status_code == 200
    human = edge.run("rollout", "auth", extra_env={"ATENDEAI_AUTH_WORKERS": "0"})
    assert human.returncode == 1
    assert "rollout of auth stopped: auth-2" in human.stderr
    assert {name: c.id for name, c in _containers(edge).items()} == before


def test_status_fast_path_lists_replicas(edge: Project) -> None:
    """`status --json` goes through cli.status.status_shortcut (no Typer): the same rows."""
    _scale(edge, 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(edge.env)
    code = (
        "import sys; from atendeai_ctl.cli.status import status_shortcut; "
        "sys.exit(status_shortcut(['--json']))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = [s["name"] for s in json.loads(done.stdout)["services"] if s["service"] == "auth"]
    assert names == ["auth", "auth-2"]

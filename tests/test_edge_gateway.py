"""The edge profile on the real engine: the HAProxy gateway in front of the auth service."""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import psycopg
import pytest

from tests.servers import free_port
from tests.stack_helpers import Project, admin_url, new_project, project_resources, remove_project

pytestmark = pytest.mark.docker

ORIGIN = "https://app.clinic.test"
PASSWORD = "correct horse battery staple 42"
RATE_LIMIT = 150


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_project(
        tmp_path_factory.mktemp("edge"),
        ATENDEAI_GATEWAY_PORT=str(free_port()),
        ATENDEAI_CORS_ORIGINS=f"https://other.test,{ORIGIN}",
        ATENDEAI_GATEWAY_RATE_LIMIT=str(RATE_LIMIT),
    )
    try:
        done = project.run("up", "--profile", "edge")
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


def _gateway(project: Project) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{project.env['ATENDEAI_GATEWAY_PORT']}")


def _login(http: httpx.Client, email: str = "ana@alpha.test", **headers: str) -> httpx.Response:
    body = {"clinic": "alpha", "email": email, "password": PASSWORD}
    return http.post("/auth/login", json=body, headers=headers)


def _logs(project: Project, service: str) -> list[str]:
    return project.run("logs", service).stdout.splitlines()


def _gateway_address(project: Project) -> str:
    container = docker.from_env().containers.get(f"{project.name}-gateway-1")
    networks = container.attrs["NetworkSettings"]["Networks"]
    return str(networks[f"{project.name}-network"]["IPAddress"])


def test_login_and_jwks_through_the_gateway_anything_else_json_404(edge: Project) -> None:
    with _gateway(edge) as http:
        done = _login(http)
        assert done.status_code == 200, done.text
        token = done.json()["access_token"]
        verified = http.get("/auth/verify", headers={"Authorization": f"Bearer {token}"})
        assert verified.status_code == 200
        assert http.get("/.well-known/jwks.json").json()["keys"]
        missing = http.get("/health/ready")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
    status = edge.json("status")
    assert {s["name"]: s["health"] for s in status["services"]}["gateway"] == "healthy"


def test_cors_preflight_allowed_and_refused_origins(edge: Project) -> None:
    ask = {"Access-Control-Request-Method": "POST"}
    with _gateway(edge) as http:
        allowed = http.options("/auth/login", headers={"Origin": ORIGIN, **ask})
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        refused = http.options("/auth/login", headers={"Origin": "https://evil.test", **ask})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        plain = http.get("/.well-known/jwks.json", headers={"Origin": ORIGIN})
        assert plain.headers["access-control-allow-origin"] == ORIGIN
        other = http.get("/.well-known/jwks.json", headers={"Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers


def test_json_is_gzipped(edge: Project) -> None:
    with httpx.Client() as http:
        url = f"http://127.0.0.1:{edge.env['ATENDEAI_GATEWAY_PORT']}/.well-known/jwks.json"
        with http.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as done:
            raw = b"".join(done.iter_raw())
            assert done.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["keys"]


def test_access_log_line_carries_the_request_id_auth_logs(edge: Project) -> None:
    with _gateway(edge) as http:
        given = http.get("/.well-known/jwks.json", headers={"X-Request-Id": "edge-test-given-1"})
        assert given.headers["x-request-id"] == "edge-test-given-1"
        made = http.get("/.well-known/jwks.json")
        generated = made.headers["x-request-id"]
    assert generated and generated != "edge-test-given-1"
    deadline = time.monotonic() + 10
    while True:
        gateway = [json.loads(line) for line in _logs(edge, "gateway") if line.startswith("{")]
        auth = "\n".join(_logs(edge, "auth"))
        ids = {entry.get("request_id") for entry in gateway}
        if {"edge-test-given-1", generated} <= ids or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"edge-test-given-1", generated} <= ids
    line = next(e for e in gateway if e["request_id"] == generated)
    assert line["status"] == 200 and line["path"] == "/.well-known/jwks.json"
    assert "edge-test-given-1" in auth and generated in auth


def test_forged_forwarded_for_spray_is_limited_per_real_client(edge: Project) -> None:
    # auth's default: 50 failed logins per client address per window. Each attempt names
    # another account and forges another X-Forwarded-For; only the real address counts.
    with _gateway(edge) as http:
        codes = []
        for i in range(60):
            done = _login(http, f"nobody{i}@alpha.test", **{"X-Forwarded-For": f"203.0.113.{i}"})
            codes.append(done.status_code)
    assert 429 in codes, codes
    assert codes.index(429) <= 51
    with psycopg.connect(admin_url(edge)) as conn:
        ips = {row[0] for row in conn.execute(
            "SELECT host(ip) FROM atendeai.audit_log WHERE action = 'login'"
        )}  # fmt: skip
    # The address the gateway saw (Docker's port proxy: the project network's own gateway),
    # not a forged one, nor the gateway container's (which it would be if auth trusted nobody).
    network = docker.from_env().networks.get(f"{edge.name}-network")
    pool = network.attrs["IPAM"]["Config"][0]
    bridge = pool.get("Gateway") or str(ipaddress.IPv4Network(pool["Subnet"])[1])
    assert _gateway_address(edge) != bridge
    assert ips == {bridge}, ips


def test_outer_limit_answers_429_with_retry_after(edge: Project) -> None:
    # Every request from the host reaches the gateway from the bridge's address, so the tests
    # above count against this one: their counters are cleared through the runtime API, by
    # the call `atendeai rollout` makes, rather than waited out (HAProxy's rate weighs the
    # previous 10 s period in: 20 s).
    from atendeai_ctl.stack.docker_runtime import DockerRuntime
    from atendeai_ctl.stack.rollout import ADMIN_PORT
    from atendeai_ctl.stack.spec import Service

    gateway = Service(name="gateway", image="unused")  # admin() finds it by name and number
    assert DockerRuntime(edge.name).admin(gateway, ADMIN_PORT, "clear table api") is not None
    with _gateway(edge) as http:
        codes = [http.get("/.well-known/jwks.json").status_code for _ in range(RATE_LIMIT + 20)]
        refused = http.get("/.well-known/jwks.json")
    assert codes[: RATE_LIMIT - 5].count(200) == RATE_LIMIT - 5
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    assert refused.json()["error"] == "rate_limited"


def test_health_checked_pool_and_exporter_on_the_internal_port_only(edge: Project) -> None:
    """The exporter answers on the project network (the host reaches the bridge), not on a
    published port; it shows the auth server up by the active /health/ready check."""
    status = edge.json("status")
    gateway = next(s for s in status["services"] if s["name"] == "gateway")
    assert [p["target"] for p in gateway["ports"]] == [8080]
    metrics = httpx.get(f"http://{_gateway_address(edge)}:8405/metrics", timeout=10).text
    up = [line for line in metrics.splitlines()
          if line.startswith('haproxy_backend_active_servers{proxy="auth"}')]  # fmt: skip
    assert up and up[0].split()[-1] == "1", up
    checks = [
        line
        for line in metrics.splitlines()
        if line.startswith("haproxy_server_check_status") and 'proxy="auth"' in line
    ]
    assert checks, "no active health checks on the auth servers"


def test_gateway_config_passes_haproxy_check(edge: Project) -> None:
    """What the gateway runs is checked by HAProxy itself, with and without CORS origins."""
    image = edge.env["ATENDEAI_HAPROXY_IMAGE"]
    config = Path(__file__).parent.parent / "configs" / "haproxy" / "haproxy.cfg"
    for origins in ("", "https://a.test https://b.test"):
        done = subprocess.run(
            ["docker", "run", "--rm", "-e", "GATEWAY_RATE_LIMIT=5", "-e", f"CORS_ORIGINS={origins}",
             "-v", f"{config}:/usr/local/etc/haproxy/haproxy.cfg:ro", image,
             "haproxy", "-c", "-f", "/usr/local/etc/haproxy/haproxy.cfg"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Configuration file is valid" in done.stdout + done.stderr


def test_docker_compose_with_the_profile_sees_the_gateway(edge: Project) -> None:
    env_file = edge.state_dir / "compose.env"
    env_file.write_text(edge.run("config", "env", extra_env={"ATENDEAI_PROFILES": "edge"}).stdout)
    root = Path(__file__).parent.parent
    base = ["docker-compose", "-p", edge.name, "--env-file", str(env_file),
            "-f", "compose/docker-compose.yml"]  # fmt: skip
    running = ["ps", "--services", "--filter", "status=running"]
    with_edge = subprocess.run([*base, "--profile", "edge", *running],
                               capture_output=True, text=True, cwd=root)  # fmt: skip
    assert with_edge.returncode == 0, with_edge.stderr
    assert sorted(with_edge.stdout.split()) == ["auth", "gateway", "postgres", "redis"]


def test_up_without_the_profile_leaves_no_gateway_and_down_removes_it(
    tmp_path: Path, edge: Project
) -> None:
    project = new_project(tmp_path)
    try:
        assert project.run("up").returncode == 0
        containers = project_resources(project.name)["containers"]
        assert not any("gateway" in c for c in containers), containers
        assert "gateway" not in {s["name"] for s in project.json("status")["services"]}
        assert project.run("status").returncode == 0
    finally:
        project.run("down", "--volumes", "--yes", "--no-backup")
        remove_project(project.name)
    # The edge project: status shows the gateway without the profile; down removes it.
    env_without = {"ATENDEAI_PROFILES": ""}
    names = {
        s["name"]
        for s in json.loads(edge.run("status", "--json", extra_env=env_without).stdout)["services"]
    }
    assert "gateway" in names
    assert edge.run("down", extra_env=env_without).returncode == 0
    assert project_resources(edge.name)["containers"] == []


def test_edge_on_a_network_made_before_the_fixed_subnet_is_one_line(tmp_path: Path) -> None:
    """A project whose network predates the fixed subnet (an older atendeai made it) cannot
    give the gateway its address: `up --profile edge` says so before creating anything."""
    project = new_project(tmp_path, ATENDEAI_GATEWAY_PORT=str(free_port()))
    network = docker.from_env().networks.create(
        f"{project.name}-network",
        driver="bridge",
        labels={
            "com.docker.compose.project": project.name,
            "com.docker.compose.network": "default",
        },
    )
    try:
        done = project.run("up", "--profile", "edge")
        assert done.returncode != 0
        message = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(message) == 1 and "(ATENDEAI_SUBNET)" in message[0], done.stderr
        assert "atendeai down" in done.stderr
        assert project_resources(project.name)["containers"] == []
    finally:
        remove_project(project.name)
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()

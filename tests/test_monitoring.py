"""The monitoring profile: the atendeai_monitor role, and Prometheus with both exporters on the
real engine (stand-in images), scraping every auth replica and, with `edge`, the gateway."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from atendeai_ctl.db import migrations
from atendeai_ctl.db.roles import MONITOR_ROLE
from tests.db_helpers import dbname
from tests.servers import PostgresServer, free_port
from tests.stack_helpers import (
    ROOT,
    Project,
    admin_url,
    new_project,
    remove_project,
    secrets,
)
from tests.test_prometheus_rules import panel_queries

PASSWORD = "correct horse battery staple 42"
TARGETS_UP_WITHIN = 30.0
UP_RETURNED: dict[str, float] = {}
"""When `up --profile monitoring` returned, per project: the 30 s count from there."""
T = TypeVar("T")


# The role (a throwaway PostgreSQL, no Docker).


def test_the_monitor_role_reads_statistics_and_no_table(
    database_url: str, pg: PostgresServer
) -> None:
    migrations.upgrade(database_url, app_password="app-secret", monitor_password="first-secret")
    url = pg.url(dbname(database_url), MONITOR_ROLE, "first-secret")
    with psycopg.connect(url) as conn:
        granted = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = current_user::regrole"
        ).fetchall()
        assert granted == [("pg_monitor",)]
        flags = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication, "
            "rolconnlimit FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert flags == (False, False, False, False, False, 5)
        # pg_monitor: every session's query text, which a plain role sees as <insufficient...>.
        with psycopg.connect(database_url) as other:
            other.execute("SELECT 'visible to pg_monitor'").fetchone()
            pid = other.info.backend_pid
            query = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
        assert query == ("SELECT 'visible to pg_monitor'",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM atendeai.clinics")
    # At head, `migrate up` (the migrate job on every `up`) sets a changed password again.
    migrations.upgrade(database_url, monitor_password="second-secret")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url).close()
    psycopg.connect(pg.url(dbname(database_url), MONITOR_ROLE, "second-secret")).close()


# The stack on the real engine.


def _until(what: str, check: Callable[[], T | None], within: float = TARGETS_UP_WITHIN) -> T:
    """Poll `check` every half second until it returns something; fail naming `what`."""
    deadline = time.monotonic() + within
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {within:.0f} s")
        time.sleep(0.5)


class Prometheus:
    def __init__(self, project: Project) -> None:
        port = project.env["ATENDEAI_PROMETHEUS_PORT"]
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def api(self, path: str, **params: str) -> Any:
        done = self.http.get(f"/api/v1/{path}", params=params)
        body = done.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])


def _cli(project: Project, *args: str, stdin: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(project.env)
    done = subprocess.run([sys.executable, "-m", "atendeai_ctl", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_project(
        tmp_path_factory.mktemp("monitoring"),
        ATENDEAI_PROMETHEUS_PORT=str(free_port()),
        ATENDEAI_GATEWAY_PORT=str(free_port()),
        ATENDEAI_REDIS_REPLICA_PORT=str(free_port()),
        ATENDEAI_REDIS_SENTINEL_PORT_1=str(free_port()),
        ATENDEAI_REDIS_SENTINEL_PORT_2=str(free_port()),
        ATENDEAI_REDIS_SENTINEL_PORT_3=str(free_port()),
    )
    try:
        done = project.run("up", "--profile", "monitoring")
        assert done.returncode == 0, done.stderr
        UP_RETURNED[project.name] = time.monotonic()
        _cli(project, "clinic", "create", "Alpha", "--slug", "alpha")
        _cli(project, "user", "create", "ana@alpha.test", "--clinic", "alpha",
             "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        yield project
    finally:
        project.run("down", "--volumes", "--yes", "--no-backup")
        remove_project(project.name)


@pytest.fixture(scope="module")
def prometheus(stack: Project) -> Iterator[Prometheus]:
    client = Prometheus(stack)
    yield client
    client.http.close()


def _login(project: Project, password: str = PASSWORD) -> httpx.Response:
    body = {"clinic": "alpha", "email": "ana@alpha.test", "password": password}
    url = f"http://127.0.0.1:{project.env['ATENDEAI_AUTH_PORT']}/auth/login"
    return httpx.post(url, json=body, timeout=30)


def _all_up(prometheus: Prometheus, jobs: set[str]) -> list[dict[str, Any]] | None:
    targets = prometheus.targets()
    if {t["labels"]["job"] for t in targets} != jobs:
        return None
    return targets if all(t["health"] == "up" for t in targets) else None


@pytest.mark.docker
def test_every_target_is_up_within_30_s_and_no_gateway_without_edge(
    stack: Project, prometheus: Prometheus
) -> None:
    jobs = {"prometheus", "auth", "postgres", "redis"}
    left = UP_RETURNED[stack.name] + TARGETS_UP_WITHIN - time.monotonic()
    targets = _until("every target up after `up`", lambda: _all_up(prometheus, jobs), left)
    # The auth replica is scraped directly (its own address), not through a gateway.
    [auth] = [t for t in targets if t["labels"]["job"] == "auth"]
    assert auth["scrapeUrl"].endswith(":3001/metrics")
    # Without `edge` the gateway has no DNS name: no target, so nothing can be down.
    assert not [t for t in targets if t["labels"]["job"] in ("gateway", "redis-replica")]
    assert prometheus.value("pg_up") == 1.0
    assert prometheus.value('redis_up{job="redis"}') == 1.0
    # The rules directory is mounted where rule_files points: every alert is loaded.
    groups = prometheus.api("rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"AtendeaiTargetDown", "AtendeaiNoRedisReplica", "AtendeaiPostgresDown"} <= loaded
    assert "job:atendeai_auth_errors:ratio_rate5m" in loaded
    # Nothing about the profiles that are off, pending or firing (a slow scrape of a running
    # target under load may be, for a moment: that is what the alert's `for` absorbs).
    alerts = [a["labels"] for a in prometheus.api("alerts")["alerts"]]
    assert not [a for a in alerts if a["alertname"] == "AtendeaiNoRedisReplica"], alerts
    assert not [a for a in alerts if a.get("job") in ("gateway", "redis-replica")], alerts


@pytest.mark.docker
def test_the_postgres_exporter_logs_in_as_the_monitor_role(stack: Project) -> None:
    with psycopg.connect(admin_url(stack)) as conn:
        users = _until(
            "a monitor session",
            lambda: conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE usename = %s", [MONITOR_ROLE]
            ).fetchall(),
        )
    assert users == [(MONITOR_ROLE,)]


@pytest.mark.docker
def test_a_login_shows_in_the_auth_metrics_prometheus_scraped(
    stack: Project, prometheus: Prometheus
) -> None:
    expr = 'sum(atendeai_auth_logins_total{job="auth", outcome="success"})'
    before = prometheus.value(expr)
    assert _login(stack).status_code == 200
    after = _until("the login in Prometheus", lambda: prometheus.value(expr) >= before + 1 or None)
    assert after


@pytest.mark.docker
def test_every_dashboard_panel_query_returns_series(stack: Project, prometheus: Prometheus) -> None:
    """Grafana cannot run here: each panel's query goes to the live Prometheus instead. The
    traffic first: a login, and failed ones up to the per-account limit (429)."""
    assert _login(stack).status_code == 200
    codes = [_login(stack, password="wrong password 123").status_code for _ in range(6)]
    assert codes[-1] == 429, codes
    pending = dict.fromkeys(panel_queries())
    assert len(pending) >= 10

    def answered() -> bool | None:
        for title, expr in list(pending):
            if prometheus.query(expr):
                del pending[(title, expr)]
        return not pending or None

    deadline = time.monotonic() + 45
    while not answered():
        if time.monotonic() > deadline:
            pytest.fail(f"panels without series: {sorted(pending)}")
        time.sleep(1)


@pytest.mark.docker
def test_no_credential_on_any_process_argv(stack: Project) -> None:
    import docker

    values = [v for k, v in secrets(stack).items() if k.endswith("PASSWORD") and v]
    assert len(values) >= 5
    client = docker.from_env()
    label = {"label": f"com.docker.compose.project={stack.name}"}
    containers = client.containers.list(filters=label)
    names = {c.labels["com.docker.compose.service"] for c in containers}
    assert {"prometheus", "postgres-exporter", "redis-exporter", "auth"} <= names
    seen = 0
    for container in containers:
        top = container.top(ps_args="-eo pid")
        for (pid,) in top["Processes"]:
            # The host's /proc: the full argv, not ps's column (a healthcheck may be gone).
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
            seen += 1
            for value in values:
                assert value not in cmdline, f"a secret on the argv of {container.name}: pid {pid}"
    assert seen >= len(containers)


@pytest.mark.docker
def test_prometheus_is_published_on_loopback_only(stack: Project) -> None:
    import docker

    client = docker.from_env()
    container = client.containers.get(f"{stack.name}-prometheus-1")
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert bindings == {"9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": stack.env[
        "ATENDEAI_PROMETHEUS_PORT"]}]}  # fmt: skip
    for service in ("postgres-exporter", "redis-exporter"):
        exporter = client.containers.get(f"{stack.name}-{service}-1")
        assert not exporter.attrs["HostConfig"]["PortBindings"], service
    # Not reachable on the host's other addresses (the engine's bridge gateway here).
    bridge = client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((bridge, int(stack.env["ATENDEAI_PROMETHEUS_PORT"]))) != 0
    with socket.create_connection(("127.0.0.1", int(stack.env["ATENDEAI_PROMETHEUS_PORT"])), 2):
        pass


@pytest.mark.docker
def test_with_edge_the_gateway_exporter_is_scraped_too(
    stack: Project, prometheus: Prometheus
) -> None:
    """Last: it changes the stack (adds the gateway, so auth trusts it and is recreated, and a
    second auth replica, which Prometheus finds through Docker's DNS and scrapes on its own)."""
    done = stack.run("up", "--profile", "monitoring", "--profile", "edge", "--scale", "auth=2")
    assert done.returncode == 0, done.stderr
    jobs = {"prometheus", "auth", "postgres", "redis", "gateway"}

    def two_replicas() -> list[dict[str, Any]] | None:
        targets = _all_up(prometheus, jobs) or []
        auth = [t for t in targets if t["labels"]["job"] == "auth"]
        return targets if len(auth) == 2 else None

    targets = _until("every target up, the gateway's and two replicas' included", two_replicas)
    assert len({t["labels"]["instance"] for t in targets if t["labels"]["job"] == "auth"}) == 2
    assert prometheus.value('count(haproxy_server_status{job="gateway"})') > 0


NO_REPLICA = "AtendeaiNoRedisReplica"


@pytest.mark.docker
def test_with_ha_the_replica_is_scraped_and_losing_it_alerts(
    stack: Project, prometheus: Prometheus
) -> None:
    """After the edge test (same profiles plus `ha`): the replica is scraped through the
    exporter's multi-target endpoint; stopped, the primary reports no replica and the alert's
    condition holds (pending: it fires after its `for` of a minute)."""
    import docker

    if "redis-replica" not in (ROOT / "compose" / "docker-compose.yml").read_text():
        pytest.skip("the compose file has no `ha` profile (redis-replica)")
    profiles = ("--profile", "monitoring", "--profile", "edge", "--profile", "ha")
    done = stack.run("up", *profiles, "--scale", "auth=2")
    assert done.returncode == 0, done.stderr
    jobs = {"prometheus", "auth", "postgres", "redis", "gateway", "redis-replica"}
    _until("every target up, the Redis replica's included", lambda: _all_up(prometheus, jobs))
    _until(
        "the primary reporting its replica",
        lambda: prometheus.value('redis_connected_slaves{job="redis"}') >= 1 or None,
    )
    # The rule is evaluated every few seconds: a state from before the replica linked clears.
    _until("the no-replica alert to clear", lambda: NO_REPLICA not in _alerts(prometheus) or None)
    docker.from_env().containers.get(f"{stack.name}-redis-replica-1").stop(timeout=5)
    state = _until("the no-replica alert", lambda: _alerts(prometheus).get(NO_REPLICA))
    assert state in ("pending", "firing")


def _alerts(prometheus: Prometheus) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in prometheus.api("alerts")["alerts"]}

"""Profile `ha` on the real engine with the stand-in images: a Redis replica and three
Sentinels. The primary's container is killed under load; auth must answer again within 5 s,
a revocation acknowledged just before the kill must still hold, and the old primary must come
back as a replica. Then `atendeai drill redis-failover --json` does the same and reports it.

One stack for the module (bringing it up costs about half a minute); the tests run in order
and each leaves it whole (the killed container started again)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
import redis

from tests.servers import free_port
from tests.stack_helpers import Project, new_project, remove_project, secrets

pytestmark = pytest.mark.docker

TARGET_S = 5.0
CLINIC, EMAIL = "alpha", "ana@alpha.test"


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_project(
        tmp_path_factory.mktemp("ha"),
        prefix="ha",
        ATENDEAI_PROFILES="ha",
        ATENDEAI_REDIS_REPLICA_PORT=str(free_port()),
        ATENDEAI_REDIS_SENTINEL_PORT_1=str(free_port()),
        ATENDEAI_REDIS_SENTINEL_PORT_2=str(free_port()),
        ATENDEAI_REDIS_SENTINEL_PORT_3=str(free_port()),
    )
    try:
        up = project.run("up", timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        yield project
    finally:
        remove_project(project.name)


def _container(project: Project, service: str) -> Any:
    client = docker.from_env()
    (found,) = client.containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={project.name}",
                f"com.docker.compose.service={service}",
            ]
        },
    )
    return found


def _port(project: Project, service: str) -> int:
    key = {"redis": "ATENDEAI_REDIS_PORT", "redis-replica": "ATENDEAI_REDIS_REPLICA_PORT"}
    return int(project.env[key[service]])


def _redis(project: Project, port: int) -> redis.Redis:
    password = secrets(project)["ATENDEAI_REDIS_PASSWORD"]
    return redis.Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=2)


def _primary(project: Project) -> str:
    """The service the Sentinels name (they announce service names, not addresses)."""
    with _redis(project, int(project.env["ATENDEAI_REDIS_SENTINEL_PORT_1"])) as sentinel:
        host, _ = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "atendeai")
    return str(host.decode())


def _role(project: Project, service: str) -> str | None:
    try:
        with _redis(project, _port(project, service)) as client:
            return str(client.execute_command("ROLE")[0].decode())
    except (redis.RedisError, OSError):
        return None


def _wait(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def user(ha: Project) -> str:
    """A clinic user made through the admin CLI, which reaches Redis through the Sentinels."""
    assert ha.run("clinic", "create", "Alpha", "--slug", CLINIC).returncode == 0
    made = ha.run("user", "create", EMAIL, "--clinic", CLINIC, "--generate-password", "--json")
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["password"])


def test_auth_is_back_within_target_after_the_primary_is_killed_and_revocations_hold(
    ha: Project, user: str
) -> None:
    base = f"http://127.0.0.1:{ha.env['ATENDEAI_AUTH_PORT']}"
    with httpx.Client(base_url=base, timeout=20) as http:

        def login() -> str:
            answer = http.post(
                "/auth/login", json={"clinic": CLINIC, "email": EMAIL, "password": user}
            )
            assert answer.status_code == 200, answer.text
            return str(answer.json()["access_token"])

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        kept, revoked = login(), login()
        # Acknowledged just before the kill: with a replica, 204 means the replica has it.
        assert http.post("/auth/logout", headers=bearer(revoked), json={}).status_code == 204
        primary = _primary(ha)
        assert primary in ("redis", "redis-replica")
        other = "redis-replica" if primary == "redis" else "redis"

        outcomes: list[tuple[float, int]] = []
        stop = threading.Event()
        killed_at: list[float] = []

        def load() -> None:
            with httpx.Client(base_url=base, timeout=3) as loader:
                for _ in range(2000):  # bounded: about 100 s at most
                    if stop.is_set():
                        return
                    sent = time.monotonic()
                    try:
                        status = loader.get("/auth/verify", headers=bearer(kept)).status_code
                    except httpx.HTTPError:
                        status = 0
                    if killed_at:
                        outcomes.append((sent - killed_at[0], status))
                    time.sleep(0.05)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            time.sleep(1.0)
            killed_at.append(time.monotonic())
            _container(ha, primary).kill()

            def settled() -> bool:
                failures = [t for t, status in outcomes if status != 200]
                after = [
                    t for t, status in outcomes if status == 200 and t > max(failures, default=0)
                ]
                return bool(failures) and bool(after) and after[-1] - after[0] >= 1.0

            _wait(settled, 30, "verify to answer 200 again for a second")
        finally:
            stop.set()
            loader.join(10)
        last_failure = max(t for t, status in outcomes if status != 200)
        recovered = min(t for t, status in outcomes if status == 200 and t > last_failure)
        assert recovered < TARGET_S, outcomes
        assert {status for _, status in outcomes} <= {200, 503}, outcomes
        assert _primary(ha) == other
        login()  # login answers again too
        refused = http.get("/auth/verify", headers=bearer(revoked))
        assert refused.status_code == 401, refused.text

        # With the only replica gone, a revocation cannot be confirmed: the CLI says so.
        alone = ha.run("token", "revoke", "--user", EMAIL, "--clinic", CLINIC)
        assert alone.returncode == 1, alone.stderr
        assert "no replica confirmed" in alone.stderr

    # The old primary comes back as a replica of the new one (it asks the Sentinels first).
    _container(ha, primary).start()
    _wait(lambda: _role(ha, primary) == "slave", 60, f"{primary} to rejoin as a replica")
    with _redis(ha, _port(ha, other)) as new_primary:
        _wait(
            lambda: new_primary.info("replication").get("slave0", {}).get("state") == "online",
            60,
            "the replica to finish its sync",
        )
    done = ha.run("token", "revoke", "--user", EMAIL, "--clinic", CLINIC)
    assert done.returncode == 0, done.stderr


def test_the_drill_kills_nothing_when_no_replica_could_take_over(ha: Project, user: str) -> None:
    primary = _primary(ha)
    replica = "redis-replica" if primary == "redis" else "redis"
    _container(ha, replica).stop(timeout=5)
    try:
        with _redis(ha, int(ha.env["ATENDEAI_REDIS_SENTINEL_PORT_1"])) as sentinel:
            _wait(
                lambda: all(r["is_sdown"] for r in sentinel.sentinel_slaves("atendeai")),
                30,
                "the Sentinels to see the replica down",
            )
        done = ha.run("drill", "redis-failover", "--json")
        assert done.returncode == 3, done.stdout
        assert json.loads(done.stdout)["error"]["code"] == "not_ready"
        assert _container(ha, primary).status == "running"
        assert _primary(ha) == primary
    finally:
        _container(ha, replica).start()
    _wait(lambda: _role(ha, replica) == "slave", 60, f"{replica} to rejoin")
    with _redis(ha, _port(ha, primary)) as current:
        _wait(
            lambda: current.info("replication").get("slave0", {}).get("state") == "online",
            60,
            "the replica to finish its sync",
        )
    # The drill asks the Sentinels, which clear their "down" mark on their next look at it,
    # and learn that the replica's link is up from its INFO (every 10 s): the drill wants both.
    for key in ("1", "2", "3"):
        with _redis(ha, int(ha.env[f"ATENDEAI_REDIS_SENTINEL_PORT_{key}"])) as sentinel:
            _wait(
                lambda s=sentinel: any(  # type: ignore[misc]
                    not r["is_sdown"]
                    and not r["is_odown"]
                    and not r["is_disconnected"]
                    and r.get("master-link-status") == "ok"
                    for r in s.sentinel_slaves("atendeai")
                ),
                60,
                "the Sentinels to see the replica up again",
            )


def test_drill_reports_the_failover_as_json(ha: Project, user: str) -> None:
    before = _primary(ha)
    done = ha.run("drill", "redis-failover", "--json", timeout=300)
    assert done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert done.returncode == 0, report
    assert report["schema"] == 1
    assert report["ok"] is True
    assert report["killed"] == before
    assert report["new_primary"] == ({"redis", "redis-replica"} - {before}).pop()
    assert 0 < report["failover_s"] < TARGET_S
    assert report["auth_recovered_s"] is not None and report["auth_recovered_s"] <= TARGET_S
    assert report["revoked_before_kill"] >= 1
    assert report["revoked_tokens_accepted"] == 0
    assert report["acknowledged_revocations_lost"] == 0
    assert report["old_primary_rejoined_as_replica"] is True
    assert report["verify"]["ok"] > 0 and report["login"]["ok"] > 0
    assert _role(ha, before) == "slave"


def test_down_and_up_after_a_failover_keep_the_primary_and_its_writes(ha: Project) -> None:
    """The Sentinels keep what they learnt (their own volumes) and a Redis server asks them
    at start, so `redis` does not come back as a second primary with stale data."""
    primary = _primary(ha)
    other = "redis-replica" if primary == "redis" else "redis"
    with _redis(ha, _port(ha, primary)) as client:
        client.set("written-to-the-current-primary", "1")
    assert ha.run("down").returncode == 0
    up = ha.run("up", timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    _wait(lambda: _role(ha, other) == "slave", 60, f"{other} to be a replica")
    assert _primary(ha) == primary
    assert _role(ha, primary) == "master"
    for service in (primary, other):
        with _redis(ha, _port(ha, service)) as client:
            _wait(lambda c=client: c.get("written-to-the-current-primary") == b"1", 30, service)

"""`--runtime swarm` on a real swarm: Docker engines in containers (tests/swarm_helpers.py).

Never the host engine: it is shared, and a swarm init there would change it for everyone.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack_helpers import Project, new_project, secrets
from tests.swarm_helpers import (
    Cluster,
    grow_cluster,
    node_objects,
    require_swarm,
    stack_images,
    start_cluster,
    start_engine,
)

pytestmark = pytest.mark.docker

PASSWORD = "correct horse battery staple 42"


@pytest.fixture(scope="module")
def one_node() -> Iterator[Cluster]:
    require_swarm()
    cluster = start_cluster(1, images=stack_images())
    try:
        yield cluster
    finally:
        cluster.remove()


def _project(tmp_path: Path, cluster: Cluster) -> Project:
    return new_project(tmp_path, prefix="sw", ATENDEAI_RUNTIME="swarm", **cluster.env())


def _admin(cluster: Cluster, project: Project, script: str, **env: str) -> str:
    """The admin CLI inside the auth task (the stack's databases publish no port in a swarm),
    as the database owner; secrets through the environment, never argv."""
    label = {"label": f"com.docker.swarm.service.name={project.name}_auth"}
    container = next(
        c for node in cluster.nodes for c in cluster.client(node).containers.list(filters=label)
    )
    owner = secrets(project)["ATENDEAI_POSTGRES_PASSWORD"]
    done = container.exec_run(
        ["sh", "-c", script],
        environment={
            "ATENDEAI_DATABASE_URL": f"postgresql://atendeai:{owner}@postgres:5432/atendeai",
            "ATENDEAI_STATE_DIR": "/tmp/atendeai",
            **env,
        },
    )
    output = done.output.decode(errors="replace")
    assert done.exit_code == 0, output
    return output


def _seed_user(cluster: Cluster, project: Project) -> None:
    """Clinic alpha and its user ana@alpha.test, whom _login_at logs in."""
    _admin(cluster, project, "python -m atendeai_ctl clinic create Alpha --slug alpha")
    _admin(
        cluster,
        project,
        'printf "%s\\n" "$PW" | python -m atendeai_ctl user create ana@alpha.test '
        "--clinic alpha --password-stdin",
        PW=PASSWORD,
    )


def _login_at(url: str) -> httpx.Response:
    body = {"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD}
    return httpx.post(f"{url}/auth/login", json=body, timeout=30)


def _login(cluster: Cluster, project: Project, node: str | None = None) -> httpx.Response:
    """On the port auth publishes on `node` (no gateway)."""
    return _login_at(f"http://{cluster.address(node)}:{project.env['ATENDEAI_AUTH_PORT']}")


def test_refuses_an_engine_outside_a_swarm(tmp_path: Path) -> None:
    """The host engine is in no swarm (and is never made one): one line, nothing created."""
    project = new_project(tmp_path, prefix="sw")
    done = project.run("up", "--runtime", "swarm", extra_env={"DOCKER_HOST": ""})
    assert done.returncode == 1, done.stderr
    assert "is not part of a swarm" in done.stderr
    assert "atendeai swarm init" in done.stderr
    assert "Traceback" not in done.stderr


def test_swarm_init_makes_a_one_node_swarm_once(tmp_path: Path) -> None:
    require_swarm()
    engine = start_engine()
    try:
        project = new_project(tmp_path, prefix="sw", images=False)
        where = {"DOCKER_HOST": engine.docker_host()}
        done = project.run("swarm", "init", "--json", extra_env=where)
        assert done.returncode == 0, done.stderr
        first = json.loads(done.stdout)
        assert first["created"] is True and first["data_node"] == engine.manager
        [node] = engine.client().nodes.list()
        assert node.attrs["Spec"]["Labels"] == {"atendeai.data": "true"}
        assert node.attrs["Spec"]["Role"] == "manager"
        again = json.loads(project.run("swarm", "init", "--json", extra_env=where).stdout)
        assert again["created"] is False and again["node_id"] == first["node_id"]
    finally:
        engine.remove()


def test_one_node_up_status_login_down(tmp_path: Path, one_node: Cluster) -> None:
    project = _project(tmp_path, one_node)
    try:
        done = project.run("up", "--json", timeout=400)
        report = json.loads(done.stdout)
        assert done.returncode == 0, (report.get("failure"), done.stderr)
        assert report["runtime"] == "swarm"
        results = {s["name"]: s["result"] for s in report["services"]}
        assert results == {
            "postgres": "healthy",
            "redis": "healthy",
            "migrate": "completed",
            "auth": "healthy",
        }

        # What `docker stack` sees: the namespace label on every service.
        manager = one_node.client()
        namespace = {"label": f"com.docker.stack.namespace={project.name}"}
        services = manager.services.list(filters=namespace)
        assert sorted(s.name for s in services) == [
            f"{project.name}_{n}" for n in ("auth", "migrate", "postgres", "redis")
        ]
        specs = {s.name.split("_", 1)[1]: s.attrs["Spec"] for s in services}
        assert specs["migrate"]["Mode"] == {
            "ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}
        }
        assert specs["migrate"]["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
        assert specs["auth"]["EndpointSpec"]["Mode"] == "dnsrr"
        assert specs["auth"]["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
        # auth publishes its port in host mode (nothing in front of it): stop-first, since a
        # second task could not bind the port on the node; see docs/swarm.md.
        assert specs["auth"]["UpdateConfig"]["Order"] == "stop-first"
        assert specs["auth"]["UpdateConfig"]["FailureAction"] == "rollback"
        assert specs["postgres"]["UpdateConfig"]["Order"] == "stop-first"
        assert specs["postgres"]["TaskTemplate"]["Placement"]["Constraints"] == [
            "node.labels.atendeai.data==true"
        ]
        assert "Ports" not in specs["postgres"]["EndpointSpec"]
        # Secrets as Docker secrets named by content; postgres reads its password from the file.
        pg_env = specs["postgres"]["TaskTemplate"]["ContainerSpec"]["Env"]
        assert "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password" in pg_env
        assert not any(e.startswith("POSTGRES_PASSWORD=") for e in pg_env)
        names = {s.name for s in manager.secrets.list(filters=namespace)}
        password = secrets(project)["ATENDEAI_POSTGRES_PASSWORD"]
        import hashlib

        assert (
            f"{project.name}_postgres_password_{hashlib.sha256(password.encode()).hexdigest()[:12]}"
            in names
        )
        assert any(n.startswith(f"{project.name}_auth_") and "_pem_" in n for n in names)

        status = project.run("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        document = json.loads(status.stdout)
        assert document["runtime"] == "swarm"
        by_name = {s["name"]: s for s in document["services"]}
        for name in ("postgres", "redis", "auth"):
            assert by_name[name]["replicas"] == {"desired": 1, "running": 1}, by_name[name]
            [task] = by_name[name]["tasks"]
            assert (task["node"], task["state"], task["health"]) == (
                one_node.manager,
                "running",
                "healthy",
            )
        assert by_name["migrate"]["state"] == "exited" and by_name["migrate"]["exit_code"] == 0

        # Login through the auth service, on the port it publishes on the node.
        _seed_user(one_node, project)
        login = _login(one_node, project)
        assert login.status_code == 200, login.text
        assert login.json()["access_token"]

        logs = project.run("logs", "auth", "--tail", "50")
        assert logs.returncode == 0 and "/auth/login" in logs.stdout, logs.stderr

        # A second `up` changes nothing that runs (nor runs the job again: its work is done).
        again = json.loads(project.run("up", "--json", timeout=300).stdout)
        assert again["ok"], again["failure"]
        actions = {s["name"]: s["action"] for s in again["services"]}
        assert actions == {n: "unchanged" for n in ("postgres", "redis", "migrate", "auth")}

        # Key rotation: a new key file is a new secret and a rolling update of auth, which
        # then publishes it; once a key leaves the state dir (pruned), its secret goes too.
        keys_dir = project.state_dir / project.name / "jwt"
        old_kids = [p.stem for p in keys_dir.glob("*.pem")]
        assert project.run("auth", "rotate-key").returncode == 0
        for kid in old_kids:
            (keys_dir / f"{kid}.pem").unlink()
        rotated = json.loads(project.run("up", "--json", timeout=300).stdout)
        assert rotated["ok"], rotated["failure"]
        assert {s["name"]: s["action"] for s in rotated["services"]}["auth"] == "recreated"
        [new_kid] = [p.stem for p in keys_dir.glob("*.pem")]
        url = f"http://{one_node.address()}:{project.env['ATENDEAI_AUTH_PORT']}"
        jwks = httpx.get(f"{url}/.well-known/jwks.json", timeout=30).json()
        assert [k["kid"] for k in jwks["keys"]] == [new_kid]
        names = {s.name for s in manager.secrets.list(filters=namespace)}
        assert any(new_kid in n for n in names)
        assert not any(kid in n for kid in old_kids for n in names), names

        # An update whose new task never gets healthy (auth refuses 0 workers and exits): Swarm
        # rolls it back, and `up` says so and fails (`docker stack deploy` would exit 0).
        broken = project.run("up", "--json", extra_env={"ATENDEAI_AUTH_WORKERS": "0"})
        assert broken.returncode == 1, broken.stdout
        failure = json.loads(broken.stdout)["failure"]
        assert failure["service"] == "auth" and "rolled back" in failure["reason"], failure
        _wait(lambda: _status(project)["auth"]["health"] == "healthy", timeout=120)
        assert _login(one_node, project).status_code == 200
    finally:
        down = project.run("down", "--volumes", "--yes", "--no-backup", "--json", timeout=300)
    assert down.returncode == 0, down.stderr
    removed = json.loads(down.stdout)["removed"]
    assert f"network {project.name}-network" in removed
    assert node_objects(one_node, project.name) == {}


def _task_ids(project: Project, service: str) -> set[str]:
    return {t["id"] for t in _status(project)[service]["tasks"] if t["state"] == "running"}


def test_rollout_command_replaces_the_tasks(tmp_path: Path, one_node: Cluster) -> None:
    """`atendeai rollout auth --runtime swarm` through the CLI: the command hands the work to
    the swarm runtime (a forced Swarm update), reports it in the JSON of the other runtimes,
    and the task that serves afterwards is a new one; the service's spec is what `up` made
    (the command loads the whole file, every profile: auth must keep its published port)."""
    project = _project(tmp_path, one_node)
    try:
        done = project.run("up", "--runtime", "swarm", "--json", timeout=400)
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr)
        before = _task_ids(project, "auth")
        assert len(before) == 1
        manager = one_node.client()

        # A second `up`: the migrate job's work is done (the schema is at head, asked inside
        # the postgres task), so the job is not run again: same iteration, same task.
        job = manager.services.get(f"{project.name}_migrate")
        iteration = job.attrs["JobStatus"]["JobIteration"].get("Index", 0)
        runs = [t["ID"] for t in job.tasks()]
        again = project.run("up", "--runtime", "swarm", "--json", timeout=300)
        assert again.returncode == 0, (again.stdout[-2000:], again.stderr)
        job.reload()
        assert job.attrs["JobStatus"]["JobIteration"].get("Index", 0) == iteration
        assert [t["ID"] for t in job.tasks()] == runs
        spec_before = manager.services.get(f"{project.name}_auth").attrs["Spec"]

        done = project.run("rollout", "auth", "--runtime", "swarm", "--json", timeout=300)
        assert done.returncode == 0, (done.stdout, done.stderr)
        report = json.loads(done.stdout)
        assert report["runtime"] == "swarm" and report["service"] == "auth", report
        assert report["gateway"] == "swarm-dns" and report["failure"] is None, report
        [replaced] = report["replaced"]
        assert replaced["replica"] == 1 and replaced["old_id"] in before, report
        assert _task_ids(project, "auth") == {replaced["new_id"]} != before

        spec_after = manager.services.get(f"{project.name}_auth").attrs["Spec"]
        assert spec_after["EndpointSpec"] == spec_before["EndpointSpec"]
        assert spec_after["Mode"] == spec_before["Mode"]
        url = f"http://{one_node.address()}:{project.env['ATENDEAI_AUTH_PORT']}"
        assert httpx.get(f"{url}/health/live", timeout=30).status_code == 200

        missing = project.run("rollout", "nothing", "--runtime", "swarm")
        assert missing.returncode != 0 and "no service 'nothing'" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        down = project.run(
            "down", "--runtime", "swarm", "--volumes", "--yes", "--no-backup", timeout=300
        )
    assert down.returncode == 0, down.stderr
    assert node_objects(one_node, project.name) == {}


def test_edge_gateway_login_and_rollout_without_a_failure(
    tmp_path: Path, one_node: Cluster
) -> None:
    """Profile `edge` on a swarm: the gateway publishes its port in host mode and finds the
    auth tasks through Docker's DNS (dnsrr); auth publishes nothing and trusts forwarding
    headers from the project's overlay subnet only (the gateway cannot hold its fixed address
    there), so a login through the gateway with a forged X-Forwarded-For is recorded with the
    real client's address. `rollout auth` (start-first behind the gateway) while requests run
    through the gateway: none fails."""
    import ipaddress

    from tests.servers import free_port

    project = _project(tmp_path, one_node)
    project.env["ATENDEAI_PROFILES"] = "edge"
    project.env["ATENDEAI_GATEWAY_PORT"] = str(free_port())
    gateway = f"http://{one_node.address()}:{project.env['ATENDEAI_GATEWAY_PORT']}"
    try:
        done = project.run("up", "--json", timeout=400)
        report = json.loads(done.stdout)
        assert done.returncode == 0, (report.get("failure"), done.stderr)
        assert {s["name"]: s["result"] for s in report["services"]}["gateway"] == "healthy"

        manager = one_node.client()
        specs = {
            s.name.split("_", 1)[1]: s.attrs["Spec"]
            for s in manager.services.list(
                filters={"label": f"com.docker.stack.namespace={project.name}"}
            )
        }
        [port] = specs["gateway"]["EndpointSpec"]["Ports"]
        assert (port["PublishMode"], port["PublishedPort"]) == (
            "host",
            int(project.env["ATENDEAI_GATEWAY_PORT"]),
        )
        assert specs["auth"]["EndpointSpec"] == {"Mode": "dnsrr"}  # nothing published
        assert specs["auth"]["UpdateConfig"]["Order"] == "start-first"
        subnet = project.env["ATENDEAI_SUBNET"]
        auth_env = specs["auth"]["TaskTemplate"]["ContainerSpec"]["Env"]
        assert f"ATENDEAI_AUTH_TRUSTED_PROXIES={subnet}" in auth_env

        _seed_user(one_node, project)
        body = {"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD}
        login = httpx.post(
            f"{gateway}/auth/login",
            json=body,
            headers={"X-Forwarded-For": "203.0.113.9"},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        assert login.json()["access_token"]
        rows = json.loads(
            _admin(one_node, project, "python -m atendeai_ctl audit list --action login --json")
        )
        entries = (
            rows
            if isinstance(rows, list)
            else next(v for v in rows.values() if isinstance(v, list))
        )
        ip = entries[0]["ip"]
        assert ip == one_node.bridge_gateway(), entries[0]
        assert ipaddress.ip_address(ip) not in ipaddress.ip_network(subnet)

        # `rollout auth` through the CLI while requests run through the gateway (bounded: at
        # most 600 requests, 120 s).
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=10) as http:
                for _ in range(600):
                    if stop.is_set():
                        return
                    try:
                        got = http.get(f"{gateway}/.well-known/jwks.json")
                        if got.status_code != 200:
                            failures.append(f"{got.status_code} {got.text[:100]}")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    time.sleep(0.1)

        runner = threading.Thread(target=load)
        runner.start()
        try:
            done = project.run("rollout", "auth", "--runtime", "swarm", "--json", timeout=300)
            time.sleep(3)  # the old task's exit, after the rollout converged
        finally:
            stop.set()
            runner.join(timeout=130)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert len(json.loads(done.stdout)["replaced"]) == 1
        assert failures == []
    finally:
        down = project.run("down", "--volumes", "--yes", "--no-backup", "--json", timeout=300)
    assert down.returncode == 0, down.stderr
    assert node_objects(one_node, project.name) == {}


def test_down_volumes_removes_them_on_every_node(tmp_path: Path) -> None:
    """`down --volumes --yes` removes the project's volumes on the worker too (a data volume
    whose node was moved there), not another project's; with that worker's engine stopped,
    `down` says which node it could not reach and what may remain there."""
    require_swarm()
    cluster = start_cluster(2)
    try:
        project = new_project(tmp_path, prefix="sw", images=False, **cluster.env())
        worker = cluster.nodes[1]
        label = "com.docker.compose.project"
        mine = {label: project.name, "com.docker.stack.namespace": project.name}
        cluster.client(worker).volumes.create(f"{project.name}_pgdata", labels=mine)
        cluster.client().volumes.create(f"{project.name}_redisdata", labels=mine)
        other = cluster.client(worker).volumes.create("other_pgdata", labels={label: "other"})

        args = ("down", "--runtime", "swarm", "--volumes", "--yes", "--no-backup", "--json")
        done = project.run(*args, timeout=300)
        assert done.returncode == 0, done.stderr
        removed = json.loads(done.stdout)["removed"]
        assert sorted(removed) == [
            f"volume {project.name}_pgdata on {worker}",
            f"volume {project.name}_redisdata",
        ]
        assert node_objects(cluster, project.name) == {}
        assert [v.name for v in cluster.client(worker).volumes.list()] == [other.name]

        cluster.client(worker).volumes.create(f"{project.name}_pgdata", labels=mine)
        subprocess.run(["docker", "stop", "-t", "2", worker], check=True, capture_output=True)
        done = project.run(*args[:-1], timeout=300)
        assert done.returncode != 0
        assert worker in done.stderr and "docker volume rm" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def three_nodes(one_node: Cluster) -> Cluster:
    """The one-node cluster grown by two workers and a registry (its manager and images
    reused): the tests above that need one node must have run, so this module's last test
    is its only user. Removed with one_node."""
    grow_cluster(one_node, 2)
    return one_node


def _status(project: Project) -> dict[str, dict[str, Any]]:
    done = project.run("status", "--json")
    return {s["name"]: s for s in json.loads(done.stdout)["services"]}


def _wait(what: Callable[[], object], timeout: float, expected: object = True) -> None:
    """Until what() == expected; on timeout the assertion shows what() last said."""
    deadline = time.monotonic() + timeout
    while (got := what()) != expected:
        assert time.monotonic() < deadline, f"timed out: {got!r}"
        time.sleep(2)


def _gateway_url(cluster: Cluster, project: Project) -> str:
    """The gateway answers on the node that runs its task (host mode: no routing mesh)."""
    [task] = [t for t in _status(project)["gateway"]["tasks"] if t["state"] == "running"]
    return f"http://{cluster.address(task['node'])}:{project.env['ATENDEAI_GATEWAY_PORT']}"


def test_three_nodes_spread_reschedule_rollout_down(tmp_path: Path, three_nodes: Cluster) -> None:
    """One manager, two workers; images from the registry on the nodes' network; profile
    `edge`. Two auth replicas land on two nodes; a login through the gateway; `rollout auth`
    (a Swarm update) while requests run through the gateway: none fails; a stopped worker's
    tasks (auth, and the gateway if it ran there) move to the nodes left, `status` is healthy
    again and a login through the gateway works again; `down` leaves nothing on any node."""
    from tests.servers import free_port

    cluster = three_nodes
    project = _project(tmp_path, cluster)
    project.env["ATENDEAI_AUTH_REPLICAS"] = "2"
    project.env["ATENDEAI_PROFILES"] = "edge"
    project.env["ATENDEAI_GATEWAY_PORT"] = str(free_port())
    try:
        done = project.run("up", "--json", timeout=600)
        report = json.loads(done.stdout)
        assert done.returncode == 0, (report.get("failure"), done.stderr)

        auth = _status(project)["auth"]
        assert auth["replicas"] == {"desired": 2, "running": 2}
        nodes = {t["node"] for t in auth["tasks"]}
        assert len(nodes) == 2, auth["tasks"]  # spread, not stacked on one node
        pg = _status(project)["postgres"]
        assert [t["node"] for t in pg["tasks"]] == [cluster.manager]  # the data node

        _seed_user(cluster, project)
        gateway = _gateway_url(cluster, project)
        # Both replicas answer through the gateway (its DNS discovery spans the nodes).
        answered = {_login_at(gateway).status_code for _ in range(6)}
        assert answered == {200}, answered

        # `rollout auth` while requests run through the gateway (bounded: at most 400
        # requests, 120 s): every task replaced, start-first, and no request fails.
        failures: list[str] = []
        served = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal served
            with httpx.Client(timeout=5) as http:
                for _ in range(400):
                    if stop.is_set():
                        return
                    try:
                        got = http.get(f"{gateway}/.well-known/jwks.json")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    else:
                        if got.status_code == 200:
                            served += 1
                        else:
                            failures.append(str(got.status_code))
                    time.sleep(0.2)

        runner = threading.Thread(target=load)
        runner.start()
        try:
            rolled = project.run("rollout", "auth", "--json", timeout=300)
            time.sleep(3)  # the old tasks' exit, after the rollout converged
        finally:
            stop.set()
            runner.join(timeout=130)
        assert rolled.returncode == 0, (rolled.stdout, rolled.stderr)
        result = json.loads(rolled.stdout)
        assert result["runtime"] == "swarm" and len(result["replaced"]) == 2, result
        assert failures == [] and served > 10, (failures, served)

        # A worker that runs auth stops: its tasks are rescheduled on the nodes left.
        nodes = {t["node"] for t in _status(project)["auth"]["tasks"] if t["state"] == "running"}
        worker = next(n for n in sorted(nodes) if n != cluster.manager)
        subprocess.run(["docker", "stop", "-t", "2", worker], check=True, capture_output=True)

        def moved() -> bool:
            status = _status(project)
            running = {
                name: {t["node"] for t in status[name]["tasks"] if t["state"] == "running"}
                for name in ("auth", "gateway")
            }
            return (
                running["auth"] == set(cluster.nodes) - {worker}
                and len(running["gateway"]) == 1
                and worker not in running["gateway"]
            )

        _wait(moved, timeout=180)
        assert project.run("status").returncode == 0
        _wait(lambda: _login_at(_gateway_url(cluster, project)).status_code, 60, expected=200)
        cluster.restart(worker)
    finally:
        down = project.run("down", "--volumes", "--yes", "--no-backup", "--json", timeout=300)
    assert down.returncode == 0, down.stderr
    _wait(lambda: node_objects(cluster, project.name), timeout=120, expected={})

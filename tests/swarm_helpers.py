"""A throwaway Docker Swarm on this machine: N Docker engines in containers plus a registry.

The host engine is shared with other test runs, so it never joins a swarm: every node is
Debian's dockerd inside a container (the stand-in `atendeai-standin/swarm-node`, built by
`scripts/offline-images --swarm`), started with the capabilities it needs instead of
--privileged (refused here), its own data root, on a private bridge network. A registry
(Debian's docker-registry, same image) on that network is where the nodes get images from, as a
real cluster would: the stand-ins are `docker save`d into the manager, tagged
`registry:5000/...` and pushed; workers pull when a task lands on them.

The runtime under test reaches the manager through DOCKER_HOST=tcp://<node address>:2375 on
that bridge (never published on the host). Everything made here carries the label
`atendeai.test.swarm=<name>` and is removed by `Cluster.remove()`: nodes (with their engines'
data), the registry and the network.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.stack_helpers import image_env

ROOT = Path(__file__).parent.parent
NODE_IMAGE = os.environ.get("ATENDEAI_SWARM_NODE_IMAGE") or "atendeai-standin/swarm-node:20.10"
ENTRYPOINT = ROOT / "scripts" / "offline-images.d" / "swarm-node-entrypoint.sh"
LABEL = "atendeai.test.swarm"
REGISTRY = "registry:5000"
# What Debian's dockerd needs in a container on this host (--privileged is refused: the host's
# capability bounding set lacks CAP_SYS_RESOURCE). SYS_PTRACE: without it the node's runc
# cannot join a task running as another user (`exec`: "error executing setns process"), so
# the healthchecks of postgres and redis, which drop root, never run.
NODE_CAPS = ["SYS_ADMIN", "NET_ADMIN", "NET_RAW", "MKNOD", "SYS_PTRACE"]
NODE_SECURITY = ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"]
# Small on purpose: two shared cores on this machine.
NODE_CPUS = 1.0


def swarm_unavailable() -> str | None:
    """Why the swarm tests cannot run here, in one line; None when they can."""
    import docker

    try:
        docker.from_env(timeout=10).images.get(NODE_IMAGE)
    except docker.errors.ImageNotFound:
        return f"image {NODE_IMAGE} is missing (scripts/offline-images --swarm builds it)"
    except Exception as exc:
        return f"no Docker engine: {str(exc).splitlines()[0][:200]}"
    return None


def require_swarm() -> None:
    """Skip with the reason when the swarm tests cannot run here; under
    ATENDEAI_TEST_REQUIRE_DOCKER=1 (CI) fail instead, as the docker tests do."""
    reason = swarm_unavailable()
    if reason is None:
        return
    if os.environ.get("ATENDEAI_TEST_REQUIRE_DOCKER", "") not in ("", "0"):
        pytest.fail(f"ATENDEAI_TEST_REQUIRE_DOCKER is set, but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Cluster:
    name: str
    network: str
    nodes: list[str] = field(default_factory=list)  # container names; [0] is the manager
    addresses: dict[str, str] = field(default_factory=dict)  # node -> address on the bridge
    images: dict[str, str] = field(default_factory=dict)  # ATENDEAI_*_IMAGE -> registry name

    @property
    def manager(self) -> str:
        return self.nodes[0]

    def docker_host(self, node: str | None = None) -> str:
        return f"tcp://{self.addresses[node or self.manager]}:2375"

    def client(self, node: str | None = None) -> Any:
        import docker

        return docker.DockerClient(base_url=self.docker_host(node), timeout=120)

    def env(self) -> dict[str, str]:
        """What `atendeai` needs to deploy onto this swarm: the manager and the image names
        the nodes can pull."""
        return {"DOCKER_HOST": self.docker_host(), **self.images}

    def bridge_gateway(self) -> str:
        """The address this machine has on the nodes' bridge: what a task sees as the client
        when a request from here comes in on a port published in host mode."""
        return subprocess.run(
            [
                "docker",
                "network",
                "inspect",
                "-f",
                "{{(index .IPAM.Config 0).Gateway}}",
                self.network,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def address(self, node: str | None = None) -> str:
        """Where a port published in `host` mode on `node` answers, from this machine."""
        return self.addresses[node or self.manager]

    def restart(self, node: str) -> None:
        """A stopped node back (its address on the bridge may change; its engine rejoins)."""
        subprocess.run(["docker", "start", node], check=True, capture_output=True)
        self.addresses[node] = _address(self.network, node)
        _wait_engine(self, node)

    def remove(self) -> None:
        import docker

        host = docker.from_env()
        for container in host.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"}):
            container.remove(force=True, v=True)
        for network in host.networks.list(filters={"label": f"{LABEL}={self.name}"}):
            network.remove()


def _wait_engine(cluster: Cluster, node: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            cluster.client(node).ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _start_node(cluster: Cluster, node: str, *, command: str = "dockerd") -> None:
    """Through the docker CLI: `systempaths=unconfined` (unmasked /proc, /sys, which dockerd
    needs) is a CLI option with no SDK keyword."""
    engine = command == "dockerd"
    args = ["docker", "run", "-d", "--name", node, "--hostname", node]
    args += ["--network", cluster.network, "--label", f"{LABEL}={cluster.name}"]
    args += ["--cpus", str(NODE_CPUS), "-v", f"{ENTRYPOINT}:/usr/local/bin/{ENTRYPOINT.name}:ro"]
    if engine:
        args += [arg for cap in NODE_CAPS for arg in ("--cap-add", cap)]
        args += [arg for opt in NODE_SECURITY for arg in ("--security-opt", opt)]
        args += ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
        # The engine's data root is the image's anonymous volume (ext4 underneath), so
        # overlay2 is not nested in overlay and layers are not copied as vfs would.
        args += ["-e", "NODE_STORAGE_DRIVER=overlay2", "-e", f"NODE_INSECURE_REGISTRIES={REGISTRY}"]
    else:
        # The nodes find it as `registry` on the bridge.
        args += ["--network-alias", "registry"]
    subprocess.run([*args, NODE_IMAGE, command], check=True, capture_output=True)
    cluster.addresses[node] = _address(cluster.network, node)


def _address(network: str, node: str) -> str:
    return subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
            node,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _push_images(cluster: Cluster, images: dict[str, str], *, registry: bool) -> dict[str, str]:
    """The host's images into the manager (one `docker save` of all, so shared layers travel
    once), and with `registry` tagged for it and pushed there; the names the nodes know them
    by. (A push compresses every layer: minutes on two busy cores, so a one-node swarm, whose
    only node has the images already, goes without.)"""
    names = sorted(set(images.values()))
    save = subprocess.Popen(["docker", "save", *names], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "exec", "-i", cluster.manager, "docker", "load", "-q"],
        stdin=save.stdout,
        check=True,
        capture_output=True,
    )
    assert save.wait() == 0
    return _to_registry(cluster, images) if registry else dict(images)


def _to_registry(cluster: Cluster, images: dict[str, str]) -> dict[str, str]:
    """The manager's copies of `images` tagged for the registry and pushed there."""
    manager = cluster.client()
    pushed: dict[str, str] = {}
    for key, name in images.items():
        target = f"{REGISTRY}/{name}"
        if target not in pushed.values():
            manager.images.get(name).tag(target)
            for line in manager.api.push(target, stream=True, decode=True):
                if "error" in line:
                    raise RuntimeError(f"push {target}: {line['error']}")
        pushed[key] = target
    return pushed


def auth_image() -> str:
    """The auth image built on the host from this checkout (images.py: an unchanged one is not
    rebuilt), under a name of its own so no other test's build retags it under us."""
    import tempfile

    import docker

    from atendeai_ctl.config import load_config
    from atendeai_ctl.stack.images import build_image
    from atendeai_ctl.stack.project import load_stack, prepare_state

    name = "atendeai-swarmtest/auth:latest"
    with tempfile.TemporaryDirectory() as state:
        overrides: dict[str, str | None] = {
            **image_env(),
            "ATENDEAI_PROJECT": "swarmtest",
            "ATENDEAI_STATE_DIR": state,
            "ATENDEAI_AUTH_IMAGE": name,
        }
        spec = load_stack(prepare_state(load_config(overrides)))
        build_image(docker.from_env(), spec, spec.services["auth"], lambda *_: None)
    return name


def start_engine() -> Cluster:
    """One Docker engine in a container, in no swarm yet (for `atendeai swarm init`)."""
    import docker

    name = f"swt{uuid.uuid4().hex[:8]}"
    docker.from_env().networks.create(f"{name}-net", driver="bridge", labels={LABEL: name})
    cluster = Cluster(name, f"{name}-net")
    try:
        _start_node(cluster, f"{name}-n1")
        cluster.nodes.append(f"{name}-n1")
        _wait_engine(cluster, cluster.manager)
    except BaseException:
        cluster.remove()
        raise
    return cluster


def start_cluster(
    nodes: int = 1, *, images: dict[str, str] | None = None, registry: bool | None = None
) -> Cluster:
    """A swarm of `nodes` engines (one manager, the rest workers) with `images` (setting ->
    host image name) in its registry (default: when there are workers to pull from it; else
    loaded into the manager). On any failure everything made so far is removed."""
    import docker

    name = f"swt{uuid.uuid4().hex[:8]}"
    host = docker.from_env()
    host.networks.create(f"{name}-net", driver="bridge", labels={LABEL: name})
    cluster = Cluster(name, f"{name}-net")
    try:
        _start_node(cluster, f"{name}-registry", command="registry")
        for i in range(nodes):
            node = f"{name}-n{i + 1}"
            _start_node(cluster, node)
            cluster.nodes.append(node)
        for node in cluster.nodes:
            _wait_engine(cluster, node)
        manager = cluster.client()
        manager.swarm.init(advertise_addr=cluster.addresses[cluster.manager])
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in cluster.nodes[1:]:
            cluster.client(node).swarm.join(
                remote_addrs=[f"{cluster.addresses[cluster.manager]}:2377"],
                join_token=token,
                advertise_addr=cluster.addresses[node],
            )
        if images:
            pushed = nodes > 1 if registry is None else registry
            cluster.images = _push_images(cluster, images, registry=pushed)
    except BaseException:
        cluster.remove()
        raise
    return cluster


def grow_cluster(cluster: Cluster, workers: int) -> None:
    """A one-node cluster made with its images loaded (start_cluster(1, images=...)) grown to
    1 + `workers` nodes, its images pushed to its registry, as start_cluster(n) would
    make it: the manager and its images are reused, which saves starting an engine and
    loading some 800 MB into it (half a minute of CI). Afterwards it is a one-node cluster no
    more: grow it only for the last tests that use it."""
    # start_cluster started the registry already (unused until now).
    new = [f"{cluster.name}-n{len(cluster.nodes) + 1 + i}" for i in range(workers)]
    for node in new:
        _start_node(cluster, node)
        cluster.nodes.append(node)
    for node in new:
        _wait_engine(cluster, node)
    manager = cluster.client()
    token = manager.swarm.attrs["JoinTokens"]["Worker"]
    for node in new:
        cluster.client(node).swarm.join(
            remote_addrs=[f"{cluster.addresses[cluster.manager]}:2377"],
            join_token=token,
            advertise_addr=cluster.addresses[node],
        )
    cluster.images = _to_registry(cluster, cluster.images)


def stack_images() -> dict[str, str]:
    """Setting -> host image for the stack's default services and the edge gateway: the
    stand-ins and this checkout's auth image."""
    found = image_env()
    keys = ("ATENDEAI_POSTGRES_IMAGE", "ATENDEAI_REDIS_IMAGE", "ATENDEAI_HAPROXY_IMAGE")
    wanted = {k: found[k] for k in keys if k in found}
    wanted["ATENDEAI_AUTH_IMAGE"] = auth_image()
    return wanted


def node_objects(cluster: Cluster, project: str) -> dict[str, list[str]]:
    """What the project left on every node: containers, volumes and networks by label or name,
    and, on the manager, services, secrets and configs."""
    found: dict[str, list[str]] = {}
    label = {"label": f"com.docker.stack.namespace={project}"}
    for node in cluster.nodes:
        client = cluster.client(node)
        found[f"{node} containers"] = [c.name for c in client.containers.list(all=True)]
        found[f"{node} volumes"] = [
            v.name for v in client.volumes.list() if v.name.startswith(f"{project}_")
        ]
        found[f"{node} networks"] = [
            n.name for n in client.networks.list() if n.name.startswith(project)
        ]
    manager = cluster.client()
    found["services"] = [s.name for s in manager.services.list(filters=label)]
    found["secrets"] = [s.name for s in manager.secrets.list(filters=label)]
    found["configs"] = [c.name for c in manager.configs.list(filters=label)]
    return {k: v for k, v in found.items() if v}

"""The swarm itself: is this engine a manager, which node holds the data, `swarm init`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.docker_runtime import connect
from atendeai_ctl.stack.engine import docker_host
from atendeai_ctl.stack.swarm_convert import DATA_LABEL

if TYPE_CHECKING:
    import docker


def manager_node(client: docker.DockerClient) -> str:
    """This engine's node id; it must be a swarm manager (only managers take services)."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        raise AtendeaiError(
            "unavailable",
            f"the Docker engine at {docker_host()} is not part of a swarm",
            "run `atendeai swarm init` (a one-node swarm) or point DOCKER_HOST at a manager",
        )
    if not swarm.get("ControlAvailable"):
        raise AtendeaiError(
            "unavailable",
            f"the Docker engine at {docker_host()} is a swarm worker, not a manager",
            "point DOCKER_HOST at a manager (`docker node ls` on one lists them)",
        )
    return str(swarm["NodeID"])


def ensure_data_node(client: docker.DockerClient) -> str:
    """The node postgres and redis are pinned to: one labelled atendeai.data=true, else this
    manager (labelled now). Its hostname."""
    node_id = manager_node(client)
    nodes = client.api.nodes()
    labelled = [n for n in nodes if (n["Spec"].get("Labels") or {}).get(DATA_LABEL) == "true"]
    if labelled:
        return str(labelled[0]["Description"]["Hostname"])
    node = client.api.inspect_node(node_id)
    spec = dict(node["Spec"])
    spec["Labels"] = {**(spec.get("Labels") or {}), DATA_LABEL: "true"}
    client.api.update_node(node_id, node["Version"]["Index"], spec)
    return str(node["Description"]["Hostname"])


def init_swarm(advertise_addr: str | None = None) -> dict[str, object]:
    """A one-node swarm on the engine DOCKER_HOST names (kept if it is already a manager),
    with this node as the data node."""
    from docker.errors import APIError

    client = connect()
    local = (client.info().get("Swarm") or {}).get("LocalNodeState")
    created = local != "active"
    if created:
        try:
            client.swarm.init(advertise_addr=advertise_addr)
        except APIError as exc:
            raise AtendeaiError(
                "failed",
                f"swarm init refused: {exc.explanation or exc}",
                "pass --advertise-addr with the address other nodes reach this one at",
            ) from exc
    node_id = manager_node(client)
    data = ensure_data_node(client)
    info = client.info()["Swarm"]
    return {
        "schema": 1,
        "created": created,
        "node_id": node_id,
        "manager_address": (info.get("RemoteManagers") or [{}])[0].get("Addr"),
        "data_node": data,
        "engine": docker_host(),
    }


@dataclass(frozen=True)
class NodeEngine:
    """Another node of the swarm, and where its engine answers (None: no way to reach it)."""

    id: str
    hostname: str
    address: str
    state: str
    url: str | None


def other_engines(client: docker.DockerClient) -> list[NodeEngine]:
    """The swarm's other nodes, each with its engine's address formed the way DOCKER_HOST
    reaches this manager's: the same scheme, port and TLS settings with the node's own
    address (`tcp://manager:2376` -> `tcp://<node>:2376`, `ssh://ops@manager` ->
    `ssh://ops@<node>`). Swarm keeps no engine API address for a node, only the one it
    advertises to the others, which is the machine's. Through a local socket another machine
    cannot be reached (url None)."""
    this = manager_node(client)
    where = urlsplit(docker_host())
    found = []
    for node in client.api.nodes():
        if node["ID"] == this:
            continue
        status = node.get("Status") or {}
        address = str(status.get("Addr") or "")
        url = None
        if where.scheme in ("tcp", "ssh", "http", "https") and address:
            user = f"{where.username}@" if where.username else ""
            port = f":{where.port}" if where.port else ""
            url = f"{where.scheme}://{user}{address}{port}"
        hostname = str((node.get("Description") or {}).get("Hostname") or node["ID"][:12])
        found.append(NodeEngine(node["ID"], hostname, address, str(status.get("State") or ""), url))
    return found


def connect_node(node: NodeEngine, timeout: int = 10) -> docker.DockerClient | None:
    """A client for another node's engine (DOCKER_HOST swapped, DOCKER_TLS_VERIFY and
    DOCKER_CERT_PATH kept), or None when it does not answer."""
    import os

    import docker
    from docker.errors import DockerException

    if node.url is None or node.state == "down":
        return None
    try:
        client = docker.from_env(
            environment={**os.environ, "DOCKER_HOST": node.url}, timeout=timeout
        )
        client.ping()
    except DockerException:
        return None
    return client

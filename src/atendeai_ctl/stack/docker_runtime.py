"""The Docker SDK runtime: containers, one network and named volumes, labelled the Compose way.

Labels follow docker compose (com.docker.compose.project/service/container-number/oneoff/
config-hash) so `docker compose -p PROJECT ps` sees the same containers, and so that nothing
outside the project's labels is ever touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.images import ensure_images
from atendeai_ctl.stack.ports import port_holder, port_is_free
from atendeai_ctl.stack.runtime import (
    EnsureResult,
    Health,
    ProbeResult,
    Progress,
    PublishedPort,
    ServiceStatus,
)
from atendeai_ctl.stack.spec import Service, StackSpec

if TYPE_CHECKING:
    import docker

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
CONFIG_HASH = "com.docker.compose.config-hash"
ONEOFF = "com.docker.compose.oneoff"


def connect(timeout: int = 60) -> docker.DockerClient:
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise AtendeaiError(
            "unavailable",
            f"cannot reach the Docker engine at {where}",
            "start Docker (dockerd / Docker Desktop) or check DOCKER_HOST",
        ) from exc
    return client


def _duration_ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class DockerRuntime:
    name = "docker"

    def __init__(self, project: str, client: docker.DockerClient | None = None) -> None:
        self.project = project
        self.client = client or connect()
        self.api = self.client.api
        self._image_ids: dict[str, str] = {}

    # names -------------------------------------------------------------------------------
    def container_name(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def volume_name(self, volume: str) -> str:
        return f"{self.project}_{volume}"

    def _labels(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {PROJECT: self.project, **(extra or {})}

    def _containers(self) -> list[dict[str, Any]]:
        return list(self.api.containers(all=True, filters={"label": [f"{PROJECT}={self.project}"]}))

    def _container(self, service: str) -> dict[str, Any] | None:
        found = self.api.containers(
            all=True,
            filters={"label": [f"{PROJECT}={self.project}", f"{SERVICE}={service}"]},
        )
        return found[0] if found else None

    # preflight ---------------------------------------------------------------------------
    def preflight(self, spec: StackSpec, progress: Progress) -> None:
        self._image_ids = ensure_images(self.client, spec, progress)
        self._check_ports(spec)

    def _check_ports(self, spec: StackSpec) -> None:
        ours = {
            (binding.get("HostIp", ""), int(binding["HostPort"]))
            for c in self._containers()
            if c["State"] == "running"
            for binding in self._bindings(c["Id"])
        }
        for service in spec.services.values():
            for port in service.ports:
                if (port.host_ip, port.host_port) in ours or port_is_free(
                    port.host_ip, port.host_port
                ):
                    continue
                who = self._docker_holder(port.host_port) or port_holder(port.host_port)
                raise AtendeaiError(
                    "conflict",
                    f"port {port.host_ip}:{port.host_port} for service {service.name} is in use"
                    + (f" by {who}" if who else ""),
                    f"stop it, or set ATENDEAI_{service.name.upper()}_PORT to a free port",
                )

    def _bindings(self, container_id: str) -> list[dict[str, str]]:
        ports = self.api.inspect_container(container_id)["HostConfig"].get("PortBindings") or {}
        return [b for bindings in ports.values() for b in (bindings or [])]

    def _docker_holder(self, host_port: int) -> str | None:
        for c in self.api.containers():
            for p in c.get("Ports", []):
                if p.get("PublicPort") == host_port:
                    project = c.get("Labels", {}).get(PROJECT)
                    name = c["Names"][0].lstrip("/")
                    return f"container {name}" + (f" (project {project})" if project else "")
        return None

    # resources ---------------------------------------------------------------------------
    def prepare(self, spec: StackSpec) -> None:
        from docker.errors import NotFound

        try:
            net = self.api.inspect_network(spec.network)
            owner = (net.get("Labels") or {}).get(PROJECT)
            if owner != self.project:
                raise AtendeaiError(
                    "conflict",
                    f"network {spec.network} exists and belongs to "
                    + (f"project {owner}" if owner else "something outside atendeai"),
                    "remove it (docker network rm) or choose another ATENDEAI_PROJECT",
                )
        except NotFound:
            self.api.create_network(
                spec.network,
                driver="bridge",
                labels=self._labels({"com.docker.compose.network": "default"}),
            )
        for volume in spec.volumes:
            name = self.volume_name(volume)
            try:
                self.api.inspect_volume(name)
            except NotFound:
                self.api.create_volume(
                    name, labels=self._labels({"com.docker.compose.volume": volume})
                )

    # one service -------------------------------------------------------------------------
    def _hash(self, service: Service) -> str:
        import hashlib

        image_id = self._image_ids.get(service.image) or self.api.inspect_image(service.image)["Id"]
        return hashlib.sha256(f"{service.config_hash()}:{image_id}".encode()).hexdigest()

    def ensure(self, spec: StackSpec, service: Service) -> EnsureResult:
        wanted = self._hash(service)
        existing = self._container(service.name)
        if existing is not None:
            if existing["Labels"].get(CONFIG_HASH) == wanted:
                return "unchanged"
            self.api.remove_container(existing["Id"], force=True, v=False)
        self._create(spec, service, wanted)
        return "created" if existing is None else "recreated"

    def _create(self, spec: StackSpec, service: Service, config_hash: str) -> None:
        binds = [
            f"{self.volume_name(m.source) if m.kind == 'volume' else m.source}:{m.target}:"
            + ("ro" if m.read_only else "rw")
            for m in service.mounts
        ]
        port_bindings = {
            f"{p.target}/{p.protocol}": (p.host_ip, p.host_port) for p in service.ports
        }
        restart = service.restart.split(":")
        policy: dict[str, Any] = {"Name": "" if restart[0] == "no" else restart[0]}
        if restart[0] == "on-failure" and len(restart) == 2:
            policy["MaximumRetryCount"] = int(restart[1])
        host_config = self.api.create_host_config(
            binds=binds, port_bindings=port_bindings, restart_policy=policy
        )
        networking = self.api.create_networking_config(
            {spec.network: self.api.create_endpoint_config(aliases=[service.name])}
        )
        health = None
        if service.healthcheck is not None:
            hc = service.healthcheck
            health = {
                "test": list(hc.test),
                "interval": _duration_ns(hc.interval),
                "timeout": _duration_ns(hc.timeout),
                "retries": hc.retries,
                "start_period": _duration_ns(hc.start_period),
            }
        labels = {
            **dict(service.labels),
            PROJECT: self.project,
            SERVICE: service.name,
            "com.docker.compose.container-number": "1",
            ONEOFF: "False",
            CONFIG_HASH: config_hash,
            "com.docker.compose.project.config_files": str(spec.path),
            "com.docker.compose.project.working_dir": str(spec.path.parent),
            "com.docker.compose.depends_on": ",".join(
                f"{dep}:{cond}:false" for dep, cond in service.depends_on
            ),
            "com.docker.compose.image": self._image_ids.get(service.image, service.image),
        }
        self.api.create_container(
            image=service.image,
            name=self.container_name(service.name),
            command=list(service.command) if service.command is not None else None,
            entrypoint=list(service.entrypoint) if service.entrypoint is not None else None,
            environment=service.env,
            user=service.user,
            working_dir=service.working_dir,
            stop_signal=service.stop_signal,
            stop_timeout=int(service.stop_grace_period) if service.stop_grace_period else None,
            labels=labels,
            host_config=host_config,
            networking_config=networking,
            healthcheck=health,
            ports=[(p.target, p.protocol) for p in service.ports],
            detach=True,
        )

    def start(self, service: Service) -> None:
        container = self._container(service.name)
        if container is None:
            raise AtendeaiError("not_found", f"no container for service {service.name}")
        self.api.start(container["Id"])

    def probe(self, service: Service) -> ProbeResult:
        container = self._container(service.name)
        if container is None or service.healthcheck is None:
            return ProbeResult(False, "no container" if container is None else "no healthcheck")
        test = service.healthcheck.test
        cmd = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
        from docker.errors import APIError

        try:
            exec_id = self.api.exec_create(container["Id"], cmd, user=service.user or "")["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id)["ExitCode"]
        except APIError as exc:
            return ProbeResult(False, str(exc.explanation or exc))
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        return ProbeResult(code == 0, text.strip())

    def inspect(self, service: Service) -> ServiceStatus:
        container = self._container(service.name)
        if container is None:
            return ServiceStatus(service.name, "missing")
        info = self.api.inspect_container(container["Id"])
        state = info["State"]
        health: Health = "none"
        if state.get("Health"):
            health = state["Health"]["Status"]
        ports = [
            PublishedPort(b.get("HostIp", ""), int(b["HostPort"]), int(spec.split("/")[0]))
            for spec, bindings in (info["HostConfig"].get("PortBindings") or {}).items()
            for b in (bindings or [])
        ]
        running = state["Status"] == "running"
        return ServiceStatus(
            name=service.name,
            state=state["Status"],
            health=health if running else "none",
            ports=ports,
            id=info["Id"][:12],
            started_at=state.get("StartedAt")
            if state.get("StartedAt", "").startswith("2")
            else None,
            exit_code=None if running else state.get("ExitCode"),
            restarts=int(info.get("RestartCount") or 0),
        )

    def health_log(self, service: Service) -> str:
        container = self._container(service.name)
        if container is None:
            return ""
        health = self.api.inspect_container(container["Id"])["State"].get("Health") or {}
        entries = health.get("Log") or []
        return entries[-1].get("Output", "").strip() if entries else ""

    def logs(self, service: str, *, tail: int | None, follow: bool) -> Iterator[bytes]:
        container = self._container(service)
        if container is None:
            raise AtendeaiError(
                "not_found", f"service {service} has no container", "run `atendeai up` first"
            )
        stream = self.api.logs(
            container["Id"], stream=True, follow=follow, tail="all" if tail is None else tail
        )
        yield from stream

    def down(self, spec: StackSpec, *, volumes: bool) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        from atendeai_ctl.stack.graph import levels

        containers = {c["Labels"].get(SERVICE, ""): c for c in self._containers()}
        removed: list[str] = []
        order = list(reversed(levels(spec)))
        leftovers = [name for name in containers if name not in spec.services]
        if leftovers:
            order.insert(0, leftovers)

        def stop(name: str) -> str | None:
            container = containers.get(name)
            if container is None:
                return None
            if container["State"] in ("running", "restarting", "paused"):
                self.api.stop(container["Id"])
            self.api.remove_container(container["Id"], force=True)
            return str(container["Names"][0].lstrip("/"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            for level in order:
                removed += [n for n in pool.map(stop, level) if n]
        for net in self.api.networks(filters={"label": [f"{PROJECT}={self.project}"]}):
            self.api.remove_network(net["Id"])
            removed.append(f"network {net['Name']}")
        if volumes:
            found = self.api.volumes(filters={"label": [f"{PROJECT}={self.project}"]})
            for vol in found.get("Volumes") or []:
                self.api.remove_volume(vol["Name"])
                removed.append(f"volume {vol['Name']}")
        return removed

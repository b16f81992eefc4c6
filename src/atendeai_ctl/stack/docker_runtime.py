"""The Docker SDK runtime: containers, one network and named volumes, labelled the Compose way.

Labels follow docker compose (com.docker.compose.project/service/container-number/oneoff/
config-hash) so `docker compose -p PROJECT ps` sees the same containers, and so that nothing
outside the project's labels is ever touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.engine import Engine, docker_host, unreachable
from atendeai_ctl.stack.ports import port_conflict, port_holder, port_is_free
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
NUMBER = "com.docker.compose.container-number"
# docker-compose 1.x compares this label with 1.21.0 on every container of the project and
# crashes when it is missing; it names the Compose generation whose labels these follow.
VERSION = "com.docker.compose.version"
COMPOSE_VERSION = "2.0.0"


def connect(timeout: int = 60) -> docker.DockerClient:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise unreachable(docker_host()) from exc
    return client


def engine_answers(timeout: float) -> bool:
    """A ping, through the stdlib client when it can (no SDK import), else the SDK."""
    engine = Engine.from_env(timeout=timeout)
    try:
        if engine is not None:
            engine.ping()
        else:
            connect(timeout=int(timeout)).close()
    except AtendeaiError:
        return False
    return True


def _duration_ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class _LazyClient:
    """Stands for the SDK client, which is made (imported, connected) only if a pull or a build
    needs it: an unchanged `up` reads through the engine and never does."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime.client, name)


class DockerRuntime:
    name = "docker"

    def __init__(self, project: str, client: docker.DockerClient | None = None) -> None:
        self.project = project
        self._client = client
        # Reads go through the stdlib client (see engine.py) when the engine is a local socket
        # and no client was handed in; the SDK is imported only to change something.
        self.engine = Engine.from_env() if client is None else None
        self._image_ids: dict[str, str] = {}
        self._network_id: str | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = connect()
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    # names -------------------------------------------------------------------------------
    def container_name(self, service: str, number: int = 1) -> str:
        return f"{self.project}-{service}-{number}"

    def volume_name(self, volume: str) -> str:
        return f"{self.project}_{volume}"

    def _labels(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {PROJECT: self.project, VERSION: COMPOSE_VERSION, **(extra or {})}

    def _list(self, labels: list[str]) -> list[dict[str, Any]]:
        if self.engine is not None:
            return self.engine.containers(labels)
        return list(self.api.containers(all=True, filters={"label": labels}))

    def _inspect(self, container_id: str) -> dict[str, Any] | None:
        if self.engine is not None:
            return self.engine.inspect_container(container_id)
        from docker.errors import NotFound

        try:
            return dict(self.api.inspect_container(container_id))
        except NotFound:
            return None

    def _containers(self) -> list[dict[str, Any]]:
        return self._list([f"{PROJECT}={self.project}"])

    def _container(self, service: str, number: int = 1) -> dict[str, Any] | None:
        found = self._list(
            [f"{PROJECT}={self.project}", f"{SERVICE}={service}", f"{NUMBER}={number}"]
        )
        return found[0] if found else None

    # preflight ---------------------------------------------------------------------------
    def preflight(self, spec: StackSpec, progress: Progress) -> None:
        from atendeai_ctl.stack.images import ensure_images

        lazy = cast("docker.DockerClient", _LazyClient(self))
        self._image_ids = ensure_images(lazy, spec, progress, self.engine)
        self._check_ports(spec)

    def _check_ports(self, spec: StackSpec) -> None:
        ours = {
            (binding.get("HostIp", ""), int(binding["HostPort"]))
            for c in self._containers()
            if c["State"] == "running"
            for binding in self._bindings(c["Id"])
        }
        for service in (c for s in spec.services.values() for c in s.instances()):
            for port in service.ports:
                if (port.host_ip, port.host_port) in ours or port_is_free(
                    port.host_ip, port.host_port
                ):
                    continue
                who = self._docker_holder(port.host_port) or port_holder(port.host_port)
                raise port_conflict(
                    port.host_ip, port.host_port, service.name, service.replica, who
                )

    def _bindings(self, container_id: str) -> list[dict[str, str]]:
        info = self._inspect(container_id) or {"HostConfig": {}}
        ports = info["HostConfig"].get("PortBindings") or {}
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
        self._network_id = self._network(spec.network, spec.subnet)
        if any(s.ipv4_address for s in spec.services.values()):
            self._check_subnet(spec.network, self._network_id, spec.subnet)
        for volume in spec.volumes:
            name = self.volume_name(volume)
            if not self._volume_exists(name):
                self.api.create_volume(
                    name, labels=self._labels({"com.docker.compose.volume": volume})
                )

    def _volume_exists(self, name: str) -> bool:
        if self.engine is not None:
            return self.engine.inspect_volume(name) is not None
        from docker.errors import NotFound

        try:
            self.api.inspect_volume(name)
        except NotFound:
            return False
        return True

    def _network(self, name: str, subnet: str | None = None) -> str:
        """The project's network, by id. The engine allows several networks of one name (two
        `up` racing past the engine's best-effort duplicate check, or another tool), and then
        refuses to attach a container by that name ("network is ambiguous"); so every racer
        picks the same one, removes the unused others, and attaches containers by id."""
        for attempt in range(3):
            same = (
                self.engine.networks(name)
                if self.engine is not None
                else [n for n in self.api.networks(names=[name]) if n.get("Name") == name]
            )
            ours = [n for n in same if (n.get("Labels") or {}).get(PROJECT) == self.project]
            if same and not ours:
                owner = (same[0].get("Labels") or {}).get(PROJECT)
                raise AtendeaiError(
                    "conflict",
                    f"network {name} exists and belongs to "
                    + (f"project {owner}" if owner else "something outside atendeai"),
                    "remove it (docker network rm) or choose another ATENDEAI_PROJECT",
                )
            if ours:
                return self._keep_one(ours)
            if attempt == 2:
                break
            from docker.errors import APIError

            try:
                self.api.create_network(
                    name,
                    driver="bridge",
                    labels=self._labels({"com.docker.compose.network": "default"}),
                    check_duplicate=True,
                    ipam=_ipam(subnet),
                )
            except APIError as exc:
                if "overlap" in str(exc):
                    raise AtendeaiError(
                        "conflict",
                        f"network {name}: subnet {subnet} overlaps another network",
                        "set ATENDEAI_SUBNET to a free /24 (docker network ls shows the others)",
                    ) from exc
                if exc.status_code != 409:
                    raise
            # Listed again rather than trusting the id: a racing twin may exist by now.
        raise AtendeaiError("failed", f"network {name} could not be created")

    def _check_subnet(self, name: str, network_id: str, subnet: str | None) -> None:
        """A fixed address (the gateway's) needs the network made with the file's subnet; a
        network from before the file set one cannot give it, so say so before anything starts."""
        pools = (self.api.inspect_network(network_id).get("IPAM") or {}).get("Config") or []
        have = [str(p.get("Subnet")) for p in pools if p.get("Subnet")]
        if subnet not in have:
            raise AtendeaiError(
                "conflict",
                f"network {name} has subnet {', '.join(have) or 'chosen by the engine'}, not "
                f"{subnet} (ATENDEAI_SUBNET): the gateway's fixed address needs the latter",
                "run `atendeai down` (data is kept) and `up` again: the network is made anew "
                "with that subnet",
            )

    def _keep_one(self, ours: list[dict[str, Any]]) -> str:
        if len(ours) == 1:
            return str(ours[0]["Id"])
        import contextlib

        from docker.errors import APIError

        details = [self.api.inspect_network(n["Id"]) for n in ours]
        # The one containers use, else the oldest: every racer picks the same.
        details.sort(key=lambda n: (not n.get("Containers"), n.get("Created", ""), n["Id"]))
        for extra in details[1:]:
            if not extra.get("Containers"):
                # One being attached this instant stays; attaching by id still works.
                with contextlib.suppress(APIError):
                    self.api.remove_network(extra["Id"])
        return str(details[0]["Id"])

    # one service -------------------------------------------------------------------------
    def _hash(self, service: Service) -> str:
        import hashlib

        image_id = self._image_ids.get(service.image) or self.api.inspect_image(service.image)["Id"]
        return hashlib.sha256(f"{service.config_hash()}:{image_id}".encode()).hexdigest()

    def ensure(self, spec: StackSpec, service: Service) -> EnsureResult:
        wanted = self._hash(service)
        existing = self._container(service.name, service.replica)
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
        log_config = None
        if service.logging is not None:
            # Compose's `logging:`; no driver: the engine's default, with these options.
            log_config = {
                "Type": service.logging.driver or "",
                "Config": dict(service.logging.options),
            }
        host_config = self.api.create_host_config(
            binds=binds, port_bindings=port_bindings, restart_policy=policy, log_config=log_config
        )
        networking = self.api.create_networking_config(
            {
                self._network_id or spec.network: self.api.create_endpoint_config(
                    aliases=[service.name], ipv4_address=service.ipv4_address
                )
            }
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
            VERSION: COMPOSE_VERSION,
            SERVICE: service.name,
            NUMBER: str(service.replica),
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
            name=self.container_name(service.name, service.replica),
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
        container = self._container(service.name, service.replica)
        if container is None:
            raise AtendeaiError("not_found", f"no container for service {service.instance_name}")
        self.api.start(container["Id"])

    def probe(self, service: Service) -> ProbeResult:
        from_host = self._probe_from_host(service)
        if from_host is not None:
            return from_host
        container = self._container(service.name, service.replica)
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

    @staticmethod
    def _probe_from_host(service: Service) -> ProbeResult | None:
        """The healthcheck's question asked through the published port instead of by exec,
        where the local runtime's probe (`x-atendeai.local.probe`) asks the same thing:
        HTTP readiness, Redis PING, PostgreSQL accepting connections (pg_isready's test).
        An exec is a process started in the container: the auth healthcheck's Python, polled
        every 50-250 ms while auth itself starts, took the CPU auth needed (on 2 cores,
        seconds of a warm `up`); and a `status` right after `up`, when Docker's first
        healthcheck has not run yet, spent most of its time in two execs. Anything else
        (Sentinel's quorum and replica checks, a port of the local runtime's own) stays
        exec'd."""
        local = (service.extensions.get("x-atendeai") or {}).get("local") or {}
        check = local.get("probe") if isinstance(local, dict) else None
        if not isinstance(check, dict) or not service.ports:
            return None
        if "port" in check:  # a port of the local runtime's own (the gateway's internal one)
            return None
        from atendeai_ctl.config import connect_host
        from atendeai_ctl.stack import probes

        port = service.ports[0]
        host = connect_host(port.host_ip)
        env = service.env
        if "http" in check:
            return probes.http_get(f"http://{host}:{port.host_port}{check['http']}")
        if str(check.get("redis", "")).upper() == "PING":
            password = env.get("REDIS_PASSWORD") or None
            return probes.redis_command(host, port.host_port, password=password, command="PING")
        if "sql" in check:
            return probes.pg_accepting(
                host,
                port.host_port,
                user=env.get("POSTGRES_USER", "postgres"),
                dbname=env.get("POSTGRES_DB", "postgres"),
            )
        return None

    def inspect(self, service: Service) -> ServiceStatus:
        container = self._container(service.name, service.replica)
        info = self._inspect(container["Id"]) if container is not None else None
        if info is None:
            return ServiceStatus(
                service.instance_name, "missing", service=service.name, replica=service.replica
            )
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
            name=service.instance_name,
            service=service.name,
            replica=service.replica,
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
        container = self._container(service.name, service.replica)
        if container is None:
            return ""
        health = (self._inspect(container["Id"]) or {"State": {}})["State"].get("Health") or {}
        entries = health.get("Log") or []
        return entries[-1].get("Output", "").strip() if entries else ""

    def logs(self, service: str, *, tail: int | None, follow: bool) -> Iterator[bytes]:
        container = self._container(service)
        name, _, number = service.rpartition("-")
        if container is None and name and number.isdigit():
            container = self._container(name, int(number))  # `auth-2`: replica 2
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

        containers: dict[str, list[dict[str, Any]]] = {}
        for found in self._containers():
            containers.setdefault(found["Labels"].get(SERVICE, ""), []).append(found)
        removed: list[str] = []
        order = list(reversed(levels(spec)))
        leftovers = [name for name in containers if name not in spec.services]
        if leftovers:
            order.insert(0, leftovers)

        def stop(container: dict[str, Any]) -> str:
            if container["State"] in ("running", "restarting", "paused"):
                self.api.stop(container["Id"])
            self.api.remove_container(container["Id"], force=True)
            return str(container["Names"][0].lstrip("/"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            for level in order:
                copies = [c for name in level for c in containers.get(name, [])]
                removed += sorted(pool.map(stop, copies))
        for net in self.api.networks(filters={"label": [f"{PROJECT}={self.project}"]}):
            self.api.remove_network(net["Id"])
            removed.append(f"network {net['Name']}")
        if volumes:
            found = self.api.volumes(filters={"label": [f"{PROJECT}={self.project}"]})
            for vol in found.get("Volumes") or []:
                self.api.remove_volume(vol["Name"])
                removed.append(f"volume {vol['Name']}")
        return removed

    # replicas ----------------------------------------------------------------------------
    def replicas(self, service: Service) -> list[int]:
        found = self._list([f"{PROJECT}={self.project}", f"{SERVICE}={service.name}"])
        numbers = {int(c["Labels"].get(NUMBER) or 1) for c in found}
        return sorted(numbers)

    def remove(self, service: Service, *, grace: float) -> None:
        container = self._container(service.name, service.replica)
        if container is None:
            return
        from docker.errors import APIError, NotFound

        try:
            if container["State"] in ("running", "restarting", "paused"):
                self.api.stop(container["Id"], timeout=max(1, round(grace)))
            self.api.remove_container(container["Id"], force=True)
        except NotFound:
            return
        except APIError as exc:
            raise AtendeaiError(
                "failed", f"cannot remove {service.instance_name}: {exc.explanation or exc}"
            ) from exc

    def address(self, service: Service) -> str | None:
        """The copy's address on the project network and its first container port: what the
        gateway's DNS-found server slot for it holds."""
        container = self._container(service.name, service.replica)
        info = self._inspect(container["Id"]) if container is not None else None
        if info is None or not service.ports:
            return None
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        for network in networks.values():
            if network.get("IPAddress"):
                return f"{network['IPAddress']}:{service.ports[0].target}"
        return None

    def admin(self, service: Service, port: int, command: str) -> str | None:
        """Through an exec of bash's /dev/tcp in the container: the port is internal (not
        published), and the gateway image has bash but no socat or nc. The command goes in
        as an argument, never into the script."""
        container = self._container(service.name, service.replica)
        if container is None or container["State"] != "running":
            return None
        script = f'exec 3<>/dev/tcp/127.0.0.1/{int(port)} && printf "%s\\n" "$1" >&3 && cat <&3'
        from docker.errors import APIError

        try:
            exec_id = self.api.exec_create(container["Id"], ["bash", "-c", script, "-", command])
            output = self.api.exec_start(exec_id["Id"])
            code = self.api.exec_inspect(exec_id["Id"])["ExitCode"]
        except APIError:
            return None
        if code != 0:
            return None
        return output.decode(errors="replace") if isinstance(output, bytes) else str(output)


def _ipam(subnet: str | None) -> Any:
    """A fixed subnet when the compose file sets one (so a service can hold a fixed address);
    else the engine picks, as before."""
    if subnet is None:
        return None
    from docker.types import IPAMConfig, IPAMPool

    return IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])

"""The Docker Swarm runtime: the same compose file as Swarm services, through docker-py.

swarm_convert.py turns each compose service into a service spec; this module drives the
engine with them, over the Runtime interface, so order and readiness come from the
orchestrator as on one engine (Swarm ignores `depends_on`): `ensure` builds the spec and says
whether it changed, `start` creates or updates the service (a job: a new run), `probe` says
converged (every up-to-date task running, hence healthy; an update of ours completed), and a
rolled-back update is raised as a failure with the task errors (`docker stack deploy` exits 0
there, docker/cli#6752). `status` reports per service desired/running replicas and per task
node, state and health. swarm_cluster.py: the swarm itself (`swarm init`, the data node).
Objects carry `com.docker.stack.namespace` (so `docker stack ps PROJECT` lists them) and the
Compose project labels; nothing without them is ever touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.docker_runtime import PROJECT, SERVICE, connect
from atendeai_ctl.stack.runtime import (
    EnsureResult,
    Health,
    ProbeResult,
    Progress,
    PublishedPort,
    ServiceStatus,
    State,
)
from atendeai_ctl.stack.spec import Service, StackSpec
from atendeai_ctl.stack.swarm_cluster import ensure_data_node, manager_node
from atendeai_ctl.stack.swarm_convert import (
    NAMESPACE,
    SECRET_KEY,
    SPEC_HASH,
    Blob,
    labels,
    objects,
    service_spec,
)

if TYPE_CHECKING:
    import docker

    from atendeai_ctl.config import Config
    from atendeai_ctl.stack.rollout import RolloutReport

ROLLED_BACK = frozenset({"rollback_started", "rollback_paused", "rollback_completed", "paused"})
FAILED_TASK = frozenset({"failed", "rejected", "orphaned"})


@dataclass
class TaskStatus:
    id: str
    slot: int | None
    node: str
    state: str
    desired: str
    health: Health
    error: str
    exit_code: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "slot": self.slot,
            "node": self.node,
            "state": self.state,
            "desired_state": self.desired,
            "health": self.health,
            "error": self.error,
            "exit_code": self.exit_code,
        }


@dataclass
class SwarmServiceStatus(ServiceStatus):
    desired: int = 0
    running: int = 0
    update: str | None = None
    tasks: list[TaskStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            **super().to_dict(),
            "replicas": {"desired": self.desired, "running": self.running},
            "update_state": self.update,
            "tasks": [t.to_dict() for t in self.tasks],
        }


class SwarmRuntime:
    name = "swarm"

    def __init__(
        self,
        project: str,
        secrets: Mapping[str, str],
        client: docker.DockerClient | None = None,
    ) -> None:
        self.project = project
        self.secrets = dict(secrets)
        self._client = client
        self._images: dict[str, str] = {}
        self._blobs: dict[str, list[Blob]] = {}  # service -> its secrets
        self._configs: dict[str, list[Blob]] = {}  # service -> its configs
        self._ids: dict[str, str] = {}  # secret/config name -> id
        self._pending: dict[str, tuple[dict[str, Any], str]] = {}  # service -> (spec, hash)
        self._updated: dict[str, str] = {}  # service -> UpdateStatus.StartedAt before our update
        self._nodes: dict[str, str] = {}
        self._stack: StackSpec | None = None  # the spec `up` deploys (for a job's done_when)

    @classmethod
    def from_config(cls, config: Config) -> SwarmRuntime:
        from atendeai_ctl.state import SECRET_NAMES

        found = {key: config.get(key) or "" for key in SECRET_NAMES}
        return cls(config.project, {k: v for k, v in found.items() if v})

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = connect()
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def service_name(self, service: str) -> str:
        return f"{self.project}_{service}"

    def volume_name(self, volume: str) -> str:
        return f"{self.project}_{volume}"

    def _labels(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return labels(self.project, extra)

    # preflight ---------------------------------------------------------------------------
    def preflight(self, spec: StackSpec, progress: Progress) -> None:
        manager_node(self.client)
        for service in spec.services.values():
            if service.image not in self._images:
                self._images[service.image] = self._resolve(spec, service, progress)
            for mount in service.mounts:
                if mount.kind == "bind" and not mount.read_only:
                    raise AtendeaiError(
                        "invalid",
                        f"service {service.name}: a swarm cannot bind the host path "
                        f"{mount.source} read-write (tasks run on other machines)",
                        "use a named volume, or a read-only file or directory (it becomes a "
                        "Docker config or secrets)",
                    )

    def _resolve(self, spec: StackSpec, service: Service, progress: Progress) -> str:
        """The image reference every node runs: pinned to its registry digest when the
        registry knows it (as `docker stack deploy --resolve-image` does), else the name as is,
        present on this engine (built here when the service has `build:`)."""
        from docker.errors import APIError, ImageNotFound

        image = service.image
        try:
            digest = self.api.inspect_distribution(image)["Descriptor"]["digest"]
        except APIError:
            digest = None
        if digest:
            return image if "@" in image else f"{image}@{digest}"
        try:
            self.client.images.get(image)
        except ImageNotFound:
            if service.build is None:
                from atendeai_ctl.stack.images import _pull

                _pull(self.client, image, progress)
            else:
                from atendeai_ctl.stack.images import build_image

                build_image(self.client, spec, service, progress)
        return image

    # shared objects ----------------------------------------------------------------------
    def prepare(self, spec: StackSpec) -> None:
        ensure_data_node(self.client)
        self._network(spec)
        existing = {
            s["Spec"]["Name"]: s["ID"]
            for s in self.api.secrets(filters={"label": f"{NAMESPACE}={self.project}"})
        }
        configs = {
            c["Spec"]["Name"]: c["ID"]
            for c in self.api.configs(filters={"label": f"{NAMESPACE}={self.project}"})
        }
        for service in spec.services.values():
            secrets, files = objects(self.project, self.secrets, service)
            self._blobs[service.name], self._configs[service.name] = secrets, files
            for blob in secrets:
                if blob.name not in existing:
                    existing[blob.name] = self.api.create_secret(
                        blob.name, blob.data, labels=self._labels({SECRET_KEY: blob.key})
                    )["ID"]
            for blob in files:
                if blob.name not in configs:
                    configs[blob.name] = self.api.create_config(
                        blob.name, blob.data, labels=self._labels({SECRET_KEY: blob.key})
                    )["ID"]
        self._ids = {**existing, **configs}

    def _network(self, spec: StackSpec) -> None:
        from docker.types import IPAMConfig, IPAMPool

        found = [n for n in self.api.networks(names=[spec.network]) if n["Name"] == spec.network]
        if found:
            owner = (found[0].get("Labels") or {}).get(NAMESPACE)
            if owner != self.project or found[0].get("Driver") != "overlay":
                raise AtendeaiError(
                    "conflict",
                    f"network {spec.network} exists and is not project {self.project}'s overlay",
                    "remove it (docker network rm) or choose another ATENDEAI_PROJECT",
                )
            return
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=spec.subnet)]) if spec.subnet else None
        self.api.create_network(
            spec.network,
            driver="overlay",
            attachable=True,
            labels=self._labels({"com.docker.compose.network": "default"}),
            ipam=ipam,
        )

    # one service -------------------------------------------------------------------------
    def _spec(self, spec: StackSpec, service: Service) -> dict[str, Any]:
        return service_spec(
            self.project,
            spec,
            service,
            image=self._images.get(service.image, service.image),
            secrets=self._blobs.get(service.name, []),
            configs=self._configs.get(service.name, []),
            ids=self._ids,
        )

    def _service(self, service: str) -> dict[str, Any] | None:
        name = self.service_name(service)
        found = [
            s
            for s in self.api.services(filters={"label": f"{NAMESPACE}={self.project}"})
            if s["Spec"]["Name"] == name
        ]
        return found[0] if found else None

    def ensure(self, spec: StackSpec, service: Service) -> EnsureResult:
        import json

        self._stack = spec
        if service.replica > 1:
            return "unchanged"  # one swarm service holds every copy (Service.replicas)
        kwargs = self._spec(spec, service)
        digest = hashlib.sha256(
            json.dumps(
                {k: v for k, v in kwargs.items() if k != "labels"}, sort_keys=True, default=str
            ).encode()
        ).hexdigest()
        kwargs["labels"][SPEC_HASH] = digest
        existing = self._service(service.name)
        if existing is not None and existing["Spec"].get("Labels", {}).get(SPEC_HASH) == digest:
            return "unchanged"
        self._pending[service.name] = (kwargs, digest)
        return "created" if existing is None else "recreated"

    def _job_done(self, service: Service, existing: dict[str, Any]) -> bool:
        """Whether an unchanged job need not run again: its last run completed, and its
        `x-atendeai.done_when` holds. On one engine `up` asks PostgreSQL on its published
        port (project.job_checks); a swarm publishes no database port, so here the question
        (`schema_at_head`: the database's revision is the scripts' head) is put to the
        database task itself: `psql` run inside it (docker exec, on the engine of the node
        that runs it), with the job's own credentials in the exec's environment. ~0.2 s,
        where a new job run costs a task start and a Python process. Any doubt: run it."""
        from urllib.parse import unquote, urlsplit

        from docker.errors import APIError

        from atendeai_ctl.db.migrations import SCHEMA, VERSION_TABLE, script_head

        spec = self._stack
        if spec is None or "ReplicatedJob" not in existing["Spec"]["Mode"]:
            return False
        if (service.extensions.get("x-atendeai") or {}).get("done_when") != "schema_at_head":
            return False
        info = self.api.inspect_service(existing["ID"])
        if not any(t["Status"]["State"] == "complete" for t in self._tasks(info)):
            return False
        head = script_head(spec.path.parent.parent / "migrations")
        url = urlsplit(service.env.get("ATENDEAI_DATABASE_URL") or "")
        database = spec.services.get(url.hostname or "")
        if head is None or database is None or not url.username:
            return False
        found = self._running_container(database.name)
        if found is None:
            return False
        api, container = found
        query = f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}"
        env = {
            "PGPASSWORD": unquote(url.password or ""),
            "PGUSER": unquote(url.username),
            "PGDATABASE": url.path.lstrip("/") or url.username,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(url.port or 5432),
        }
        try:
            run = api.exec_create(container, ["psql", "-XtAq", "-c", query], environment=env)
            output = api.exec_start(run["Id"]).decode(errors="replace")
            code = api.exec_inspect(run["Id"]).get("ExitCode")
        except APIError:  # the engine refused the exec: run the job, which decides
            return False
        return code == 0 and output.split() == [head]

    def _running_container(self, service: str) -> tuple[docker.APIClient, str] | None:
        """A running task's container of the service, with the engine of its node (this one,
        or another node's reached as swarm_cluster.other_engines says)."""
        from atendeai_ctl.stack.swarm_cluster import connect_node, manager_node, other_engines

        info = self._service(service)
        if info is None:
            return None
        tasks = [
            t
            for t in self.api.tasks(filters={"service": info["ID"], "desired-state": "running"})
            if t["Status"]["State"] == "running"
        ]
        if not tasks:
            return None
        task = tasks[0]
        container = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
        if not container:
            return None
        if task.get("NodeID") == manager_node(self.client):
            return self.api, container
        for node in other_engines(self.client):
            if node.id == task.get("NodeID"):
                client = connect_node(node)
                return (client.api, container) if client is not None else None
        return None

    def start(self, service: Service) -> None:
        """Create the service, or update it (a rolling update; for a job, a new run)."""
        if service.replica > 1:
            return
        pending = self._pending.pop(service.name, None)
        existing = self._service(service.name)
        if existing is None:
            if pending is None:
                raise AtendeaiError("not_found", f"no swarm service for {service.name}")
            self.api.create_service(**pending[0])
            return
        if pending is None and self._job_done(service, existing):
            return  # its last run completed and its work is still done: not run again
        self._updated[service.name] = (existing.get("UpdateStatus") or {}).get("StartedAt", "")
        if pending is not None:
            self.api.update_service(
                existing["ID"], existing["Version"]["Index"], fetch_current_spec=False, **pending[0]
            )
            return
        # Unchanged: a job runs again (a new job iteration), a service restarts its tasks.
        spec = existing["Spec"]
        template = dict(spec["TaskTemplate"])
        template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        self.api.update_service(
            existing["ID"],
            existing["Version"]["Index"],
            task_template=template,
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec.get("Mode"),
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
            fetch_current_spec=False,
        )

    # reading -----------------------------------------------------------------------------
    def _node_names(self) -> dict[str, str]:
        if not self._nodes:
            self._nodes = {
                n["ID"]: n.get("Description", {}).get("Hostname", n["ID"][:12])
                for n in self.api.nodes()
            }
        return self._nodes

    def _tasks(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The tasks that make the service now: a job's current iteration; otherwise those
        meant to run (an update's old and new ones both, while it lasts)."""
        tasks = list(self.api.tasks(filters={"service": info["ID"]}))
        if "ReplicatedJob" in info["Spec"]["Mode"]:
            iteration = ((info.get("JobStatus") or {}).get("JobIteration") or {}).get("Index")
            return [t for t in tasks if (t.get("JobIteration") or {}).get("Index") == iteration]
        return [t for t in tasks if t.get("DesiredState") == "running"]

    def inspect(self, service: Service) -> SwarmServiceStatus:
        if service.replica > 1:
            # Copy k of a swarm service is one of its tasks, not a thing of its own: the
            # orchestrator waits for all of them through copy 1 (probe: all tasks running).
            status = SwarmServiceStatus(service.instance_name, "running", "healthy")
            status.service, status.replica = service.name, service.replica
            return status
        if service.name in self._pending:
            return SwarmServiceStatus(service.name, "created")
        info = self._service(service.name)
        if info is None:
            return SwarmServiceStatus(service.name, "missing")
        info = self.api.inspect_service(info["ID"])
        tasks = self._tasks(info)
        nodes = self._node_names()
        checked = service.healthcheck is not None
        views = []
        for t in sorted(tasks, key=lambda t: (t.get("Slot") or 0, t["Status"]["Timestamp"])):
            task_state = t["Status"]["State"]
            health: Health = "none"
            if checked and task_state == "running":
                health = "healthy"  # Swarm reports a task running only once it is healthy
            elif checked and task_state == "starting":
                health = "starting"
            code = (t["Status"].get("ContainerStatus") or {}).get("ExitCode")
            views.append(
                TaskStatus(
                    t["ID"][:12],
                    t.get("Slot"),
                    nodes.get(t.get("NodeID", ""), t.get("NodeID", "")[:12]),
                    task_state,
                    t.get("DesiredState", ""),
                    health,
                    t["Status"].get("Err", ""),
                    code if task_state not in ("running", "starting") else None,
                )
            )
        mode = info["Spec"]["Mode"]
        update = (info.get("UpdateStatus") or {}).get("State")
        running = sum(1 for v in views if v.state == "running")
        done = [v for v in views if v.state == "complete"]
        failed = [v for v in views if v.state in FAILED_TASK]
        status = SwarmServiceStatus(
            service.name, "created", id=info["ID"][:12], update=update, tasks=views
        )
        status.started_at = info.get("UpdatedAt") or info.get("CreatedAt")
        if "ReplicatedJob" in mode:
            status.desired = int(mode["ReplicatedJob"].get("TotalCompletions") or 1)
            status.running = running
            if done:
                status.state, status.exit_code = "exited", 0
            elif failed:
                status.state = "exited"
                status.exit_code = failed[-1].exit_code if failed[-1].exit_code else 1
            elif running:
                status.state = "running"
            return status
        status.desired = int((mode.get("Replicated") or {}).get("Replicas") or 0)
        status.running = running
        status.restarts = sum(
            1
            for t in self.api.tasks(filters={"service": info["ID"]})
            if t["Status"]["State"] in FAILED_TASK
        )
        state: State = "running" if running else ("restarting" if failed else "created")
        status.state = state
        if running and checked:
            # Tasks count as running once healthy; fewer than wanted is still starting. A
            # rolled-back update shows in update_state (the old spec may run healthy).
            status.health = "healthy" if running >= status.desired else "starting"
        status.ports = [
            PublishedPort("0.0.0.0", int(p["PublishedPort"]), int(p["TargetPort"]))
            for p in (info["Spec"].get("EndpointSpec") or {}).get("Ports") or []
        ]
        return status

    def probe(self, service: Service) -> ProbeResult:
        """Converged: as many up-to-date tasks running (so healthy) as replicas, and an update
        of ours completed. A rolled-back or paused update is a failure, raised."""
        if service.replica > 1:
            return ProbeResult(True, "a task of the swarm service")
        info = self._service(service.name)
        if info is None:
            return ProbeResult(False, "no service")
        info = self.api.inspect_service(info["ID"])
        update = info.get("UpdateStatus") or {}
        ours = service.name in self._updated
        if ours and update.get("State") in ROLLED_BACK:
            raise AtendeaiError(
                "failed",
                f"the update of {service.name} was rolled back ({update['State']}): "
                f"{update.get('Message', '')}; {self._errors(info)}".rstrip("; "),
                f"`atendeai logs {service.name}` and `atendeai status --runtime swarm --json`",
            )
        current = list(self.api.tasks(filters={"service": info["ID"], "_up-to-date": "true"}))
        running = [t for t in current if t["Status"]["State"] == "running"]
        wanted = int((info["Spec"]["Mode"].get("Replicated") or {}).get("Replicas") or 0)
        finished = not ours or (
            update.get("State") == "completed"
            and update.get("StartedAt", "") != self._updated[service.name]
        )
        if len(running) >= wanted and finished:
            if ours:
                self._prune()
            return ProbeResult(True, f"{len(running)}/{wanted} tasks running")
        return ProbeResult(
            False,
            f"{len(running)}/{wanted} tasks running, update {update.get('State') or '-'}"
            + (f"; {self._errors(info)}" if self._errors(info) else ""),
        )

    def _prune(self) -> None:
        """Secrets and configs of the project no service uses any more (the versions a
        rotation replaced, once the update that swapped them converged). One still held by a
        task that is stopping is refused by the engine and left for the next time."""
        from docker.errors import APIError

        label = {"label": f"{NAMESPACE}={self.project}"}
        used = set()
        for svc in self.api.services(filters=label):
            container = svc["Spec"]["TaskTemplate"]["ContainerSpec"]
            used |= {r["SecretName"] for r in container.get("Secrets") or []}
            used |= {r["ConfigName"] for r in container.get("Configs") or []}
        for secret in self.api.secrets(filters=label):
            if secret["Spec"]["Name"] not in used:
                with contextlib.suppress(APIError):
                    self.api.remove_secret(secret["ID"])
        for config in self.api.configs(filters=label):
            if config["Spec"]["Name"] not in used:
                with contextlib.suppress(APIError):
                    self.api.remove_config(config["ID"])

    def _errors(self, info: dict[str, Any]) -> str:
        failed = [
            t
            for t in self.api.tasks(filters={"service": info["ID"]})
            if t["Status"]["State"] in FAILED_TASK and t["Status"].get("Err")
        ]
        failed.sort(key=lambda t: t["Status"]["Timestamp"])
        return "; ".join(f"task {t['ID'][:12]}: {t['Status']['Err']}" for t in failed[-3:])

    def logs(self, service: str, *, tail: int | None, follow: bool) -> Iterator[bytes]:
        info = self._service(service)
        if info is None:
            raise AtendeaiError(
                "not_found", f"service {service} has no swarm service", "run `atendeai up` first"
            )
        yield from self.api.service_logs(
            info["ID"],
            stdout=True,
            stderr=True,
            follow=follow,
            tail="all" if tail is None else tail,
        )

    # replicas ----------------------------------------------------------------------------
    def replicas(self, service: Service) -> list[int]:
        """One swarm service is every copy: [1] while it exists. Swarm itself keeps the task
        count at Service.replicas, so the orchestrator has no copies of its own to add or
        retire."""
        return [1] if self._service(service.name) is not None else []

    def remove(self, service: Service, *, grace: float) -> None:
        """Swarm retires tasks itself when the replica count goes down."""
        raise AtendeaiError(
            "invalid",
            f"{service.instance_name}: a swarm task is not removed on its own",
            "change the replica count and run `atendeai up --runtime swarm`",
        )

    def address(self, service: Service) -> str | None:
        """None: the gateway finds swarm tasks through DNS (endpoint_mode dnsrr)."""
        return None

    def admin(self, service: Service, port: int, command: str) -> str | None:
        """None: a task's internal ports are on the overlay network, out of reach here."""
        return None

    # rollout -----------------------------------------------------------------------------
    def rollout(
        self,
        spec: StackSpec,
        service_name: str,
        *,
        project: str,
        timeout: float = 120.0,
        on_step: Callable[[str, str], None] | None = None,
    ) -> RolloutReport:
        """`rollout` on a swarm is a Swarm rolling update: the changed spec if the file or
        the image changed, else a forced one (every task replaced). Start-first with the
        healthcheck as the gate, so a new task serves (is in DNS) before an old one leaves;
        a rollback is a failure with the task errors and last log lines."""
        from atendeai_ctl.stack.orchestrator import LOG_LINES, Failure
        from atendeai_ctl.stack.rollout import Replaced, RolloutReport

        step = on_step or (lambda *_: None)
        service = spec.services.get(service_name)
        if service is None:
            raise AtendeaiError(
                "not_found", f"no service {service_name!r}", f"services: {', '.join(spec.services)}"
            )
        before = self._service(service_name)
        if before is None:
            raise AtendeaiError(
                "not_found", f"service {service_name} has no swarm service", "run `atendeai up`"
            )
        # What `up` deployed, not what the caller's spec says: the command hands over the
        # whole file (every profile, no scale), and converting that would change the service
        # (auth behind a gateway that is not deployed loses its port; the replica count
        # falls back to 1). So: the services that exist, and the count that runs.
        deployed = {
            s["Spec"].get("Labels", {}).get(SERVICE)
            for s in self.api.services(filters={"label": f"{NAMESPACE}={self.project}"})
        }
        running = int((before["Spec"]["Mode"].get("Replicated") or {}).get("Replicas") or 1)
        service = replace(service, replicas=running)
        spec = replace(
            spec,
            services={
                name: (service if name == service_name else svc)
                for name, svc in spec.services.items()
                if name in deployed
            },
        )
        only = replace(spec, services={service_name: service})
        self.preflight(only, lambda *_: None)
        self.prepare(only)
        old = {t["Slot"]: t["ID"][:12] for t in self._tasks(self.api.inspect_service(before["ID"]))}
        report = RolloutReport(project, self.name, service_name, sorted(old))
        report.gateway = "swarm-dns"
        t0 = time.monotonic()
        action = self.ensure(spec, service)
        step(service_name, "updating (spec changed)" if action != "unchanged" else "updating")
        self.start(service)
        deadline = t0 + timeout
        try:
            while not (probe := self.probe(service)).ok:
                if time.monotonic() > deadline:
                    raise AtendeaiError(
                        "failed", f"not converged after {timeout:g}s: {probe.output}"
                    )
                time.sleep(0.5)
        except AtendeaiError as exc:
            try:
                raw = b"".join(self.logs(service_name, tail=LOG_LINES, follow=False))
                logs = raw.decode(errors="replace").splitlines()[-LOG_LINES:]
            except AtendeaiError:
                logs = []
            report.failure = Failure(service_name, exc.message, logs=logs, hint=exc.hint)
        after = self._service(service_name)
        new = (
            {t["Slot"]: t["ID"][:12] for t in self._tasks(self.api.inspect_service(after["ID"]))}
            if after is not None
            else {}
        )
        report.seconds = time.monotonic() - t0
        report.replaced = [
            Replaced(slot, old.get(slot), new.get(slot), report.seconds)
            for slot in sorted(set(old) | set(new))
            if old.get(slot) != new.get(slot)
        ]
        return report

    # down --------------------------------------------------------------------------------
    def down(self, spec: StackSpec, *, volumes: bool) -> list[str]:
        label = {"label": f"{NAMESPACE}={self.project}"}
        removed: list[str] = []
        for service in self.api.services(filters=label):
            self.api.remove_service(service["ID"])
            removed.append(service["Spec"]["Name"])
        # Tasks stop asynchronously; the network, secrets and volumes are in use until then.
        # A finished job's containers stay behind on this node: removed here (on other nodes
        # their engines' task reaper does it).
        _until_gone(lambda: self.api.containers(filters=label), "containers")
        for container in self.api.containers(all=True, filters=label):
            _retry(lambda c=container: self.api.remove_container(c["Id"], force=True))
        for net in self.api.networks(filters=label):
            _retry(lambda net=net: self.api.remove_network(net["Id"]))
            removed.append(f"network {net['Name']}")
        for secret in self.api.secrets(filters=label):
            _retry(lambda secret=secret: self.api.remove_secret(secret["ID"]))
            removed.append(f"secret {secret['Spec']['Name']}")
        for config in self.api.configs(filters=label):
            _retry(lambda config=config: self.api.remove_config(config["ID"]))
            removed.append(f"config {config['Spec']['Name']}")
        if volumes:
            removed += self._remove_volumes()
        return removed

    def _remove_volumes(self) -> list[str]:
        """The project's volumes on every node that has them: local volumes live on the node
        whose task made them (the data node, unless it was moved). This engine's, then each
        other node's through its own engine (swarm_cluster.other_engines: reached the way
        DOCKER_HOST reaches this one), after the tasks the removed services left there are
        gone. A node that does not answer is named in the error, with what to do there."""
        from atendeai_ctl.stack.swarm_cluster import connect_node, other_engines

        volumes = {"label": f"{PROJECT}={self.project}"}
        removed = []
        engines: list[tuple[str, docker.APIClient]] = [("", self.api)]
        missed = []
        for node in other_engines(self.client):
            client = connect_node(node)
            if client is None:
                missed.append(f"{node.hostname} ({node.address or 'no address'}, {node.state})")
            else:
                engines.append((f" on {node.hostname}", client.api))
        label = {"label": f"{NAMESPACE}={self.project}"}
        for where, api in engines:
            _until_gone(lambda api=api: api.containers(filters=label), "containers")
            for container in api.containers(all=True, filters=label):
                _retry(lambda api=api, c=container: api.remove_container(c["Id"], force=True))
            for vol in api.volumes(filters=volumes).get("Volumes") or []:
                _retry(lambda api=api, vol=vol: api.remove_volume(vol["Name"]))
                removed.append(f"volume {vol['Name']}{where}")
        if missed:
            raise AtendeaiError(
                "unavailable",
                f"the project's services, network, secrets and configs are removed, but the "
                f"engines of nodes {', '.join(missed)} did not answer: volumes of "
                f"{self.project} may remain there ({', '.join(removed) or 'none removed here'})",
                f"on each, `docker volume rm $(docker volume ls -q --filter "
                f"label={PROJECT}={self.project})`; or run `down --volumes` again once their "
                "engines answer the way DOCKER_HOST reaches this one",
            )
        return removed


def _until_gone(listing: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while listing():
        if time.monotonic() > deadline:
            raise AtendeaiError("failed", f"{what} of the stack still there after {timeout:g}s")
        time.sleep(0.2)


def _retry(action: Any, timeout: float = 30.0) -> None:
    """Removals the engine refuses while a stopping task still holds the object."""
    from docker.errors import APIError, NotFound

    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except NotFound:
            return
        except APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)

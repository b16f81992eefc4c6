"""Compose service -> Swarm service spec: the conversion `docker stack deploy` does, our way.

Pure functions of the parsed spec (no engine calls), so the choices live in one place:
- `endpoint_mode: dnsrr` everywhere and ports published in `host` mode: the kernel here has no
  IPVS, so service VIPs and the ingress mesh never answer; host mode also keeps the client
  address the auth service rate-limits by;
- services owning a named volume (postgres, redis) are pinned to nodes labelled
  `atendeai.data=true` (local volumes belong to one node), publish nothing, update stop-first;
- a service publishing a host-mode port updates stop-first too (a second task cannot bind the
  port on the node); the others start first; all with `failure_action: rollback`;
- the migrate job is a `replicated-job` with restart condition none, on the data node;
- generated secrets and read-only bind mounts become Docker secrets/configs named with a hash
  of their content (Swarm refuses to change an object's data: a new value is a new name).
See docs/swarm.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.docker_runtime import PROJECT, SERVICE
from atendeai_ctl.stack.spec import Service, StackSpec

NAMESPACE = "com.docker.stack.namespace"
STACK_IMAGE = "com.docker.stack.image"
SPEC_HASH = "io.atendeai.spec-hash"
SECRET_KEY = "io.atendeai.secret"
DATA_LABEL = "atendeai.data"
DATA_CONSTRAINT = f"node.labels.{DATA_LABEL}==true"
FILE_ENV = frozenset({"POSTGRES_PASSWORD"})
"""Variables whose image also reads `<VAR>_FILE` (the official postgres image and its stand-in):
these get the secret's file instead of its value. The others (REDIS_PASSWORD, read by the
redis command's shell; the auth service's URLs, which embed passwords) keep the value in the
service's environment: the images read no file for them."""
TRUSTED_PROXIES = "ATENDEAI_AUTH_TRUSTED_PROXIES"
"""Whom the auth service believes X-Forwarded-For from. On one engine: the edge gateway's
fixed address (`ipv4_address`, ATENDEAI_GATEWAY_ADDRESS). A Swarm service cannot hold a fixed
address, so where the file trusts such an address the swarm trusts the project's overlay
subnet instead (ATENDEAI_SUBNET, which the runtime gives the network). Sound because no
address of that subnet is reachable from outside: clients come in through the gateway's
host-mode port and reach auth only with the gateway's overlay address as source (auth
publishes nothing behind the gateway). The cost, stated in docs/swarm.md: every task on the
project's network (and any container someone with engine access attaches to it) can set the
client address auth sees (its rate limits and audit rows)."""
HEALTH_INTERVAL_S = 2.0
"""The longest healthcheck interval on a swarm. On one engine `up` runs each check itself as
soon as a service starts; on a swarm only the engine's own healthcheck says a task is ready
(and puts it in DNS), the first one an interval after the start, and this engine (20.10) has
no `start_interval`. With the file's 5 s, each of the two gates on the way to auth (postgres
healthy, auth healthy) waited 5 s: `up` took 15.6 s where `docker stack deploy` of the same
stack, which waits for nothing, converged in 7.9 s (bench/swarm.py)."""
_NS = 1_000_000_000


def ns(seconds: float) -> int:
    return int(seconds * _NS)


def sha12(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass(frozen=True)
class Blob:
    """A secret or config: its object name (with content hash), where it goes, its data."""

    name: str
    key: str
    data: bytes
    target: str


def is_stateful(service: Service) -> bool:
    return any(m.kind == "volume" for m in service.mounts)


def publishes(spec: StackSpec, service: Service) -> bool:
    """Whether the service's ports are published on its nodes. Not for a service owning data
    (a swarm publishes on every address of the node, and the databases are for the stack),
    nor for one a publishing service depends on: that one is its front (the gateway in front
    of auth), and clients come through it. So auth, with nothing publishing in front of it,
    publishes its port; behind the edge gateway it does not, and its updates can start first."""
    if not service.ports or is_stateful(service):
        return False
    return not any(
        other.ports and service.name in dict(other.depends_on)
        for other in spec.services.values()
        if other.name != service.name and not is_stateful(other)
    )


def labels(project: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What marks an object as the project's, for `docker stack` and for Compose alike."""
    return {NAMESPACE: project, PROJECT: project, **(extra or {})}


def objects(
    project: str, secrets: Mapping[str, str], service: Service
) -> tuple[list[Blob], list[Blob]]:
    """The secrets a service's environment uses (its generated passwords) and its
    read-only binds: a directory's files become secrets (the JWT keys), a single file a
    config."""
    found: list[Blob] = []
    for key, value in sorted(secrets.items()):
        if any(value in v for v in service.env.values()):
            short = key.removeprefix("ATENDEAI_").lower()
            data = value.encode()
            found.append(Blob(f"{project}_{short}_{sha12(data)}", short, data, short))
    configs: list[Blob] = []
    for mount in service.mounts:
        if mount.kind != "bind":
            continue
        source = Path(mount.source)
        if source.is_dir():
            for path in sorted(p for p in source.iterdir() if p.is_file()):
                data = path.read_bytes()
                key = f"{service.name}_{path.name}".replace(".", "_")
                target = f"{mount.target.rstrip('/')}/{path.name}"
                found.append(Blob(f"{project}_{key}_{sha12(data)}", key, data, target))
        elif source.is_file():
            data = source.read_bytes()
            key = f"{service.name}_{source.name}".replace(".", "_")
            configs.append(Blob(f"{project}_{key}_{sha12(data)}", key, data, mount.target))
        else:
            raise AtendeaiError(
                "not_found", f"service {service.name}: {mount.source} does not exist"
            )
    return found, configs


def service_spec(
    project: str,
    spec: StackSpec,
    service: Service,
    *,
    image: str,
    secrets: list[Blob],
    configs: list[Blob],
    ids: Mapping[str, str],
) -> dict[str, Any]:
    """The keyword arguments of APIClient.create_service/update_service."""
    from docker import types

    from atendeai_ctl.stack.orchestrator import one_shot_services

    job = service.name in one_shot_services(spec)
    stateful = is_stateful(service)
    uid, _, gid = (service.user or "").partition(":")
    owner = {"uid": uid or "0", "gid": gid or uid or "0"} if uid.isdigit() else {}
    files = {b.key: f"/run/secrets/{b.target}" for b in secrets if "/" not in b.target}
    env = []
    fixed = {s.ipv4_address for s in spec.services.values() if s.ipv4_address}
    for var, value in service.env.items():
        if var == TRUSTED_PROXIES and value in fixed and spec.subnet:
            value = spec.subnet  # the gateway's fixed address cannot be held: see TRUSTED_PROXIES
        blob = next((b for b in secrets if b.data == value.encode()), None)
        if var in FILE_ENV and blob is not None and blob.key in files:
            env.append(f"{var}_FILE={files[blob.key]}")
        else:
            env.append(f"{var}={value}")
    health = None
    if service.healthcheck is not None:
        hc = service.healthcheck
        interval = min(hc.interval, HEALTH_INTERVAL_S)
        health = types.Healthcheck(
            test=list(hc.test),
            interval=ns(interval),
            timeout=ns(hc.timeout),
            # The same time to "unhealthy" as the file's interval x retries.
            retries=max(hc.retries, math.ceil(hc.retries * hc.interval / interval)),
            start_period=ns(hc.start_period),
        )
    mounts = [
        types.Mount(
            m.target,
            f"{project}_{m.source}",
            type="volume",
            read_only=m.read_only,
            labels=labels(project, {"com.docker.compose.volume": m.source}),
        )
        for m in service.mounts
        if m.kind == "volume"
    ]
    container = types.ContainerSpec(
        image,
        command=list(service.entrypoint) if service.entrypoint is not None else None,
        args=list(service.command) if service.command is not None else None,
        env=env,
        user=service.user,
        workdir=service.working_dir,
        labels=labels(project, {SERVICE: service.name, "com.docker.compose.oneoff": "False"}),
        mounts=mounts,
        stop_signal=service.stop_signal,
        stop_grace_period=ns(service.stop_grace_period) if service.stop_grace_period else None,
        healthcheck=health,
        secrets=[
            # Owner-only for a service with a numeric user; otherwise readable by the
            # container's users, as Swarm's default (postgres drops from root to its user
            # before reading POSTGRES_PASSWORD_FILE).
            types.SecretReference(
                ids[b.name],
                b.name,
                filename=b.target,
                mode=0o400 if owner else 0o444,
                **owner,
            )
            for b in secrets
        ],
        configs=[
            types.ConfigReference(ids[b.name], b.name, filename=b.target, mode=0o444, **owner)
            for b in configs
        ],
    )
    condition = {"always": "any", "unless-stopped": "any", "on-failure": "on-failure"}
    restart = "none" if job else condition.get(service.restart.split(":")[0], "none")
    template = types.TaskTemplate(
        container,
        restart_policy=types.RestartPolicy(condition=restart, delay=ns(2)),
        # A job runs on the data node too: next to the database it migrates, and where `down`
        # can remove its finished containers (Swarm leaves a completed job's containers
        # behind when the service goes; `down` reaches the engine DOCKER_HOST names only).
        placement=types.Placement(constraints=[DATA_CONSTRAINT]) if stateful or job else None,
        networks=[types.NetworkAttachmentConfig(spec.network, aliases=[service.name])],
    )
    replicas = int(getattr(service, "replicas", None) or 1)
    kwargs: dict[str, Any] = {
        "task_template": template,
        "name": f"{project}_{service.name}",
        "labels": labels(project, {SERVICE: service.name, STACK_IMAGE: service.image}),
        "mode": types.ServiceMode("replicated-job", replicas=1, concurrency=1)
        if job
        else types.ServiceMode("replicated", replicas=replicas),
        "endpoint_spec": types.EndpointSpec(
            mode="dnsrr",
            ports={p.host_port: (p.target, p.protocol, "host") for p in service.ports}
            if publishes(spec, service)
            else None,
        ),
    }
    if not job:
        interval = service.healthcheck.interval if service.healthcheck else 5.0
        # A port published in host mode is held by the old task until it stops: a new one
        # started first could not bind it on that node (it stays pending, and on one node
        # forever). Such services, and those owning a data volume, stop first.
        order = "stop-first" if stateful or publishes(spec, service) else "start-first"
        monitor = ns(min(max(interval * 2, 5.0), 30.0))
        kwargs["update_config"] = types.UpdateConfig(
            parallelism=1, failure_action="rollback", monitor=monitor, order=order
        )
        kwargs["rollback_config"] = types.RollbackConfig(
            parallelism=1, failure_action="pause", monitor=monitor, order=order
        )
    return kwargs

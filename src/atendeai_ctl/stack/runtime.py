"""The small interface both runtimes (Docker, local processes) implement.

The orchestrator only speaks this interface, so dependency order, readiness and reporting
are written once and behave the same on both runtimes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from atendeai_ctl.stack.spec import Service, StackSpec

State = Literal["running", "exited", "created", "restarting", "paused", "missing", "dead"]
Health = Literal["healthy", "unhealthy", "starting", "none"]
EnsureResult = Literal["created", "recreated", "unchanged"]


@dataclass
class PublishedPort:
    host: str
    port: int
    target: int

    def to_dict(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "target": self.target}


@dataclass
class ServiceStatus:
    name: str  # the copy's name: `auth`, or `auth-2` for replica 2 (Service.instance_name)
    state: State
    health: Health = "none"
    ports: list[PublishedPort] = field(default_factory=list)
    id: str | None = None  # container id, or pid for the local runtime
    started_at: str | None = None
    exit_code: int | None = None
    restarts: int = 0
    service: str | None = None  # the compose service, when the name is a replica's
    replica: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "service": self.service or self.name,
            "replica": self.replica,
            "state": self.state,
            "health": self.health,
            "ports": [p.to_dict() for p in self.ports],
            "id": self.id,
            "started_at": self.started_at,
            "exit_code": self.exit_code,
            "restarts": self.restarts,
        }


@dataclass
class ProbeResult:
    ok: bool
    output: str = ""


Progress = Callable[[str, str, float | None, float | None], None]
"""(topic, message, completed, total) for slow steps before services start (pulls, builds);
completed/total are bytes when known, so a terminal can draw a bar."""


class Runtime(Protocol):
    name: str

    def preflight(self, spec: StackSpec, progress: Progress) -> None:
        """Everything that can fail before anything starts: engine, images, ports."""

    def prepare(self, spec: StackSpec) -> None:
        """Shared resources: network and volumes (Docker), directories (local)."""

    def ensure(self, spec: StackSpec, service: Service) -> EnsureResult:
        """Create the service's container/process definition, or keep an unchanged one."""

    def start(self, service: Service) -> None: ...

    def probe(self, service: Service) -> ProbeResult:
        """Run the readiness check once, now (not at the healthcheck's interval)."""

    def inspect(self, service: Service) -> ServiceStatus: ...

    def logs(self, service: str, *, tail: int | None, follow: bool) -> Iterator[bytes]: ...

    def down(self, spec: StackSpec, *, volumes: bool) -> list[str]:
        """Stop and remove the project's services (and data with `volumes`); what was removed."""

    # Replicas: every method above acts on the copy `service.replica` names (Service.instance).
    def replicas(self, service: Service) -> list[int]:
        """The numbers of the service's copies that exist now (running or not), ascending."""

    def remove(self, service: Service, *, grace: float) -> None:
        """Stop this copy (its stop signal, then SIGKILL after `grace` s) and remove it."""

    def address(self, service: Service) -> str | None:
        """`host:port` where the gateway reaches this copy (None: it does not exist)."""

    def admin(self, service: Service, port: int, command: str) -> str | None:
        """One line to a TCP port the service listens on internally (HAProxy's runtime API),
        the answer read to its end; None when the service does not run."""

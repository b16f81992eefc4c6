"""`rollout`: replace a service's replicas one at a time, so clients see no failed request.

The order keeps at least as many ready copies in the gateway's pool as before, at every
moment, and keeps each copy's number and published ports (replica k = port base + k - 1):

1. a surge copy (number max + 1) starts with the current image and configuration; it must
   be ready (its own probe) and in the gateway's pool before anything else happens;
2. for each old copy k: drain it (out of the pool, in-flight requests finish), stop it with
   its stop signal and grace period, remove it; start the new copy k, wait as in 1;
3. the surge copy is drained and removed.

A copy that does not become ready stops the rollout: it is removed, the copies still
serving are left alone, and the report carries the failure (reason, exit code, last logs).

"In the gateway's pool" is asked of HAProxy's runtime API (`show servers state`) when the
runtime can reach it (Runtime.admin; the gateway's `stats socket` on ADMIN_PORT): a server
slot holds the copy's address, is running and in no maintenance or drain. Draining is `set
server ... state drain`, then waiting for the slot's current sessions to reach 0; after the
copy is gone the slot is set ready again, once DNS has taken the address away (else the
slot would stay drained for whatever copy lands in it next). Without the runtime API (the
local runtime, where the gateway names each port itself) the wait is the health checks'
rise time (SETTLE_S), and a stopped copy's port refuses at once, which the gateway retries
on another server (`retry-on conn-failure`, `option redispatch`).
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.orchestrator import LOG_LINES, Failure
from atendeai_ctl.stack.runtime import Runtime
from atendeai_ctl.stack.scale import MAX_REPLICAS
from atendeai_ctl.stack.spec import Service, StackSpec

GATEWAY = "gateway"
"""The compose service whose HAProxy balances over the replicas (profile `edge`)."""
ADMIN_PORT = 8406
"""Its runtime API inside its network namespace (haproxy.cfg: `stats socket`)."""
SETTLE_S = 6.0
"""Without the runtime API: HAProxy's `rise 2` x `inter 2s` plus a resolver round (1 s) and
a second of margin, the longest a ready copy takes to receive traffic."""
POOL_TIMEOUT_S = 30.0
"""How long a ready copy may take to enter the pool, or a drained one to empty."""
GRACE_S = 10.0
"""Stop grace when the service sets none (Docker's default)."""
CRASH_LOOP = 3

OnStep = Callable[[str, str], None]
"""(copy, what is happening): progress for a terminal."""


@dataclass
class Member:
    """One server slot of the gateway's backend."""

    name: str
    address: str
    running: bool  # its health checks pass (srv_op_state 2, or 1: up, in its slow start)
    admin_state: int
    sessions: int = 0

    @property
    def serving(self) -> bool:
        """Up and taking new requests: running, in no maintenance and not draining."""
        return self.running and self.admin_state == 0


def parse_servers_state(text: str) -> list[Member]:
    """`show servers state <backend>` (format 1): a header line `# be_id be_name ...`, then one
    line of space-separated fields per server."""
    header: list[str] | None = None
    members = []
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split()
            continue
        fields = line.split()
        if header is None or len(fields) < len(header):
            continue
        row = dict(zip(header, fields, strict=False))
        try:
            members.append(
                Member(
                    name=row["srv_name"],
                    address=f"{row['srv_addr']}:{row['srv_port']}",
                    running=row["srv_op_state"] in ("1", "2"),
                    admin_state=int(row["srv_admin_state"]),
                )
            )
        except (KeyError, ValueError):
            continue
    return members


def parse_sessions(text: str) -> dict[str, int]:
    """`show stat <backend> 4 -1` (CSV, header `# pxname,svname,qcur,qmax,scur,...`): current
    sessions per server."""
    lines = [line.removeprefix("# ") for line in text.splitlines() if line.strip()]
    sessions = {}
    for row in csv.DictReader(lines):
        try:
            sessions[row["svname"]] = int(row.get("scur") or 0)
        except (KeyError, ValueError, TypeError):
            continue
    return sessions


class Pool:
    """The gateway's pool for one service's replicas, as far as it can be seen from here."""

    def __init__(self, spec: StackSpec, runtime: Runtime, service: Service) -> None:
        self.runtime = runtime
        self.backend = service.name
        gateway = spec.services.get(GATEWAY)
        self.gateway = (
            gateway if gateway is not None and runtime.inspect(gateway).state == "running" else None
        )
        self.reused: set[str] = set()
        """Addresses a removed copy had that a new copy now has: the engine may give the
        freed address to the next container (Docker's allocator here takes the lowest free
        one), and a slot holding it is then already the new copy's."""

    @property
    def active(self) -> bool:
        return self.gateway is not None

    def _ask(self, command: str) -> str | None:
        if self.gateway is None:
            return None
        return self.runtime.admin(self.gateway, ADMIN_PORT, command)

    def members(self) -> list[Member] | None:
        """Every slot, or None when the runtime API cannot be reached."""
        state = self._ask(f"show servers state {self.backend}")
        if state is None:
            return None
        members = parse_servers_state(state)
        sessions = parse_sessions(self._ask(f"show stat {self.backend} 4 -1") or "")
        for member in members:
            member.sessions = sessions.get(member.name, 0)
        return members

    def _find(self, address: str) -> tuple[bool, Member | None]:
        members = self.members()
        if members is None:
            return False, None
        return True, next((m for m in members if m.address == address), None)

    def wait_serving(self, address: str | None, timeout: float = POOL_TIMEOUT_S) -> None:
        """Until the copy at `address` takes requests through the gateway."""
        if self.gateway is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            reachable, member = self._find(address or "")
            if not reachable:
                time.sleep(SETTLE_S)  # health checks' rise time: see the module docstring
                return
            if member is not None and member.serving:
                return
            if time.monotonic() > deadline:
                raise AtendeaiError(
                    "not_ready",
                    f"{address} did not enter the gateway's pool within {timeout:g}s",
                    "check `atendeai logs gateway`",
                )
            time.sleep(0.25)

    def drain(self, address: str | None, timeout: float = POOL_TIMEOUT_S) -> str | None:
        """Take the copy out of rotation and wait for its requests to finish; the slot's name
        (None: no slot holds it, or no runtime API)."""
        if self.gateway is None or address is None:
            return None
        reachable, member = self._find(address)
        if not reachable or member is None:
            return None
        self._ask(f"set server {self.backend}/{member.name} state drain")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, now = self._find(address)
            if now is None or now.sessions == 0:
                break
            time.sleep(0.1)
        return member.name

    def release(self, name: str, address: str, timeout: float = POOL_TIMEOUT_S) -> None:
        """The slot ready again for whatever copy DNS puts there next, once it no longer
        holds the removed copy's address or is down (so it cannot get requests meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            members = self.members() or []
            slot = next((m for m in members if m.name == name), None)
            if slot is None or slot.address != address or not slot.running:
                break
            if address in self.reused:
                break
            time.sleep(0.25)
        self._ask(f"set server {self.backend}/{name} state ready")


def retire(
    spec: StackSpec,
    runtime: Runtime,
    copy: Service,
    pool: Pool | None = None,
) -> threading.Thread | None:
    """Drain one copy (out of the pool; in-flight requests finish), stop it with its stop
    signal and grace period, and remove it. Also what scaling down does to each surplus copy.

    With `pool` given, the slot's release (up to DNS's hold time, ~6 s) runs in a thread the
    caller joins before it next needs the pool; without, it is waited for here."""
    own = pool is None
    pool = pool or Pool(spec, runtime, copy)
    address = runtime.address(copy)
    slot = pool.drain(address)
    runtime.remove(copy, grace=copy.stop_grace_period or GRACE_S)
    if slot is None or address is None:
        return None
    release = threading.Thread(target=pool.release, args=(slot, address), daemon=True)
    release.start()
    if own:
        release.join()
        return None
    return release


@dataclass
class Replaced:
    replica: int
    old_id: str | None
    new_id: str | None
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "old_id": self.old_id,
            "new_id": self.new_id,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class RolloutReport:
    project: str
    runtime: str
    service: str
    replicas: list[int]
    replaced: list[Replaced] = field(default_factory=list)
    seconds: float = 0.0
    gateway: str = "none"  # runtime-api / health-wait / none: how pool membership was known
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": 1,
            "project": self.project,
            "runtime": self.runtime,
            "service": self.service,
            "ok": self.ok,
            "replicas": self.replicas,
            "replaced": [r.to_dict() for r in self.replaced],
            "gateway": self.gateway,
            "seconds": round(self.seconds, 2),
            "failure": self.failure.to_dict() if self.failure else None,
        }


class _NotReady(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _logs(runtime: Runtime, copy: Service) -> list[str]:
    try:
        raw = b"".join(runtime.logs(copy.instance_name, tail=LOG_LINES, follow=False))
    except AtendeaiError:
        return []
    return raw.decode(errors="replace").splitlines()[-LOG_LINES:]


def _wait_ready(runtime: Runtime, copy: Service, timeout: float) -> None:
    """Its own readiness probe passes (or, without a healthcheck, it runs); a copy that exits
    or keeps restarting fails at once, not at the timeout."""
    deadline = time.monotonic() + timeout
    output, delay = "", 0.05
    while True:
        status = runtime.inspect(copy)
        if status.state in ("exited", "dead", "missing") or status.restarts >= CRASH_LOOP:
            reason = (
                f"keeps crashing (restarted {status.restarts} times)"
                if status.restarts >= CRASH_LOOP
                else f"exited with code {status.exit_code}"
            )
            raise _NotReady(
                Failure(copy.instance_name, reason, output, status.exit_code, _logs(runtime, copy))
            )
        if status.state == "running":
            if copy.healthcheck is None:
                return
            probe = runtime.probe(copy)
            if probe.ok:
                return
            output = probe.output or output
        if time.monotonic() > deadline:
            raise _NotReady(
                Failure(
                    copy.instance_name,
                    f"not ready after {timeout:g}s (--timeout)",
                    output,
                    None,
                    _logs(runtime, copy),
                )
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def rollout(
    spec: StackSpec,
    runtime: Runtime,
    service_name: str,
    *,
    project: str,
    timeout: float = 120.0,
    on_step: OnStep | None = None,
) -> RolloutReport:
    """Replace every existing copy of `service_name` with one of the current image and
    configuration, one at a time (see the module docstring). Raises for what fails before
    anything changes; a copy that does not become ready ends in the report's failure."""
    # A runtime whose engine rolls out by itself (Swarm's rolling update) does it its way.
    own = getattr(runtime, "rollout", None)
    if own is not None:
        report: RolloutReport = own(
            spec, service_name, project=project, timeout=timeout, on_step=on_step
        )
        return report
    step = on_step or (lambda *_: None)
    service = spec.services.get(service_name)
    if service is None:
        raise AtendeaiError(
            "not_found", f"no service {service_name!r}", f"services: {', '.join(spec.services)}"
        )
    numbers = runtime.replicas(service)
    if not numbers:
        raise AtendeaiError(
            "not_found", f"service {service_name} has no replicas", "run `atendeai up` first"
        )
    surge_number = max(numbers) + 1
    if surge_number > MAX_REPLICAS:
        raise AtendeaiError(
            "invalid",
            f"{service_name} has replica {max(numbers)}: a rollout needs one spare number "
            f"(at most {MAX_REPLICAS})",
            f"scale down first: atendeai up --scale {service_name}={MAX_REPLICAS - 1}",
        )
    # Every copy that will exist during the rollout, so images and ports are checked first.
    widest = replace(service, replicas=surge_number)
    only = replace(spec, services={service_name: widest})
    runtime.preflight(only, lambda *_: None)
    runtime.prepare(only)
    full = replace(spec, services={**spec.services, service_name: widest})
    t0 = time.monotonic()
    pool = Pool(spec, runtime, service)
    report = RolloutReport(project, runtime.name, service_name, numbers)

    releasing: list[threading.Thread] = []

    def start(copy: Service) -> str | None:
        runtime.remove(copy, grace=GRACE_S)  # what an interrupted rollout left behind
        runtime.ensure(full, copy)
        step(copy.instance_name, "starting")
        runtime.start(copy)
        _wait_ready(runtime, copy, timeout)
        step(copy.instance_name, "ready; waiting for the gateway" if pool.active else "ready")
        address = runtime.address(copy)
        if address is not None:
            pool.reused.add(address)
        while releasing:  # a drained slot may be the one DNS gives the new copy
            releasing.pop().join()
        try:
            pool.wait_serving(address)
        except AtendeaiError as exc:
            raise _NotReady(
                Failure(copy.instance_name, exc.message, "", None, [], exc.hint)
            ) from exc
        return runtime.inspect(copy).id

    def give_up(copy: Service, failure: Failure) -> RolloutReport:
        step(copy.instance_name, f"failed: {failure.reason}; removing it")
        runtime.remove(copy, grace=GRACE_S)
        for release in releasing:
            release.join()
        report.failure = failure
        report.seconds = time.monotonic() - t0
        return report

    surge = service.instance(surge_number)
    try:
        start(surge)
    except _NotReady as exc:
        return give_up(surge, exc.failure)
    report.gateway = _how(pool)
    for number in numbers:
        began = time.monotonic()
        copy = service.instance(number)
        old_id = runtime.inspect(copy).id
        step(copy.instance_name, "draining")
        if (release := retire(spec, runtime, copy, pool)) is not None:
            releasing.append(release)
        try:
            new_id = start(copy)
        except _NotReady as exc:
            exc.failure.hint = exc.failure.hint or (
                f"{surge.instance_name} (new) serves in its place; fix the cause and run "
                f"`atendeai up` (or `rollout {service_name}`) again"
            )
            return give_up(copy, exc.failure)
        report.replaced.append(Replaced(number, old_id, new_id, time.monotonic() - began))
        step(copy.instance_name, "replaced")
    step(surge.instance_name, "draining")
    if (release := retire(spec, runtime, surge, pool)) is not None:
        release.join()
    report.seconds = time.monotonic() - t0
    return report


def _how(pool: Pool) -> str:
    if not pool.active:
        return "none"
    return "runtime-api" if pool.members() is not None else "health-wait"

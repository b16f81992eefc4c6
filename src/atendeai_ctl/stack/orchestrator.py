"""up / down / status over any Runtime: dependency order, parallel starts, active readiness.

Each service gets a thread: its container is created at once (in parallel with the others),
started as soon as its own `depends_on` conditions hold, and probed actively until ready, so
time-to-healthy is close to the services' own start time rather than a healthcheck interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.graph import dependents
from atendeai_ctl.stack.runtime import Progress, Runtime, ServiceStatus
from atendeai_ctl.stack.spec import Service, StackSpec

Phase = Literal[
    "creating",
    "waiting",
    "starting",
    "healthy",
    "started",
    "completed",
    "current",
    "failed",
    "scaling",
]
OnEvent = Callable[[str, Phase, float, str], None]
"""(service, phase, seconds since up began, detail)."""
JobCheck = Callable[[Service], bool]
"""Whether a one-shot job's work is already done (e.g. the schema is at head)."""

LOG_LINES = 30
CRASH_LOOP = 3
"""Restarts during one wait after which a service is failed at once, not at the timeout."""
POLL_MAX_S = 0.1
"""The longest pause between two readiness checks of one service. Every hand-off on the
critical path (postgres ready -> migrate started -> exited -> auth started) pays about half
of it on average; a check is an engine inspect or one exec'd pg_isready/redis-cli."""


@dataclass
class Failure:
    service: str
    reason: str
    health_output: str = ""
    exit_code: int | None = None
    logs: list[str] = field(default_factory=list)
    hint: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "reason": self.reason,
            "health_output": self.health_output,
            "exit_code": self.exit_code,
            "logs": self.logs,
            "hint": self.hint,
        }


@dataclass
class ServiceResult:
    name: str
    action: str = "unchanged"  # created / recreated / unchanged
    result: str = "skipped"  # healthy / started / completed / current / failed / skipped
    # current: a one-shot job whose work was already done (schema at head): not run again
    seconds: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "action": self.action,
            "result": self.result,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
        }


@dataclass
class UpReport:
    project: str
    runtime: str
    services: list[ServiceResult]
    seconds: float
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": 1,
            "project": self.project,
            "runtime": self.runtime,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "services": [s.to_dict() for s in self.services],
            "failure": self.failure.to_dict() if self.failure else None,
        }


@dataclass
class StatusReport:
    project: str
    runtime: str
    services: list[ServiceStatus]
    one_shot: frozenset[str] = frozenset()
    warnings: list[str] = field(default_factory=list)
    """Worth an operator's attention, not a failure: the exit status ignores them (e.g. a
    scheduled backup that is late, stack/backup_status.py)."""

    def healthy(self, status: ServiceStatus) -> bool:
        if status.name in self.one_shot:
            return status.state == "exited" and status.exit_code == 0
        return status.state == "running" and status.health in ("healthy", "none")

    @property
    def ok(self) -> bool:
        return all(self.healthy(s) for s in self.services)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": 1,
            "project": self.project,
            "runtime": self.runtime,
            "services": [s.to_dict() for s in self.services],
            "warnings": list(self.warnings),
        }


def starts_early(service: Service) -> bool:
    """`x-atendeai.start_early: all`, for a service whose own start is slow and that copes
    without what it depends on: started at once, before any dependency holds, so its start
    overlaps theirs instead of following it (the migrate job: its command waits for the
    database itself, `migrate up --wait-db`; auth: it answers 503 until Redis and the database
    answer, and readiness asks them again on each probe, auth/deps.py).

    It is judged ready (a job: complete) only once all its conditions hold. Only when every
    copy is created afresh: a service being replaced waits as before, so new code never serves
    beside an old schema while the old copy still could."""
    block = service.extensions.get("x-atendeai") or {}
    return isinstance(block, dict) and block.get("start_early") == "all"


def one_shot_services(spec: StackSpec) -> frozenset[str]:
    """Jobs that run to completion (others wait for service_completed_successfully)."""
    return frozenset(
        name
        for name in spec.services
        if "service_completed_successfully" in dependents(spec, name).values()
    )


class _Up:
    def __init__(
        self,
        spec: StackSpec,
        runtime: Runtime,
        timeout: float,
        on_event: OnEvent,
        job_is_current: JobCheck | None = None,
    ) -> None:
        self.spec, self.runtime, self.timeout, self.on_event = spec, runtime, timeout, on_event
        self.job_is_current = job_is_current
        self.t0 = time.monotonic()
        self.started = {name: threading.Event() for name in spec.services}
        self.ready = {name: threading.Event() for name in spec.services}
        self.abort = threading.Event()
        self.results = {name: ServiceResult(name) for name in spec.services}
        self.one_shot = one_shot_services(spec)
        self.failure: Failure | None = None
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def emit(self, service: str, phase: Phase, detail: str = "") -> None:
        self.on_event(service, phase, self.elapsed(), detail)

    def fail(
        self,
        service: Service,
        reason: str,
        health_output: str = "",
        hint: str | None = None,
        *,
        raised: bool = False,
    ) -> None:
        """`raised`: the failure is an error of ours or the engine's, not the service's exit,
        so an exit code left by an earlier run would only mislead."""
        with self.lock:
            if self.failure is None:
                status = self.runtime.inspect(service)
                if raised:
                    status.exit_code = None
                try:
                    raw = b"".join(self.runtime.logs(service.name, tail=LOG_LINES, follow=False))
                    logs = raw.decode(errors="replace").splitlines()[-LOG_LINES:]
                except AtendeaiError:
                    logs = []
                self.failure = Failure(
                    service.name, reason, health_output, status.exit_code, logs, hint
                )
            self.results[service.name].result = "failed"
            self.abort.set()
        self.emit(service.name, "failed", reason)

    def wait_for_dependencies(self, service: Service) -> bool:
        """Until every `depends_on` condition holds (False: `up` is aborting)."""
        for dep, condition in service.depends_on:
            event = self.started[dep] if condition == "service_started" else self.ready[dep]
            if not event.is_set():
                self.emit(
                    service.name, "waiting", f"for {dep} ({condition.removeprefix('service_')})"
                )
            while not event.wait(0.05):
                if self.abort.is_set():
                    return False
            if self.abort.is_set():
                return False
        return True

    def run(self, name: str) -> None:
        service = self.spec.services[name]
        result = self.results[name]
        copies = service.instances()
        try:
            self.emit(name, "creating")
            actions = [self.runtime.ensure(self.spec, copy) for copy in copies]
            result.action = next((a for a in actions if a != "unchanged"), "unchanged")
            # A fresh service that copes without (some of) its dependencies starts beside
            # them and is judged ready only once they hold (starts_early).
            early = starts_early(service) and set(actions) == {"created"}
            if not early and not self.wait_for_dependencies(service):
                return
            if name in self.one_shot:
                return self.run_job(service, self.runtime.inspect(service), early)
            pending = []
            for copy in copies:
                status = self.runtime.inspect(copy)
                if status.state != "running":
                    self.emit(name, "starting", "" if len(copies) == 1 else copy.instance_name)
                    self.runtime.start(copy)
                    pending.append(copy)
                elif status.health != "healthy":
                    pending.append(copy)
                # Already running, and the engine's own healthcheck passed: a probe would only
                # say it again (the auth probe starts a Python process in the container).
            self.started[name].set()
            if early and not self.wait_for_dependencies(service):
                return
            if not pending:
                self.done(service, "healthy")
            for copy in pending:
                self.await_ready(copy)
                if self.abort.is_set():
                    return
            self.scale_down(service)
        except AtendeaiError as exc:
            self.fail(service, exc.message, hint=exc.hint, raised=True)
        except Exception as exc:  # an engine error mid-way must still end in a report
            self.fail(service, f"{type(exc).__name__}: {exc}", raised=True)

    def scale_down(self, service: Service) -> None:
        """Copies beyond the wanted count go, highest number first, each drained first (out
        of the gateway's pool, in-flight requests finished) once the wanted ones are ready."""
        surplus = [n for n in self.runtime.replicas(service) if n > service.replicas]
        if not surplus:
            return
        from atendeai_ctl.stack.rollout import retire

        for number in sorted(surplus, reverse=True):
            copy = service.instance(number)
            self.emit(service.name, "scaling", f"draining {copy.instance_name}")
            retire(self.spec, self.runtime, copy)
        self.emit(service.name, self.results[service.name].result)  # type: ignore[arg-type]

    def run_job(self, service: Service, status: ServiceStatus, early: bool = False) -> None:
        """A one-shot job runs again on every `up`, unless its work is already done: then an
        unchanged container that last exited 0 is left alone, and a new one (after `down`)
        runs without holding up the services that wait for it."""
        name = service.name
        if early:
            # Started before its dependencies hold (it waits for them itself); whether its
            # work is already done is asked once they do, as below.
            self.emit(name, "starting")
            self.runtime.start(service)
            self.started[name].set()
            if not self.wait_for_dependencies(service):
                return
            if self.job_is_current is not None and self.job_is_current(service):
                self.ready[name].set()  # dependents go on; `up` still waits for the job
            return self.await_ready(service)
        current = self.job_is_current is not None and self.job_is_current(service)
        action = self.results[name].action
        if current and action == "unchanged" and status.state == "exited" and not status.exit_code:
            self.started[name].set()
            return self.done(service, "current")
        self.emit(name, "starting")
        self.runtime.start(service)
        self.started[name].set()
        if current and action == "created":
            self.ready[name].set()  # dependents go on; `up` still waits for the job to succeed
        self.await_ready(service)

    def await_ready(self, service: Service) -> None:
        one_shot = service.name in self.one_shot
        probing = service.healthcheck is not None and not one_shot
        deadline = time.monotonic() + self.timeout
        delay, output, tick = 0.05, "", 0
        restarts = self.runtime.inspect(service).restarts
        while not self.abort.is_set():
            # Probing is the fast path; the container's own state is read every few rounds,
            # so a crash fails at once instead of at the timeout.
            if (not probing or tick % 4 == 0) and self.settled_by_state(service, output, restarts):
                return
            if probing:
                probe = self.runtime.probe(service)
                if probe.ok:
                    return self.done(service, "healthy")
                output = probe.output or output
            if time.monotonic() > deadline:
                return self.fail(service, f"not ready after {self.timeout:g}s (--timeout)", output)
            time.sleep(delay)
            delay, tick = min(delay * 1.5, POLL_MAX_S), tick + 1

    def settled_by_state(self, service: Service, output: str, restarts: int) -> bool:
        status = self.runtime.inspect(service)
        one_shot = service.name in self.one_shot
        if status.restarts - restarts >= CRASH_LOOP:
            self.fail(service, f"keeps crashing (restarted {status.restarts - restarts} times)")
            return True
        if status.state in ("exited", "dead"):
            if one_shot and status.exit_code == 0:
                self.done(service, "completed")
                return True
            if one_shot or service.restart == "no" or status.state == "dead":
                self.fail(service, f"exited with code {status.exit_code}", output)
                return True
        elif status.state == "running" and service.healthcheck is None and not one_shot:
            self.done(service, "started")
            return True
        return False

    def done(self, service: Service, result: Phase) -> None:
        self.results[service.name].result = result
        self.results[service.name].seconds = self.elapsed()
        self.ready[service.name].set()
        self.emit(service.name, result)


def up(
    spec: StackSpec,
    runtime: Runtime,
    *,
    project: str,
    timeout: float = 120.0,
    on_event: OnEvent | None = None,
    progress: Progress | None = None,
    job_is_current: JobCheck | None = None,
) -> UpReport:
    """Bring every service up and ready. Raises for what fails before anything starts.

    `job_is_current` lets one-shot jobs whose work is already done be skipped (see
    project.job_checks); without it every job runs on every `up`, as with Compose."""
    runtime.preflight(spec, progress or (lambda *_: None))
    runtime.prepare(spec)
    run = _Up(spec, runtime, timeout, on_event or (lambda *_: None), job_is_current)
    with ThreadPoolExecutor(max_workers=max(1, len(spec.services))) as pool:
        list(pool.map(run.run, spec.services))
    return UpReport(
        project,
        runtime.name,
        [run.results[name] for name in spec.services],
        run.elapsed(),
        run.failure,
    )


def status(spec: StackSpec, runtime: Runtime, *, project: str) -> StatusReport:
    """What runs now, asked of the engine or the processes (never a cache), every service at
    once. A 'starting' health is settled by probing once, not by waiting."""

    def one(service: Service) -> ServiceStatus:
        current = runtime.inspect(service)
        if current.state == "running" and current.health == "starting":
            current.health = "healthy" if runtime.probe(service).ok else "starting"
        return current

    def copies(service: Service) -> list[Service]:
        """Each copy that exists (replica 1 alone, as `missing`, when none does)."""
        return [service.instance(n) for n in runtime.replicas(service) or [1]]

    with ThreadPoolExecutor(max_workers=max(1, len(spec.services))) as pool:
        every = [c for group in pool.map(copies, spec.services.values()) for c in group]
        services = list(pool.map(one, every))
    # A service behind a profile counts once it exists, whatever profile started it; absent,
    # it was simply not asked for.
    services = [
        s
        for s in services
        if s.state != "missing" or not spec.services[s.service or s.name].profiles
    ]
    return StatusReport(project, runtime.name, services, one_shot_services(spec))

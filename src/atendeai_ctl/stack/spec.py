"""compose/docker-compose.yml -> a validated, interpolated model of the stack.

Strict on purpose: an unknown key, a wrong type, a dependency cycle or an undefined ${VAR}
without default each stop with one line naming the file, the service and the key. Only the
part of the Compose format this stack needs is accepted; `x-*` extension keys are kept for the
runtimes (Compose itself ignores them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from atendeai_ctl.config import connect_host
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.interpolate import InterpolationError, interpolate
from atendeai_ctl.stack.profiles import ALL_PROFILES, PROFILE_NAME

Condition = Literal["service_started", "service_healthy", "service_completed_successfully"]
CONDITIONS: tuple[str, ...] = (
    "service_started",
    "service_healthy",
    "service_completed_successfully",
)
SERVICE_KEYS = frozenset(
    {
        "image", "build", "command", "entrypoint", "environment", "volumes", "ports",
        "depends_on", "healthcheck", "restart", "user", "stop_signal", "stop_grace_period",
        "working_dir", "labels", "profiles", "networks", "logging",
    }
)  # fmt: skip
TOP_KEYS = frozenset({"version", "name", "services", "volumes", "networks"})
LOGGING_KEYS = frozenset({"driver", "options"})
HEALTH_KEYS = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})
RESTART = frozenset({"no", "always", "on-failure", "unless-stopped"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@dataclass(frozen=True)
class Port:
    host_ip: str
    host_port: int
    target: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Mount:
    source: str  # a volume name from the top-level `volumes`, or an absolute host path
    target: str
    kind: Literal["volume", "bind"]
    read_only: bool = False
    # A read-only bind mount of one file (a config such as haproxy.cfg): its content's digest,
    # so editing the file changes the service's config hash and `up` recreates it.
    digest: str | None = None


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # ("CMD", ...) or ("CMD-SHELL", "...")
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True)
class Logging:
    """Compose's `logging:`: which engine log driver keeps the container's stdout/stderr.

    The driver is on the hot path of a service that logs every request (the gateway): Docker's
    default json-file re-encodes each line as JSON, `local` stores it compactly and still
    feeds `docker logs` / `atendeai logs`."""

    driver: str | None = None  # None: the engine's default
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Build:
    context: str
    dockerfile: str = "Dockerfile"
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    build: Build | None = None
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    mounts: tuple[Mount, ...] = ()
    depends_on: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None
    restart: str = "no"
    user: str | None = None
    stop_signal: str | None = None
    stop_grace_period: float | None = None
    working_dir: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    extensions: Mapping[str, Any] = field(default_factory=dict)
    profiles: tuple[str, ...] = ()  # empty: always on
    ipv4_address: str | None = None  # a fixed address on the project network
    logging: Logging | None = None  # None: the engine's default driver
    # How many copies run (stack/scale.py sets it), and which copy this object stands for:
    # replica k is container `<project>-<name>-k` (local record `<name>-k`, k > 1) and
    # publishes each port at host_port + k - 1, the same rule on every runtime.
    replicas: int = 1
    replica: int = 1

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)

    @property
    def instance_name(self) -> str:
        """`auth` for the first copy (the name a single-replica stack always had), `auth-k`
        for the others: how status rows, local pid records and logs tell them apart."""
        return self.name if self.replica == 1 else f"{self.name}-{self.replica}"

    def instance(self, number: int) -> Service:
        """Replica `number` of this service: its own number and published ports."""
        if number == self.replica:
            return self
        base = self.replica - 1
        ports = tuple(replace(p, host_port=p.host_port - base + number - 1) for p in self.ports)
        return replace(self, replica=number, ports=ports)

    def instances(self) -> list[Service]:
        return [self.instance(k) for k in range(1, self.replicas + 1)]

    def config_hash(self) -> str:
        """Like Compose's com.docker.compose.config-hash: changes iff the service's config does."""
        document = asdict(self)
        document["extensions"] = dict(self.extensions)
        # Which profile starts a service is not its configuration; and a field at its default
        # stays out, so a stack that does not use it keeps its hashes (no recreation).
        del document["profiles"]
        # Nor how many copies run, or which copy this is: scaling leaves the running ones
        # alone, and every replica is the same configuration (its ports aside).
        del document["replicas"], document["replica"]
        if self.ipv4_address is None:
            del document["ipv4_address"]
        if self.logging is None:
            del document["logging"]
        for mount in document["mounts"]:
            if mount["digest"] is None:
                del mount["digest"]
        encoded = json.dumps(document, sort_keys=True, default=str).encode()
        return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class StackSpec:
    path: Path
    services: Mapping[str, Service]
    volumes: tuple[str, ...]
    network: str
    extensions: Mapping[str, Any] = field(default_factory=dict)
    subnet: str | None = None  # the project network's fixed subnet, when the file sets one


class _Ctx:
    """Where we are in the file, so every error names the file, the service and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str, hint: str | None = None) -> AtendeaiError:
        return AtendeaiError(
            "invalid",
            f"{self.path}: {where}: {message}",
            hint or "fix the compose file; `docker compose config` shows the Compose view of it",
        )


def parse_duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a duration such as 5s, 1m30s or 500ms")
    pos, total = 0, 0.0
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    for match in _DURATION.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * scale[match.group(2)]
        pos = match.end()
    if pos != len(value):
        raise ValueError(f"{value!r} is not a duration such as 5s, 1m30s or 500ms")
    return total


def _interpolate_tree(node: Any, env: Mapping[str, str], ctx: _Ctx, where: str) -> Any:
    if isinstance(node, str):
        try:
            return interpolate(node, env)
        except InterpolationError as exc:
            raise ctx.fail(where, str(exc), "set it in the environment, .env or configs/") from exc
    if isinstance(node, dict):
        return {
            k: _interpolate_tree(v, env, ctx, f"{where}.{k}" if where else str(k))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate_tree(v, env, ctx, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def _str_list(value: Any, ctx: _Ctx, where: str, *, shell_string: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        if shell_string:
            import shlex

            return tuple(shlex.split(value))
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise ctx.fail(where, "must be a string or a list of strings")


def _mapping(value: Any, ctx: _Ctx, where: str) -> dict[str, str]:
    """environment/labels/args: a mapping, or a list of KEY=VALUE strings."""
    if value is None:
        return {}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, dict | list):
                raise ctx.fail(f"{where}.{k}", "must be a string, number or boolean")
            out[str(k)] = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item:
                raise ctx.fail(f"{where}[{i}]", "must be KEY=VALUE")
            k, _, v = item.partition("=")
            out[k] = v
        return out
    raise ctx.fail(where, "must be a mapping or a list of KEY=VALUE strings")


def _port(value: Any, ctx: _Ctx, where: str) -> Port:
    def number(raw: Any) -> int:
        text = str(raw)
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ctx.fail(where, f"{text!r} is not a port number (1-65535)")
        return int(text)

    if isinstance(value, dict):
        unknown = set(value) - {"target", "published", "host_ip", "protocol", "mode"}
        if unknown:
            raise ctx.fail(where, f"unknown key {sorted(unknown)[0]!r}")
        if "target" not in value or "published" not in value:
            raise ctx.fail(where, "needs both 'target' and 'published'")
        return Port(
            str(value.get("host_ip", "0.0.0.0")),
            number(value["published"]),
            number(value["target"]),
            str(value.get("protocol", "tcp")),
        )
    if not isinstance(value, str | int):
        raise ctx.fail(where, "must be 'HOST_IP:HOST:CONTAINER', 'HOST:CONTAINER' or a mapping")
    text, _, protocol = str(value).partition("/")
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ctx.fail(where, f"{value!r} must publish a host port: HOST:CONTAINER")
    host_ip = parts[0] if len(parts) == 3 else ""
    host, target = parts[-2], parts[-1]
    return Port(host_ip or "0.0.0.0", number(host), number(target), protocol or "tcp")


def _mount(value: Any, ctx: _Ctx, where: str, volumes: set[str], base: Path) -> Mount:
    if not isinstance(value, str):
        raise ctx.fail(where, "must be 'SOURCE:TARGET[:ro]'")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[1].startswith("/"):
        raise ctx.fail(where, f"{value!r} is not 'SOURCE:/TARGET[:ro|rw]'")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ctx.fail(where, f"mode {mode!r} must be ro or rw")
    if source.startswith(("/", ".", "~")):
        host = (base / Path(source).expanduser()).resolve()
        digest = None
        if mode == "ro" and host.is_file():
            try:
                digest = hashlib.sha256(host.read_bytes()).hexdigest()
            except OSError as exc:
                raise ctx.fail(where, f"cannot read {host}: {exc.strerror}") from exc
        return Mount(str(host), target, "bind", mode == "ro", digest)
    if source not in volumes:
        raise ctx.fail(where, f"volume {source!r} is not declared under top-level 'volumes'")
    return Mount(source, target, "volume", mode == "ro")


def _healthcheck(value: Any, ctx: _Ctx, where: str) -> Healthcheck | None:
    if not isinstance(value, dict):
        raise ctx.fail(where, "must be a mapping")
    unknown = set(value) - HEALTH_KEYS
    if unknown:
        raise ctx.fail(f"{where}.{sorted(unknown)[0]}", "unknown key")
    if value.get("disable"):
        return None
    test = value.get("test")
    if isinstance(test, str):
        test_tuple: tuple[str, ...] = ("CMD-SHELL", test)
    elif isinstance(test, list) and test and all(isinstance(t, str) for t in test):
        test_tuple = tuple(test)
    else:
        raise ctx.fail(f"{where}.test", "must be a string or a list such as ['CMD', ...]")
    if test_tuple[0] == "NONE":
        return None
    if test_tuple[0] not in ("CMD", "CMD-SHELL") or len(test_tuple) < 2:
        raise ctx.fail(f"{where}.test", "must start with CMD or CMD-SHELL and name a command")
    try:
        timings = {
            key: parse_duration(value[key])
            for key in ("interval", "timeout", "start_period")
            if key in value
        }
    except ValueError as exc:
        raise ctx.fail(where, str(exc)) from exc
    retries = value.get("retries", 3)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
        raise ctx.fail(f"{where}.retries", "must be a whole number >= 1")
    return Healthcheck(test_tuple, retries=retries, **timings)


def _logging(value: Any, ctx: _Ctx, where: str) -> Logging:
    if not isinstance(value, dict):
        raise ctx.fail(where, "must be a mapping")
    unknown = set(value) - LOGGING_KEYS
    if unknown:
        raise ctx.fail(f"{where}.{sorted(unknown, key=str)[0]}", "unknown key")
    driver = value.get("driver")
    if driver is not None and (not isinstance(driver, str) or not driver):
        raise ctx.fail(f"{where}.driver", "must be a log driver name")
    options = _mapping(value.get("options"), ctx, f"{where}.options")
    return Logging(driver=driver, options=tuple(sorted(options.items())))


def _depends_on(value: Any, ctx: _Ctx, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple((v, "service_started") for v in value)
    if not isinstance(value, dict):
        raise ctx.fail(where, "must be a list of services or a mapping of service: {condition}")
    out = []
    for name, item in value.items():
        condition = "service_started"
        if isinstance(item, dict):
            unknown = set(item) - {"condition", "restart", "required"}
            if unknown:
                raise ctx.fail(f"{where}.{name}.{sorted(unknown)[0]}", "unknown key")
            condition = item.get("condition", condition)
        elif item is not None:
            raise ctx.fail(f"{where}.{name}", "must be a mapping with 'condition'")
        if condition not in CONDITIONS:
            raise ctx.fail(f"{where}.{name}.condition", f"must be one of {', '.join(CONDITIONS)}")
        out.append((str(name), str(condition)))
    return tuple(out)


def _build(value: Any, ctx: _Ctx, where: str, base: Path) -> Build:
    if isinstance(value, str):
        value = {"context": value}
    if not isinstance(value, dict) or "context" not in value:
        raise ctx.fail(where, "must be a path or a mapping with 'context'")
    unknown = set(value) - {"context", "dockerfile", "args"}
    if unknown:
        raise ctx.fail(f"{where}.{sorted(unknown)[0]}", "unknown key")
    context = (base / str(value["context"])).resolve()
    args = _mapping(value.get("args"), ctx, f"{where}.args")
    return Build(
        str(context), str(value.get("dockerfile", "Dockerfile")), tuple(sorted(args.items()))
    )


def _service(
    name: str, raw: Any, ctx: _Ctx, volumes: set[str], base: Path, project: str
) -> Service:
    where = f"services.{name}"
    if not _SERVICE_NAME.match(name):
        raise ctx.fail(where, "service names use letters, digits, '_', '.' and '-'")
    if not isinstance(raw, dict):
        raise ctx.fail(where, "must be a mapping")
    for key in raw:
        if key not in SERVICE_KEYS and not str(key).startswith("x-"):
            raise ctx.fail(
                f"{where}.{key}",
                "unknown key",
                f"atendeai supports: {', '.join(sorted(SERVICE_KEYS))}",
            )
    build = _build(raw["build"], ctx, f"{where}.build", base) if "build" in raw else None
    image = raw.get("image")
    if image is None:
        if build is None:
            raise ctx.fail(where, "needs 'image' or 'build'")
        image = f"{project}-{name}"
    if not isinstance(image, str) or not image:
        raise ctx.fail(f"{where}.image", "must be an image name")
    restart = str(raw.get("restart", "no"))
    if restart.split(":")[0] not in RESTART:
        raise ctx.fail(f"{where}.restart", f"must be one of {', '.join(sorted(RESTART))}")
    ports = raw.get("ports", [])
    mounts = raw.get("volumes", [])
    if not isinstance(ports, list):
        raise ctx.fail(f"{where}.ports", "must be a list")
    if not isinstance(mounts, list):
        raise ctx.fail(f"{where}.volumes", "must be a list")
    for key in ("user", "stop_signal", "working_dir"):
        if key in raw and not isinstance(raw[key], str | int):
            raise ctx.fail(f"{where}.{key}", "must be a string")
    try:
        grace = parse_duration(raw["stop_grace_period"]) if "stop_grace_period" in raw else None
    except ValueError as exc:
        raise ctx.fail(f"{where}.stop_grace_period", str(exc)) from exc
    health = raw.get("healthcheck")
    return Service(
        profiles=_profiles(raw.get("profiles", []), ctx, f"{where}.profiles"),
        ipv4_address=_service_network(raw.get("networks"), ctx, f"{where}.networks"),
        name=name,
        image=image,
        build=build,
        command=_str_list(raw["command"], ctx, f"{where}.command", shell_string=True)
        if "command" in raw
        else None,
        entrypoint=_str_list(raw["entrypoint"], ctx, f"{where}.entrypoint", shell_string=True)
        if "entrypoint" in raw
        else None,
        environment=tuple(
            sorted(_mapping(raw.get("environment"), ctx, f"{where}.environment").items())
        ),
        ports=tuple(_port(p, ctx, f"{where}.ports[{i}]") for i, p in enumerate(ports)),
        mounts=tuple(
            _mount(m, ctx, f"{where}.volumes[{i}]", volumes, base) for i, m in enumerate(mounts)
        ),
        depends_on=_depends_on(raw["depends_on"], ctx, f"{where}.depends_on")
        if "depends_on" in raw
        else (),
        healthcheck=_healthcheck(health, ctx, f"{where}.healthcheck")
        if health is not None
        else None,
        restart=restart,
        user=str(raw["user"]) if "user" in raw else None,
        stop_signal=str(raw["stop_signal"]) if "stop_signal" in raw else None,
        stop_grace_period=grace,
        working_dir=str(raw["working_dir"]) if "working_dir" in raw else None,
        labels=tuple(sorted(_mapping(raw.get("labels"), ctx, f"{where}.labels").items())),
        logging=_logging(raw["logging"], ctx, f"{where}.logging") if "logging" in raw else None,
        extensions={k: v for k, v in raw.items() if str(k).startswith("x-")},
    )


def _profiles(value: Any, ctx: _Ctx, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.fail(where, "must be a list of profile names")
    for name in value:
        if not PROFILE_NAME.match(name) or name == ALL_PROFILES:
            raise ctx.fail(where, f"{name!r} is not a profile name (letters, digits, _ . -)")
    return tuple(value)


def _service_network(value: Any, ctx: _Ctx, where: str) -> str | None:
    """Only the project network, optionally with a fixed address (the gateway's, which the
    auth service trusts for forwarding headers)."""
    if value is None or value == ["default"]:
        return None
    if not isinstance(value, dict) or set(value) != {"default"}:
        raise ctx.fail(where, "only the 'default' network is supported")
    body = value["default"] or {}
    if not isinstance(body, dict) or set(body) - {"ipv4_address"}:
        raise ctx.fail(f"{where}.default", "only 'ipv4_address' is supported")
    if "ipv4_address" not in body:
        return None
    try:
        return str(ipaddress.IPv4Address(str(body["ipv4_address"])))
    except ValueError as exc:
        raise ctx.fail(f"{where}.default.ipv4_address", "must be an IPv4 address") from exc


def _subnet(value: Any, ctx: _Ctx, where: str) -> str | None:
    if value is None:
        return None
    pools = value.get("config") if isinstance(value, dict) and set(value) <= {"config"} else None
    if not isinstance(pools, list) or len(pools) != 1 or not isinstance(pools[0], dict):
        raise ctx.fail(where, "only 'config: [{subnet: CIDR}]' is supported")
    if set(pools[0]) != {"subnet"}:
        raise ctx.fail(f"{where}.config[0]", "only 'subnet' is supported")
    try:
        return str(ipaddress.IPv4Network(str(pools[0]["subnet"])))
    except ValueError as exc:
        raise ctx.fail(f"{where}.config[0].subnet", f"not an IPv4 network: {exc}") from exc


def _find_cycle(services: Mapping[str, Service]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep, _ in services[name].depends_on:
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in services:
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def load_spec(path: Path, env: Mapping[str, str], project: str) -> StackSpec:
    ctx = _Ctx(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise AtendeaiError(
            "not_found", f"{path}: no such compose file", "check --project-dir"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AtendeaiError("invalid", f"{path}: cannot read: {exc}") from exc
    try:
        # libyaml's loader when built in: 20x faster than the pure-Python one (12 ms of every
        # `status`), same errors and marks.
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ctx.fail(position, f"not valid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ctx.fail("top level", "must be a mapping with 'services'")
    for key in raw:
        if key not in TOP_KEYS and not str(key).startswith("x-"):
            raise ctx.fail(str(key), "unknown top-level key")
    extensions = {k: v for k, v in raw.items() if str(k).startswith("x-")}
    body = _interpolate_tree({k: v for k, v in raw.items() if k not in extensions}, env, ctx, "")
    services_raw = body.get("services")
    if not isinstance(services_raw, dict) or not services_raw:
        raise ctx.fail("services", "must be a non-empty mapping of services")
    volumes_raw = body.get("volumes") or {}
    if not isinstance(volumes_raw, dict):
        raise ctx.fail("volumes", "must be a mapping of volume names")
    for vname, vbody in volumes_raw.items():
        if vbody not in (None, {}):
            raise ctx.fail(f"volumes.{vname}", "only plain named volumes are supported")
    volumes = {str(v) for v in volumes_raw}
    base = path.parent
    services = {
        str(name): _service(str(name), svc, ctx, volumes, base, project)
        for name, svc in services_raw.items()
    }
    for svc in services.values():
        for dep, _ in svc.depends_on:
            if dep not in services:
                raise ctx.fail(f"services.{svc.name}.depends_on", f"unknown service {dep!r}")
    cycle = _find_cycle(services)
    if cycle:
        raise ctx.fail("depends_on", "dependency cycle: " + " -> ".join(cycle))
    network = f"{project}_default"
    networks = body.get("networks") or {}
    if not isinstance(networks, dict) or set(networks) - {"default"}:
        raise ctx.fail("networks", "only the 'default' network is supported")
    default = networks.get("default") or {}
    if not isinstance(default, dict) or set(default) - {"name", "ipam"}:
        raise ctx.fail("networks.default", "only 'name' and 'ipam' are supported")
    network = str(default.get("name", network))
    subnet = _subnet(default.get("ipam"), ctx, "networks.default.ipam")
    for svc in services.values():
        if svc.ipv4_address is None:
            continue
        if subnet is None or ipaddress.IPv4Address(svc.ipv4_address) not in ipaddress.IPv4Network(
            subnet
        ):
            raise ctx.fail(
                f"services.{svc.name}.networks.default.ipv4_address",
                f"{svc.ipv4_address} is not in the network's subnet ({subnet or 'none set'})",
            )
    return StackSpec(path, services, tuple(sorted(volumes)), network, extensions, subnet)


def published_address(spec: StackSpec, value: str) -> str:
    """`postgres:5432` in a URL -> the published `127.0.0.1:<port>`: what a service reaches on
    the stack's network, as seen from the host (the local runtime's services, `up`'s checks)."""
    for other in spec.services.values():
        for port in other.ports:
            pattern = rf"(?<=[@/]){re.escape(other.name)}:{port.target}(?=[/?]|$)"
            value = re.sub(pattern, f"{connect_host(port.host_ip)}:{port.host_port}", value)
    return value

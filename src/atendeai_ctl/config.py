"""Resolved settings: flag > environment (ATENDEAI_*) > .env in the project dir > configs/.

Every value remembers where it came from, for `atendeai config show`. The same values are the
interpolation environment of compose/docker-compose.yml, so `atendeai config env` can hand the
very same stack to `docker compose`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.state import (
    SECRET_NAMES,
    ProjectState,
    default_state_root,
    parse_env_text,
    project_state,
)

DEFAULTS_FILE = "configs/atendeai.env"
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SECRET_KEYS = frozenset(SECRET_NAMES)
# Profile `ha`: the three Sentinels and the two Redis servers, by compose service name (the
# names the Sentinels announce) and the setting that publishes each on the host.
SENTINEL_SERVICES = ("redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3")
SENTINEL_PORT_KEYS = (
    "ATENDEAI_REDIS_SENTINEL_PORT_1",
    "ATENDEAI_REDIS_SENTINEL_PORT_2",
    "ATENDEAI_REDIS_SENTINEL_PORT_3",
)
REDIS_SERVER_PORT_KEYS = {
    "redis": "ATENDEAI_REDIS_PORT",
    "redis-replica": "ATENDEAI_REDIS_REPLICA_PORT",
}


def default_project_dir() -> Path:
    """A source checkout's top level when running from one, else the copy inside the wheel."""
    package = Path(__file__).resolve().parent
    checkout = package.parent.parent
    if (checkout / "compose" / "docker-compose.yml").is_file():
        return checkout
    return package / "_project"


@dataclass(frozen=True)
class Setting:
    value: str
    source: str


@dataclass
class Config:
    project_dir: Path
    settings: dict[str, Setting]
    state_root: Path
    _state: ProjectState | None = field(default=None, repr=False)

    def get(self, key: str, default: str | None = None) -> str | None:
        setting = self.settings.get(key)
        return setting.value if setting is not None else default

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None or value == "":
            raise AtendeaiError(
                "invalid", f"setting {key} is empty", f"set {key} in the environment"
            )
        return value

    def port(self, key: str) -> int:
        raw = self.require(key)
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise AtendeaiError(
                "invalid", f"{key}={raw!r} is not a port number", "use a number from 1 to 65535"
            )
        return int(raw)

    @property
    def project(self) -> str:
        return self.require("ATENDEAI_PROJECT")

    @property
    def compose_file(self) -> Path:
        return self.project_dir / "compose" / "docker-compose.yml"

    @property
    def state(self) -> ProjectState:
        if self._state is None:
            self._state = project_state(self.state_root, self.project)
        return self._state

    def with_secrets(self, *, generate: bool) -> Config:
        """A copy that also holds the generated secrets (made now if `generate`)."""
        found = self.state.ensure_secrets() if generate else self.state.read_secrets()
        settings = dict(self.settings)
        for key, value in found.items():
            if key in SECRET_KEYS and key not in settings:
                settings[key] = Setting(value, "state")
        return Config(self.project_dir, settings, self.state_root, self._state)

    def interpolation_env(self) -> dict[str, str]:
        """What ${VAR} in the compose file sees: every setting plus the process environment."""
        env = dict(os.environ)
        env.update({k: s.value for k, s in self.settings.items()})
        return env

    def _secret(self, key: str) -> str:
        value = self.get(key)
        if not value:
            raise AtendeaiError(
                "not_found",
                f"no generated secrets for project {self.project!r} in {self.state.root}",
                "run `atendeai up` first, or pass --database-url",
            )
        return value

    def database_url(self, *, role: str = "admin") -> str:
        """The stack's PostgreSQL as the owner ('admin') or as the RLS-bound app role ('app')."""
        override = self.get("ATENDEAI_DATABASE_URL")
        if override and role == "admin":
            return override
        if role == "app":
            override = self.get("ATENDEAI_APP_DATABASE_URL")
            if override:
                return override
            user, password = "atendeai_app", self._secret("ATENDEAI_APP_DB_PASSWORD")
        else:
            user = self.require("ATENDEAI_POSTGRES_USER")
            password = self._secret("ATENDEAI_POSTGRES_PASSWORD")
        host = connect_host(self.require("ATENDEAI_BIND"))
        port = self.port("ATENDEAI_POSTGRES_PORT")
        db = self.require("ATENDEAI_POSTGRES_DB")
        return f"postgresql://{user}:{quote(password, safe='')}@{host}:{port}/{db}"

    def redis_url(self) -> str:
        override = self.get("ATENDEAI_REDIS_URL")
        if override:
            return override
        password = quote(self._secret("ATENDEAI_REDIS_PASSWORD"), safe="")
        host = connect_host(self.require("ATENDEAI_BIND"))
        return f"redis://:{password}@{host}:{self.port('ATENDEAI_REDIS_PORT')}/0"


def connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind


def _read_env_file(path: Path) -> dict[str, str]:
    try:
        return parse_env_text(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise AtendeaiError(
            "invalid", f"cannot read {path}: {exc}", "fix or remove the file"
        ) from exc


def load_config(
    overrides: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve every ATENDEAI_* setting. `overrides` are command-line flags (None = not given)."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    project_dir_raw = flags.get("ATENDEAI_PROJECT_DIR") or environ.get("ATENDEAI_PROJECT_DIR")
    project_dir = Path(project_dir_raw).resolve() if project_dir_raw else default_project_dir()
    if not (project_dir / "compose" / "docker-compose.yml").is_file():
        raise AtendeaiError(
            "not_found",
            f"{project_dir} has no compose/docker-compose.yml",
            "point --project-dir (ATENDEAI_PROJECT_DIR) at a copy of the atendeai project",
        )
    settings: dict[str, Setting] = {}
    layers = [
        (DEFAULTS_FILE, _read_env_file(project_dir / DEFAULTS_FILE)),
        (".env", _read_env_file(project_dir / ".env")),
        ("environment", {k: v for k, v in environ.items() if k.startswith("ATENDEAI_")}),
        ("flag", flags),
    ]
    for source, values in layers:
        for key, value in values.items():
            settings[key] = Setting(value, source)
    settings["ATENDEAI_PROJECT_DIR"] = Setting(
        str(project_dir), settings.get("ATENDEAI_PROJECT_DIR", Setting("", "default")).source
    )
    state_root_setting = settings.get("ATENDEAI_STATE_DIR")
    if state_root_setting is None:
        state_root_setting = Setting(str(default_state_root()), "default")
        settings["ATENDEAI_STATE_DIR"] = state_root_setting
    project = settings.get("ATENDEAI_PROJECT", Setting("atendeai", "default")).value
    if not PROJECT_NAME.match(project):
        raise AtendeaiError(
            "invalid",
            f"project name {project!r} is not valid",
            "use lowercase letters, digits, '-' and '_', starting with a letter or digit",
        )
    settings.setdefault("ATENDEAI_PROJECT", Setting(project, "default"))
    state_root = Path(state_root_setting.value).expanduser().resolve()
    config = Config(project_dir, settings, state_root)
    for key, ident in (("ATENDEAI_UID", os.getuid()), ("ATENDEAI_GID", os.getgid())):
        settings.setdefault(key, Setting(str(ident), "derived"))
    settings["ATENDEAI_JWT_KEYS_DIR"] = settings.get(
        "ATENDEAI_JWT_KEYS_DIR", Setting(str(state_root / project / "jwt"), "derived")
    )
    # `db backup`, the scheduled `backup` service (bind-mounted) and `status` share it.
    settings["ATENDEAI_BACKUP_DIR"] = settings.get(
        "ATENDEAI_BACKUP_DIR", Setting(str(state_root / project / "backups"), "derived")
    )
    _edge_settings(settings, project)
    _ha_settings(settings)
    return config


def active_profiles(config: Config) -> tuple[str, ...]:
    from atendeai_ctl.stack.profiles import parse_profiles

    return parse_profiles(config.get("ATENDEAI_PROFILES") or "")


def ha_active(settings: Mapping[str, Setting]) -> bool:
    from atendeai_ctl.stack.profiles import ALL_PROFILES, parse_profiles

    profiles = parse_profiles(settings.get("ATENDEAI_PROFILES", Setting("", "default")).value)
    return "ha" in profiles or ALL_PROFILES in profiles


def _ha_settings(settings: dict[str, Setting]) -> None:
    """The auth container's Sentinels (their names on the project network) while `ha` is
    active; empty otherwise, so auth talks to `redis` directly."""
    sentinels = ",".join(f"{name}:26379" for name in SENTINEL_SERVICES)
    derived = Setting(sentinels if ha_active(settings) else "", "derived")
    settings.setdefault("ATENDEAI_STACK_SENTINELS", derived)
    # The local runtime's Sentinels (x-atendeai.local of auth): loopback, published ports.
    local = ",".join(
        f"127.0.0.1:{settings[key].value}" for key in SENTINEL_PORT_KEYS if key in settings
    )
    settings.setdefault(
        "ATENDEAI_LOCAL_SENTINELS", Setting(local if ha_active(settings) else "", "derived")
    )


def project_subnet(project: str) -> str:
    """A /24 for the project's network, the same on every run: the gateway needs a fixed
    address in it (the one the auth service trusts), and two projects on one engine must not
    share a subnet. Taken from 10.96.0.0/11 by a hash of the name (8192 choices); set
    ATENDEAI_SUBNET when it meets another network."""
    import hashlib

    index = int.from_bytes(hashlib.sha256(project.encode()).digest()[:2], "big") % 8192
    return f"10.{96 + index // 256}.{index % 256}.0/24"


def _edge_settings(settings: dict[str, Setting], project: str) -> None:
    """The project network's subnet, the gateway's fixed address in it, and what the auth
    service trusts for forwarding headers: the gateway's address while the edge profile is
    active, nothing otherwise (set ATENDEAI_AUTH_TRUSTED_PROXIES to decide it yourself)."""
    import ipaddress

    from atendeai_ctl.stack.profiles import ALL_PROFILES, parse_profiles

    subnet_setting = settings.setdefault(
        "ATENDEAI_SUBNET", Setting(project_subnet(project), "derived")
    )
    try:
        network = ipaddress.IPv4Network(subnet_setting.value)
    except ValueError as exc:
        raise AtendeaiError(
            "invalid",
            f"ATENDEAI_SUBNET={subnet_setting.value!r} is not an IPv4 network: {exc}",
            "use a CIDR such as 10.96.0.0/24",
        ) from exc
    if network.num_addresses < 8:
        raise AtendeaiError(
            "invalid", f"ATENDEAI_SUBNET={network} is too small", "use a /29 or larger"
        )
    # The top of the range: the engine hands out addresses from the bottom.
    gateway = settings.setdefault(
        "ATENDEAI_GATEWAY_ADDRESS", Setting(str(network.broadcast_address - 1), "derived")
    )
    profiles = parse_profiles(settings.get("ATENDEAI_PROFILES", Setting("", "default")).value)
    edge = "edge" in profiles or ALL_PROFILES in profiles
    settings.setdefault(
        "ATENDEAI_AUTH_TRUSTED_PROXIES", Setting(gateway.value if edge else "", "derived")
    )
    # The local runtime's gateway reaches auth from loopback (x-atendeai.local of auth).
    settings.setdefault(
        "ATENDEAI_LOCAL_TRUSTED_PROXIES", Setting("127.0.0.1" if edge else "", "derived")
    )
    # HAProxy takes the origins as separate words: commas become spaces.
    cors = settings.get("ATENDEAI_CORS_ORIGINS")
    if cors is not None:
        words = " ".join(o for o in re.split(r"[\s,]+", cors.value) if o)
        settings["ATENDEAI_CORS_ORIGINS"] = Setting(words, cors.source)

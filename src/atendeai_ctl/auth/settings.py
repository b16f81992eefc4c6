"""The auth service's tunables, read once from ATENDEAI_AUTH_* variables.

One frozen object is passed to every library call that needs a policy value, so tests can
lower the bcrypt cost or the rate limits without touching process-wide state.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from atendeai_ctl.errors import AtendeaiError

MIN_BCRYPT_COST = 10
DEFAULT_BCRYPT_COST = 12


def _int(environ: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AtendeaiError("invalid", f"{key}={raw!r} is not a whole number") from None
    if value < minimum:
        raise AtendeaiError("invalid", f"{key}={value} is below the minimum {minimum}")
    return value


def _seconds(environ: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise AtendeaiError("invalid", f"{key}={raw[:40]!r} is not a number of seconds") from None
    if not value >= minimum or value > 3600:  # `not >=` refuses NaN too
        raise AtendeaiError("invalid", f"{key}={raw[:40]!r} is outside {minimum}..3600 seconds")
    return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(raw: str, key: str = "ATENDEAI_AUTH_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Addresses or CIDRs separated by commas or spaces; a bad entry is one clear error."""
    networks = []
    for entry in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise AtendeaiError(
                "invalid",
                f"{key}: {entry[:60]!r} is not an IP address or CIDR",
                "use addresses or networks such as 10.0.0.1, 172.16.0.0/12 or fd00::/8,"
                " separated by commas",
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class RateLimits:
    """Fixed-window limits; a limit of 0 switches that limiter off."""

    login_failures_per_account: int = 5
    login_failures_per_ip: int = 50
    login_failure_window_s: int = 900
    requests_per_ip: int = 6000
    request_window_s: int = 60


@dataclass(frozen=True)
class AuthSettings:
    issuer: str = "atendeai-auth"
    audience: str = "atendeai-api"
    access_ttl_s: int = 900
    refresh_ttl_s: int = 30 * 86400
    max_issue_ttl_s: int = 30 * 86400
    refresh_grace_s: int = 5
    bcrypt_cost: int = DEFAULT_BCRYPT_COST
    min_password_length: int = 12
    rate: RateLimits = RateLimits()
    trusted_proxies: tuple[Network, ...] = field(default=())
    """Peers whose X-Forwarded-For is believed (see forwarding.py); empty: none is."""
    db_timeout_s: float = 0.8
    """The longest a request waits for a pooled PostgreSQL connection, and the longest it may
    keep one (deps.Leases): a stopped or unreachable server costs a request this, then 503."""
    redis_timeout_s: float = 0.8
    """Connect and reply timeout of the Redis clients: the same bound for Redis."""

    def __post_init__(self) -> None:
        if self.bcrypt_cost < MIN_BCRYPT_COST or self.bcrypt_cost > 31:
            raise AtendeaiError(
                "invalid",
                f"bcrypt cost {self.bcrypt_cost} is outside {MIN_BCRYPT_COST}..31",
                "raise ATENDEAI_AUTH_BCRYPT_COST; lowering it below 10 is not allowed",
            )
        if self.access_ttl_s <= 0 or self.refresh_ttl_s <= 0:
            raise AtendeaiError("invalid", "token lifetimes must be positive")

    def with_(self, **changes: object) -> AuthSettings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuthSettings:
        env = os.environ if environ is None else environ
        rate = RateLimits(
            login_failures_per_account=_int(env, "ATENDEAI_AUTH_LOGIN_FAILURES_PER_ACCOUNT", 5),
            login_failures_per_ip=_int(env, "ATENDEAI_AUTH_LOGIN_FAILURES_PER_IP", 50),
            login_failure_window_s=_int(env, "ATENDEAI_AUTH_LOGIN_FAILURE_WINDOW", 900, 1),
            requests_per_ip=_int(env, "ATENDEAI_AUTH_REQUESTS_PER_IP", 6000),
            request_window_s=_int(env, "ATENDEAI_AUTH_REQUEST_WINDOW", 60, 1),
        )
        return cls(
            issuer=env.get("ATENDEAI_AUTH_ISSUER") or cls.issuer,
            audience=env.get("ATENDEAI_AUTH_AUDIENCE") or cls.audience,
            access_ttl_s=_int(env, "ATENDEAI_AUTH_ACCESS_TTL", 900, 1),
            refresh_ttl_s=_int(env, "ATENDEAI_AUTH_REFRESH_TTL", 30 * 86400, 1),
            refresh_grace_s=_int(env, "ATENDEAI_AUTH_REFRESH_GRACE", 5),
            bcrypt_cost=_int(env, "ATENDEAI_AUTH_BCRYPT_COST", DEFAULT_BCRYPT_COST),
            rate=rate,
            trusted_proxies=parse_networks(env.get("ATENDEAI_AUTH_TRUSTED_PROXIES", "")),
            db_timeout_s=_seconds(env, "ATENDEAI_AUTH_DB_TIMEOUT", cls.db_timeout_s, 0.05),
            redis_timeout_s=_seconds(env, "ATENDEAI_AUTH_REDIS_TIMEOUT", cls.redis_timeout_s, 0.05),
        )

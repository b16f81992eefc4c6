"""Where the Redis primary is: one fixed address, or whatever Redis Sentinel says (profile `ha`).

ATENDEAI_REDIS_URL always gives the password and database; it gives the address too unless
ATENDEAI_REDIS_SENTINELS (`host:port` entries, comma-separated) is set, in which case every
client asks those Sentinels for the primary of ATENDEAI_REDIS_MASTER (default `atendeai`):
redis-py's Sentinel pools for its own clients (they ask again on every new connection and drop
a connection that answers READONLY), and `SentinelResolver` for the hand-written pipelined
client of the hot path (_resp.py), which also listens for Sentinel's `+switch-master`, since
redis-py does not (redis-py#3867) and a connection that never breaks would otherwise keep
talking to a demoted primary until a write fails.

With a replica there is a second question: is a revocation safe from a failover? Replication
is asynchronous, so a denylist entry the primary acknowledged can vanish if the primary dies
before the replica has it, and the token it blocked would work again. `wait_replicas` (one by
default when Sentinels are set; ATENDEAI_REDIS_WAIT_REPLICAS) makes revocation writes end in
`WAIT n ms` (ATENDEAI_REDIS_WAIT_TIMEOUT_MS); fewer acknowledgements raise
`ReplicationUnconfirmed`, which callers report as a failure (HTTP 503, CLI exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel

from atendeai_ctl.errors import AtendeaiError

Address = tuple[str, int]
DEFAULT_MASTER = "atendeai"
DEFAULT_WAIT_TIMEOUT_MS = 500
SWITCH_CHANNEL = "+switch-master"


class ReplicationUnconfirmed(redis.RedisError):
    """A revocation reached the primary, but no replica confirmed it in time: a failover now
    could lose it, so it must not be reported as done."""


def parse_sentinels(raw: str, key: str = "ATENDEAI_REDIS_SENTINELS") -> tuple[Address, ...]:
    """`host:port` entries separated by commas or spaces (`[v6]:port` for IPv6 literals)."""
    found: list[Address] = []
    for entry in raw.replace(",", " ").split():
        host, sep, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if (
            not sep
            or not host
            or not port.isascii()
            or not port.isdigit()
            or not 0 < int(port) < 65536
            or not host.isprintable()
            or any(c in host for c in "[]/@")
        ):
            raise AtendeaiError(
                "invalid",
                f"{key}: {entry[:60]!r} is not host:port",
                "list the Sentinels as host:port, separated by commas,"
                " such as redis-sentinel-1:26379,redis-sentinel-2:26379",
            )
        found.append((host, int(port)))
    return tuple(found)


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key) or ""
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise AtendeaiError("invalid", f"{key}={raw[:40]!r} is not a whole number")
    return int(raw)


@dataclass(frozen=True)
class RedisTarget:
    """How to reach the Redis primary; every client of the service and the CLI is built here."""

    url: str
    sentinels: tuple[Address, ...] = ()
    master: str = DEFAULT_MASTER
    wait_replicas: int = 0
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    # Announced address -> address to dial: the CLI on the host reaches the containers the
    # Sentinels name (`redis-replica:6379`) through their published ports.
    address_map: Mapping[Address, Address] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        url: str | None = None,
        address_map: Mapping[Address, Address] | None = None,
    ) -> RedisTarget:
        sentinels = parse_sentinels(env.get("ATENDEAI_REDIS_SENTINELS") or "")
        master = env.get("ATENDEAI_REDIS_MASTER") or DEFAULT_MASTER
        if not master.isascii() or not master.replace("-", "").replace("_", "").isalnum():
            raise AtendeaiError(
                "invalid",
                f"ATENDEAI_REDIS_MASTER={master[:40]!r} is not a Sentinel master name",
                "use letters, digits, '-' and '_'",
            )
        return cls(
            url=url or env.get("ATENDEAI_REDIS_URL") or "",
            sentinels=sentinels,
            master=master,
            wait_replicas=_int(env, "ATENDEAI_REDIS_WAIT_REPLICAS", 1 if sentinels else 0),
            wait_timeout_ms=_int(env, "ATENDEAI_REDIS_WAIT_TIMEOUT_MS", DEFAULT_WAIT_TIMEOUT_MS),
            address_map=dict(address_map or {}),
        )

    @property
    def password(self) -> str | None:
        parsed = urlparse(self.url)
        return unquote(parsed.password) if parsed.password else None

    @property
    def username(self) -> str | None:
        parsed = urlparse(self.url)
        return unquote(parsed.username) if parsed.username else None

    @property
    def db(self) -> int:
        return int(urlparse(self.url).path.lstrip("/") or 0)

    def where(self) -> str:
        """For messages: the address, or the Sentinels and master name (never a password)."""
        if self.sentinels:
            names = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"master {self.master!r} of Sentinels {names}"
        parsed = urlparse(self.url)
        return f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"

    def _sentinel_kwargs(self, timeout: float) -> dict[str, Any]:
        # The Sentinels of the stack require the same password as the servers.
        return {
            "password": self.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }

    def _server_kwargs(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "db": self.db}

    def sync_client(self, *, socket_timeout: float, connect_timeout: float) -> redis.Redis:
        if not self.sentinels:
            return redis.Redis.from_url(
                self.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
            )
        manager = _MappedSentinel(
            list(self.sentinels),
            address_map=self.address_map,
            sentinel_kwargs=self._sentinel_kwargs(connect_timeout),
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **self._server_kwargs(),
        )
        return manager.master_for(self.master)

    def async_client(
        self,
        *,
        max_connections: int,
        pool_timeout: float,
        socket_timeout: float,
        connect_timeout: float,
    ) -> aioredis.Redis:
        if not self.sentinels:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=max_connections,
                timeout=pool_timeout,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
            )
            return aioredis.Redis(connection_pool=pool)
        manager = _AsyncMappedSentinel(
            list(self.sentinels),
            address_map=self.address_map,
            sentinel_kwargs=self._sentinel_kwargs(connect_timeout),
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            **self._server_kwargs(),
        )
        # redis-py has no blocking Sentinel pool: past max_connections a call fails (503).
        return manager.master_for(self.master, max_connections=max_connections)

    def resolver(self, *, timeout: float = 1.0) -> SentinelResolver | None:
        return SentinelResolver(self, timeout=timeout) if self.sentinels else None

    def denylist_wait(self) -> tuple[int, int]:
        return self.wait_replicas, self.wait_timeout_ms


class _MappedSentinel(redis.sentinel.Sentinel):
    def __init__(self, *args: Any, address_map: Mapping[Address, Address], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.address_map = address_map

    def discover_master(self, service_name: str) -> Address:
        host, port = super().discover_master(service_name)
        return self.address_map.get((host, int(port)), (host, int(port)))


class _AsyncMappedSentinel(asentinel.Sentinel):
    def __init__(self, *args: Any, address_map: Mapping[Address, Address], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.address_map = address_map

    async def discover_master(self, service_name: str) -> Address:
        host, port = await super().discover_master(service_name)
        return self.address_map.get((host, int(port)), (host, int(port)))


class SentinelResolver:
    """The primary's address for the pipelined client, and news of a switch as it happens.

    `address()` asks the Sentinels (the first that answers and does not consider the master
    down); `watch()` holds a subscription to `+switch-master` on one Sentinel at a time and
    calls back with the new address, moving to the next Sentinel when one goes away.
    """

    def __init__(self, target: RedisTarget, *, timeout: float = 1.0) -> None:
        self.target = target
        self.timeout = timeout
        self._manager = _AsyncMappedSentinel(
            list(target.sentinels),
            address_map=target.address_map,
            sentinel_kwargs=target._sentinel_kwargs(timeout),
        )

    async def address(self) -> Address:
        try:
            return await self._manager.discover_master(self.target.master)
        except redis.sentinel.MasterNotFoundError as exc:
            raise redis.ConnectionError(f"no Redis primary known to the Sentinels: {exc}") from None
        except (redis.RedisError, OSError) as exc:
            raise redis.ConnectionError(f"cannot ask the Sentinels: {exc}") from None

    async def watch(self, on_switch: Callable[[Address], None]) -> None:
        """Runs until cancelled."""
        index = 0
        while True:
            host, port = self.target.sentinels[index % len(self.target.sentinels)]
            index += 1
            client = aioredis.Redis(
                host=host,
                port=port,
                password=self.target.password,
                socket_connect_timeout=self.timeout,
            )
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(SWITCH_CHANNEL)
                    async for message in pubsub.listen():
                        moved = parse_switch(message, self.target.master)
                        if moved is not None:
                            on_switch(self.target.address_map.get(moved, moved))
            except (TimeoutError, redis.RedisError, OSError):
                await asyncio.sleep(min(0.5, self.timeout))
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    await client.aclose()


def parse_switch(message: Mapping[str, Any] | None, master: str) -> Address | None:
    """`+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>` for our master."""
    if not message or message.get("type") != "message":
        return None
    data = message.get("data")
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    parts = text.split()
    if len(parts) != 5 or parts[0] != master or not parts[4].isdigit():
        return None
    return parts[3], int(parts[4])

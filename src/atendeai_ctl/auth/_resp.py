"""A minimal pipelining Redis client for the hot path.

Every /auth/* request makes one Redis call (the rate-limit + denylist script). redis-py's
asyncio client checks a connection out of a pool, arms a timeout and parses in Python for
each call; here all concurrent requests of a worker share one connection: commands are
written as they come and replies are matched to waiters in order (RESP is ordered), parsed by
hiredis in C. Commands issued during one event-loop iteration are buffered and leave in one
write at its end (a write is a syscall, and it cost more than the rest of a call), and under
load their replies arrive in one read, which saves syscalls as well as Python work.

Failure model: if the connection drops, or the oldest reply is late by more than `timeout`,
the connection is closed and every waiter gets redis.ConnectionError; the next call
reconnects.

With a `resolver` (Sentinel, redis_ha.py) every connect asks it for the primary's address, so
a reconnect after any error is a re-resolution; a READONLY reply (the server was demoted) and
Sentinel's `+switch-master` also drop the connection at once, failing its waiters (503s for
the few requests in flight, rather than writes sent to a replica).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import hiredis
import redis

if TYPE_CHECKING:
    from atendeai_ctl.auth.redis_ha import Address, SentinelResolver


def _encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: PipelinedRedis) -> None:
        self.client = client
        self.reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.client._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:
                continue
            future = pending.popleft()[1]
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                if str(reply).startswith("READONLY"):
                    # A demoted primary: nothing more goes to it; reconnecting re-resolves.
                    future.set_exception(redis.ReadOnlyError(str(reply)))
                    self.client.drop()
                    return
                future.set_exception(redis.ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self)


class PipelinedRedis:
    def __init__(
        self, url: str, *, timeout: float = 2.0, resolver: SentinelResolver | None = None
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "redis":
            raise ValueError("only redis:// URLs are supported")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.db = int(parsed.path.lstrip("/") or 0)
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._pending: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self.resolver = resolver
        self._switch_watch: asyncio.Task[None] | None = None
        self.switches = 0  # +switch-master events seen (tests, the drill)

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            host, port = self.host, self.port
            if self.resolver is not None:
                if self._switch_watch is None or self._switch_watch.done():
                    self._switch_watch = asyncio.ensure_future(self.resolver.watch(self._switched))
                host, port = await self.resolver.address()
            try:
                transport, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), host, port),
                    self.timeout,
                )
            except (TimeoutError, OSError) as exc:
                raise redis.ConnectionError(f"cannot connect to Redis: {exc}") from None
            self._transport = transport
            self._protocol = protocol
            # Watched from here on: a server that accepts the connection but never answers
            # (stopped, or a dropped network) fails AUTH too, not only later commands.
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.ensure_future(self._watch())
            setup = []
            if self.password is not None:
                user = (self.username,) if self.username else ()
                setup.append(self._send(("AUTH", *user, self.password)))
            if self.db:
                setup.append(self._send(("SELECT", self.db)))
            try:
                await asyncio.gather(*setup)
            except redis.RedisError as exc:
                transport.close()
                self._lost(protocol)
                raise redis.ConnectionError(f"Redis refused the connection: {exc}") from None

    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((time.monotonic(), future))
        self._outgoing.append(_encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Write every command buffered during this loop iteration, in order, at once."""
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and outgoing:
            self._transport.write(b"".join(outgoing))

    async def call(self, *args: Any) -> Any:
        if self._transport is None or self._transport.is_closing():
            await self._connect()
        return await self._send(args)

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, falling back to EVAL once when the server has not cached the script."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script, len(keys), *keys, *args)

    def drop(self) -> None:
        """Close the connection now, failing its waiters; the next call connects afresh."""
        transport, protocol = self._transport, self._protocol
        if protocol is not None:
            self._lost(protocol)
        if transport is not None:
            transport.close()

    def _switched(self, address: Address) -> None:
        self.switches += 1
        self.drop()

    def _lost(self, protocol: _Protocol) -> None:
        if protocol is not self._protocol:
            return
        self._transport = None
        self._protocol = None
        self._outgoing = []
        pending, self._pending = self._pending, collections.deque()
        for _, future in pending:
            if not future.done():
                future.set_exception(redis.ConnectionError("connection to Redis lost"))

    async def _watch(self) -> None:
        """Close a connection whose oldest reply is overdue, failing its waiters."""
        while self._transport is not None:
            await asyncio.sleep(self.timeout / 4)
            if self._pending and time.monotonic() - self._pending[0][0] > self.timeout:
                self.drop()

    async def aclose(self) -> None:
        if self._switch_watch is not None:
            self._switch_watch.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()

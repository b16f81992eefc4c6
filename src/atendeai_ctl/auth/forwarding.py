"""Who the client is: the socket peer, or what trusted proxies say in X-Forwarded-For.

The client address keys the per-IP limits and is written to every audit row, so it must not
be something a client can choose. uvicorn runs with proxy_headers=False (cli/auth.py) and the
app decides here:

- no trusted proxies configured (the default): the socket peer, and forwarding headers are
  ignored entirely;
- the peer is a trusted proxy: walk X-Forwarded-For from the right (each proxy appends the
  address it saw) and take the first address that is not itself a trusted proxy. Entries to
  the left of it were written by the client and are never believed. If the walk meets
  something that is not an IP address before that, a trusted proxy passed garbage on, and the
  peer is used; if every entry is trusted, the left-most one is the client.

Addresses are returned in canonical text (IPv4-mapped IPv6 as IPv4), so one address cannot be
spelled several ways to split a counter.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from starlette.types import Scope

from atendeai_ctl.auth.settings import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "0.0.0.0"


def parse_address(text: str) -> Address | None:
    """An address from a forwarding entry (tolerating `1.2.3.4:port` and `[v6]:port`)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else UNKNOWN


def client_address(trusted: Iterable[Network]) -> Callable[[Scope], str]:
    """The resolver for these settings: with no trusted proxy, a plain read of the peer
    (the verify hot path pays nothing for the feature it does not use)."""
    networks = tuple(trusted)
    return ClientAddress(networks) if networks else peer_address


class ClientAddress:
    """Resolves a request's client address; built once per worker from the settings."""

    def __init__(self, trusted: Iterable[Network]) -> None:
        self.trusted = tuple(trusted)

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = client[0] if client else UNKNOWN
        if not self.trusted or not self._trusted_text(peer):
            return peer
        return self._forwarded(scope, peer)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one instance per worker, lives as long
    def _trusted_text(self, text: str) -> bool:
        address = parse_address(text)
        return address is not None and self._is_trusted(address)

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def _forwarded(self, scope: Scope, peer: str) -> str:
        raw = tuple(value for name, value in scope["headers"] if name == b"x-forwarded-for")
        return self._walk(peer, raw)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one instance per worker, lives as long
    def _walk(self, peer: str, raw: tuple[bytes, ...]) -> str:
        """Remembered by the exact header values: behind a gateway every request walks the
        same few clients' headers, and parsing the addresses was ~5 µs of each (bounded, so
        a client spraying header values only churns it)."""
        entries: list[str] = []
        for value in raw:
            entries += value.decode("latin-1").split(",")
        client = peer
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                return peer
            client = str(address)
            if not self._is_trusted(address):
                return client
        return client

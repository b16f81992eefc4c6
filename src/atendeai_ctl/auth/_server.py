"""uvicorn's httptools protocol, with each response leaving in one write.

uvicorn writes the status line and headers when the app sends `http.response.start` and the
body on `http.response.body`: two `send` syscalls per response, each waking the client. On
loopback under load a syscall and the wake-up it causes cost more than building the response,
so the protocol's transport here buffers what is written during one event-loop iteration and
hands it to the real transport once, at the end of that iteration (`loop.call_soon`). Closing
flushes first, so nothing written before a close is lost or reordered; everything else (flow
control, keep-alive, timeouts, shutdown) is uvicorn's, unchanged.

`serve` passes HTTP_PROTOCOL to uvicorn (an import string, so `--workers N` children load it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HTTP_PROTOCOL = "atendeai_ctl.auth._server:CoalescingHttpToolsProtocol"


class CoalescingTransport:
    """Delegates to `transport`, except that writes of one loop iteration are joined."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)

"""uvicorn's httptools protocol, with each response leaving in one write.

uvicorn writes the status line and headers when the app sends `http.response.start` and the
body on `http.response.body`: two `send` syscalls per response, each waking the client. On
loopback under load a syscall and the wake-up it causes cost more than building the response,
so the protocol's transport here buffers what is written during one event-loop iteration and
hands it to the real transport once, at the end of that iteration (`loop.call_soon`). Closing
flushes first, so nothing written before a close is lost or reordered; everything else (flow
control, keep-alive, timeouts, shutdown) is uvicorn's, unchanged.

`serve` passes HTTP_PROTOCOL to uvicorn (an import string, so `--workers N` children load it)
and GRACEFUL_TIMEOUT_S, and runs it through `run` below.

Workers are forked, not spawned: uvicorn's supervisor starts each worker as a fresh
interpreter that imports the whole app again (about 0.7 s of CPU each here, in parallel with
everything else `up` starts). `run` imports the app's modules once, in the supervisor, before
any worker exists (no threads, no event loop, no sockets but the listening one), and forks
the workers from that: they start serving in milliseconds and share the imported code's
pages. uvicorn has no option for it; `run` gives its worker-making function
(`uvicorn._subprocess.get_subprocess`) the fork context in place of the spawn one it keeps
in `uvicorn._subprocess.spawn`, so the rest of uvicorn's worker start is its own.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
from typing import Any

import uvicorn._subprocess
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

HTTP_PROTOCOL = "atendeai_ctl.auth._server:CoalescingHttpToolsProtocol"
GRACEFUL_TIMEOUT_S = 8
"""On SIGTERM uvicorn stops accepting, closes idle keep-alive connections, lets requests in
flight finish, then runs the lifespan shutdown (Service.stop closes the pools). Requests still
running after this long are cancelled, so the pools are closed before Docker's SIGKILL (10 s
after its SIGTERM by default; `atendeai rollout` waits as long)."""


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


class _ClosingMultiprocess(Multiprocess):
    """uvicorn's worker supervisor, except that on SIGTERM/SIGINT the parent closes its copy
    of the listening socket before it signals the workers. Without this the socket stays open
    in the parent until every worker has finished its in-flight requests: the kernel keeps
    completing handshakes nobody will accept, so a gateway's new connection hangs (until a
    timeout) instead of being refused at once and retried on another replica."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def run(app: str, preload: tuple[str, ...] = (), **options: Any) -> None:
    """uvicorn.run, with _ClosingMultiprocess when there are several workers (one worker
    closes its listening socket itself when told to stop), forked after `preload` (module
    names) and the app's module are imported."""
    config = uvicorn.Config(app, **options)
    if config.workers <= 1:
        uvicorn.run(app, **options)
        return
    for module in (*preload, app.partition(":")[0]):
        importlib.import_module(module)
    uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
    sock = config.bind_socket()
    try:
        _ClosingMultiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()

"""`atendeai auth serve` as operators run it: a real process, its port, its JSON log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.servers import free_port


@dataclass
class Served:
    url: str
    output: str = ""
    """stdout once the process has stopped (the service logs JSON lines there)."""


@contextmanager
def auth_serve(env: Mapping[str, str], *args: str) -> Iterator[Served]:
    """Start `atendeai auth serve` on a free port, wait for /health/live, stop it (SIGTERM to
    its process group) on exit and keep what it printed."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "atendeai_ctl", "auth", "serve", "--port", str(port), *args],
        env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(served.url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
            time.sleep(0.1)
        yield served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        served.output, _ = proc.communicate(timeout=20)

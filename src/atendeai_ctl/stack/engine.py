"""Read calls to the Docker Engine API over its unix socket, with the standard library only.

`status`, the readiness loop of `up` and the `auto` runtime choice only read: container lists,
inspects, a ping. Through the docker SDK each of them pays for importing it (requests, urllib3:
about a tenth of a second, a third of `status`) and for a ping before the first call. Here one
short-lived HTTP/1.1 connection per call, safe to use from many threads at once. Everything that
changes the engine still goes through the SDK; so does any DOCKER_HOST that is not a unix
socket (TCP with TLS, ssh), for which `from_env` answers None.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import quote, urlencode

from atendeai_ctl.errors import AtendeaiError

DEFAULT_HOST = "unix:///var/run/docker.sock"


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def unreachable(where: str) -> AtendeaiError:
    return AtendeaiError(
        "unavailable",
        f"cannot reach the Docker engine at {where}",
        "start Docker (dockerd / Docker Desktop) or check DOCKER_HOST",
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Engine:
    def __init__(self, socket_path: str, *, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.where = f"unix://{socket_path}"

    @classmethod
    def from_env(cls, *, timeout: float = 60.0) -> Engine | None:
        host = docker_host()
        if not host.startswith("unix://"):
            return None
        return cls(host.removeprefix("unix://"), timeout=timeout)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` and its decoded JSON body; a 404 is None (no such container)."""
        target = path + (f"?{urlencode(params)}" if params else "")
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", target, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise unreachable(self.where) from exc
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status >= 400:
            message = body.decode(errors="replace").strip()
            with contextlib.suppress(ValueError):
                message = json.loads(message).get("message", message)
            raise AtendeaiError("failed", f"the Docker engine refused: {message}")
        return json.loads(body) if body.strip() and body.strip() != b"OK" else body

    def ping(self) -> None:
        self.get("/_ping")

    def containers(self, labels: list[str], *, all: bool = True) -> list[dict[str, Any]]:
        found = self.get(
            "/containers/json",
            {"all": "1" if all else "0", "filters": json.dumps({"label": labels})},
        )
        return list(found or [])

    def inspect_container(self, container_id: str) -> dict[str, Any] | None:
        found = self.get(f"/containers/{quote(container_id, safe='')}/json")
        return dict(found) if found else None

    def inspect_image(self, name: str) -> dict[str, Any] | None:
        found = self.get(f"/images/{quote(name, safe='')}/json")
        return dict(found) if found else None

    def networks(self, name: str) -> list[dict[str, Any]]:
        """Networks named exactly `name` (the engine's filter also matches parts of names)."""
        found = self.get("/networks", {"filters": json.dumps({"name": [name]})}) or []
        return [n for n in found if n.get("Name") == name]

    def inspect_volume(self, name: str) -> dict[str, Any] | None:
        found = self.get(f"/volumes/{quote(name, safe='')}")
        return dict(found) if found else None

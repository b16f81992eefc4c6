"""Is a host port free, and if not, who holds it (for an error that says what to stop)."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from atendeai_ctl.errors import AtendeaiError


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_holder(port: int) -> str | None:
    """'name (pid N)' of the process listening on `port`, when /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = Path("/proc") / pid / "fd"
        try:
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        name = (Path("/proc") / pid / "comm").read_text().strip()
                        return f"{name} (pid {pid})"
        except OSError:
            continue
    return None


def port_conflict(
    host_ip: str, host_port: int, service: str, replica: int, who: str | None
) -> AtendeaiError:
    """The one error every runtime gives for a published port somebody else holds. Replica k
    publishes the setting's port + k - 1, so the hint says which setting moves it."""
    setting = f"ATENDEAI_{service.upper().replace('-', '_')}_PORT"
    copy, hint = service, f"stop it, or set {setting} to a free port"
    if replica > 1:
        copy = f"{service}-{replica}"
        hint = (
            f"stop it, or set {setting} to a port with free ports after it"
            f" (replica {replica} publishes {setting} + {replica - 1})"
        )
    held = f" by {who}" if who else ""
    return AtendeaiError(
        "conflict", f"port {host_ip}:{host_port} for service {copy} is in use{held}", hint
    )

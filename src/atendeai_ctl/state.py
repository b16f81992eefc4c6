"""The per-project state directory: generated secrets, backups, local runtime data.

Layout under ``ATENDEAI_STATE_DIR`` (default: the per-user data dir)::

    <root>/<project>/secrets.env   generated passwords, 0600, never printed
    <root>/<project>/jwt/          signing keys (auth service)
    <root>/<project>/backups/      dumps and their manifests (db backup; before a rollback)
    <root>/<project>/local/        the embedded runtime's data, logs and pid files
    <root>/<project>/lock          held (flock) by the command changing the project now
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from atendeai_ctl.errors import AtendeaiError

SECRET_NAMES = (
    "ATENDEAI_POSTGRES_PASSWORD",
    "ATENDEAI_REDIS_PASSWORD",
    "ATENDEAI_APP_DB_PASSWORD",
    "ATENDEAI_MONITOR_DB_PASSWORD",
    "ATENDEAI_GRAFANA_ADMIN_PASSWORD",
)


def default_state_root() -> Path:
    return Path(platformdirs.user_data_dir("atendeai", appauthor=False))


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # a file in the way, no permission, a read-only file system
        raise AtendeaiError(
            "failed",
            f"cannot create the directory {path}: {exc.strerror or exc}",
            "check the state directory (ATENDEAI_STATE_DIR); nothing was changed",
        ) from None
    return path


def write_private(path: Path, text: str) -> None:
    """Write atomically with 0600 from the first byte, so a secret is never world-readable."""
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parse_env_text(text: str) -> dict[str, str]:
    """KEY=VALUE lines as in .env files: comments, blank lines, optional quotes."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@dataclass(frozen=True)
class ProjectState:
    root: Path

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    @property
    def jwt_dir(self) -> Path:
        return self.root / "jwt"

    @property
    def backups_dir(self) -> Path:
        return _private_dir(self.root / "backups")

    @property
    def local_dir(self) -> Path:
        return self.root / "local"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @contextmanager
    def lock(
        self, command: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """Hold the project's lock while `command` changes it: `up`, `down`, `migrate`,
        `db restore`. Two of them at once would race on the same network, containers or schema
        (two `up` used to create two networks of one name and leave the project stuck).

        flock, so a crashed holder never leaves the project locked. A second command waits
        (telling `on_wait` who holds it) or, without `wait`, fails at once with `conflict`.
        The holder's pid and command are written into the file for that message.
        """
        project = self.root.name
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                if not wait:
                    raise AtendeaiError(
                        "conflict",
                        f"another atendeai command is changing project {project} ({holder})",
                        "wait for it to finish, or run again without --no-wait to wait for it",
                    ) from None
                if on_wait is not None:
                    on_wait(
                        f"waiting for another atendeai command on project {project} ({holder})…"
                    )
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock; the file stays (a path others may hold open)

    def read_secrets(self) -> dict[str, str]:
        try:
            return parse_env_text(self.secrets_file.read_text())
        except FileNotFoundError:
            return {}

    def ensure_secrets(self) -> dict[str, str]:
        """Generate any missing secret; existing ones are kept (data depends on them)."""
        current = self.read_secrets()
        missing = [name for name in SECRET_NAMES if not current.get(name)]
        if missing:
            for name in missing:
                current[name] = secrets.token_urlsafe(32)
            body = "".join(f"{k}={v}\n" for k, v in sorted(current.items()))
            write_private(self.secrets_file, "# generated by atendeai; keep private\n" + body)
        return current


def _lock_holder(fd: int) -> str:
    """'pid N, atendeai up' from the lock file; the holder may be writing it this instant."""
    for _ in range(5):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            pid, _, command = text.partition(" ")
            return f"pid {pid}" + (f", atendeai {command}" if command else "")
        time.sleep(0.01)
    return "pid unknown"


def project_state(state_root: Path, project: str) -> ProjectState:
    return ProjectState(_private_dir(state_root / project))

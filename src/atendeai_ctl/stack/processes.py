"""Supervised local processes: pid records that pid reuse cannot fool, start and stop.

A record holds (pid, start time in clock ticks since boot, boot id). The kernel never gives the
same pair to two processes, so a pid file left behind by a crash, whose pid now belongs to some
other program, is seen as stale and that program is never signalled.

Each service runs in its own session (start_new_session), so it outlives the command that
started it and what it forks can be found again by session id and stopped with it. PostgreSQL's
children start sessions of their own; they are found by their working directory instead (the
data directory, which the postmaster and every backend chdir into).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from atendeai_ctl.state import write_private


@dataclass(frozen=True)
class ProcStat:
    state: str
    session: int
    starttime: int


def proc_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    return ProcStat(state=rest[0], session=int(rest[3]), starttime=int(rest[19]))


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Record:
    """What a pid file says about a process this runtime started."""

    pid: int
    starttime: int
    boot_id: str
    config_hash: str
    started_at: str
    exit_code: int | None = None

    def alive(self) -> bool:
        """The very process we started is still running (a zombie counts as exited)."""
        found = proc_stat(self.pid)
        return (
            found is not None
            and found.starttime == self.starttime
            and found.state not in ("Z", "X")
            and self.boot_id == boot_id()
        )

    def pid_reused(self) -> bool:
        """The recorded pid now names another process (so its session is not ours either)."""
        found = proc_stat(self.pid)
        return found is not None and (
            found.starttime != self.starttime or self.boot_id != boot_id()
        )


class Records:
    """One JSON pid record per service in a directory (0600 files, atomic writes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def load(self, name: str) -> Record | None:
        try:
            raw = json.loads(self.path(name).read_text())
            return Record(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, name: str, record: Record) -> None:
        write_private(self.path(name), json.dumps(asdict(record)) + "\n")

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))


@dataclass(frozen=True)
class RunAs:
    """An unprivileged system user, for servers that refuse to run as root (PostgreSQL)."""

    name: str
    uid: int
    gid: int


def unprivileged_user(preferred: str = "postgres") -> RunAs | None:
    """None when we are not root; else `preferred` if it exists, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in (preferred, "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return RunAs(name, entry.pw_uid, entry.pw_gid)
    return RunAs("nobody", 65534, 65534)


def grant_search(path: Path, user: RunAs) -> None:
    """Let `user` reach `path`: add search (x, never read) on each directory above it that the
    user cannot traverse yet. Needed as root when the state dir or the wheel sits under a 0700
    home such as /root; the files themselves keep their own modes (secrets stay 0600)."""
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            os.chmod(directory, stat.S_IMODE(info.st_mode) | bit)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    config_hash: str,
    user: RunAs | None = None,
) -> tuple[subprocess.Popen[bytes], Record]:
    """Start `argv` in its own session with stdout+stderr appended to `log`."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
    found = proc_stat(proc.pid)
    starttime = found.starttime if found is not None else 0
    return proc, Record(proc.pid, starttime, boot_id(), config_hash, now_iso())


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def members(record: Record, workdir: Path | None = None) -> list[int]:
    """Processes the recorded one left behind, started no earlier than it: those in its session,
    and those working in `workdir` (when given)."""
    if record.pid_reused():
        return []
    found_pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == record.pid:
            continue
        found = proc_stat(int(entry))
        if found is None or found.starttime < record.starttime or found.state in ("Z", "X"):
            continue
        if found.session == record.pid or (
            workdir is not None and _cwd(int(entry)) == str(workdir)
        ):
            found_pids.append(int(entry))
    return found_pids


def _wait_gone(record: Record, workdir: Path | None, deadline: float) -> bool:
    while True:
        if not record.alive() and not members(record, workdir):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop(
    record: Record,
    sig: signal.Signals = signal.SIGTERM,
    grace: float = 10.0,
    workdir: Path | None = None,
) -> None:
    """`sig`, then SIGKILL to everything left after `grace` seconds. Also clears what a crashed
    process left behind (a killed postmaster's backends), so nothing is orphaned."""
    # A live process stops its own children; a dead one's leftovers get the signal directly.
    for pid in [record.pid] if record.alive() else members(record, workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    if _wait_gone(record, workdir, time.monotonic() + grace):
        return
    for pid in [*([record.pid] if record.alive() else []), *members(record, workdir)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(record, workdir, time.monotonic() + 5.0)

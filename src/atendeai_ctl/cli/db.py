"""`atendeai db`: back up (with a manifest and retention), list, verify and restore dumps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from atendeai_ctl.cli.migrate import project_lock, target
from atendeai_ctl.cli.options import (
    DatabaseUrlOption,
    JsonOption,
    NoWaitOption,
    ProjectDirOption,
    YesOption,
    examples,
)
from atendeai_ctl.cli.render import confirm, info, print_json, table
from atendeai_ctl.config import Config
from atendeai_ctl.errors import EXIT_CODES, AtendeaiError


def backups_dir(config: Config) -> Path:
    """ATENDEAI_BACKUP_DIR (derived: the state dir's backups/, kept private)."""
    configured = config.get("ATENDEAI_BACKUP_DIR")
    if configured and Path(configured) != config.state.root / "backups":
        return Path(configured).expanduser()
    return config.state.backups_dir


app = typer.Typer(
    help="Back up, list, verify and restore the database (pg_dump custom format).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command(
    "backup",
    epilog=examples(
        "atendeai db backup",
        "atendeai db backup --keep 14 --json",
        "atendeai db backup --output /srv/backups/atendeai.dump",
    ),
)
def backup_command(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Dump file to write (default: a timestamped file in the state dir's backups/).",
            show_default=False,
        ),
    ] = None,
    keep: Annotated[
        int,
        typer.Option(
            "--keep",
            min=1,
            metavar="N",
            help="Keep the newest N backups of the project in the dump's directory.",
        ),
    ] = 7,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write a pg_dump (custom format, 0600) and its manifest; prints the dump's path."""
    from atendeai_ctl.db import backup

    config, url = target(project_dir, database_url)
    taken = backup.take_backup(
        url, backups_dir(config), project=config.project, keep=keep, output=output
    )
    for problem in taken.prune_errors:
        info(f"warning: {problem}")
    if json_output:
        print_json(taken.to_dict())
        return
    for path in taken.pruned:
        info(f"pruned {path}")
    print(taken.path)


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{size} B"


@app.command("backups", epilog=examples("atendeai db backups", "atendeai db backups --json"))
def backups_command(
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the project's backups in the state dir, newest first, with age, size and revision."""
    from atendeai_ctl.config import load_config
    from atendeai_ctl.db import backup

    config = load_config({"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None})
    directory = backups_dir(config)
    entries = backup.list_backups(directory)
    now = datetime.now(UTC)
    if json_output:
        print_json({"directory": str(directory), "backups": [e.to_dict(now) for e in entries]})
        return
    if not entries:
        info(f"no backups in {directory}")
        return
    rows = []
    for entry in entries:
        doc = entry.to_dict(now)
        verified = doc["verified"]
        mark = "-" if verified is None else "yes" if verified["ok"] else "FAILED"
        rows.append(
            [
                entry.path.name,
                doc["created"],
                _age(doc["age_seconds"]),
                _size(entry.size),
                doc["revision"] or "",
                entry.problem or mark,
            ]
        )
    table(["FILE", "CREATED", "AGE", "SIZE", "REVISION", "VERIFIED"], rows)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, `timeout`) takes the Ctrl-C path, so the scratch database
    is dropped on the way out instead of left behind."""
    import signal

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command(
    "verify-backup",
    epilog=examples(
        "atendeai db verify-backup",
        "atendeai db verify-backup /srv/backups/atendeai.dump --json",
    ),
)
def verify_backup_command(
    dump_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE",
            help="A dump from `db backup` (default: the newest in the state dir's backups/).",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore FILE into a scratch database and check it against its manifest (exit 1 if not).

    Checks the sha256 and size, restores into a scratch database on the same server (always
    dropped), then compares the row count of every table and the revision.
    """
    from atendeai_ctl.db import backup
    from atendeai_ctl.db.verify import verify_backup

    config, url = target(project_dir, database_url)
    path = dump_file or backup.newest_backup(backups_dir(config))
    with _terminate_as_interrupt():
        report = verify_backup(url, path)
    if json_output:
        print_json(report.to_dict())
    elif report.ok:
        tables = report.tables
        print(
            f"{report.file}: ok (revision {report.revision}, {len(tables)} tables, "
            f"{sum(tables.values())} rows, {report.seconds:.1f}s)"
        )
    if report.ok:
        return
    if json_output:
        raise typer.Exit(EXIT_CODES["failed"])
    for problem in report.problems[1:]:
        info(f"  {problem}")
    raise AtendeaiError(
        "failed",
        f"{report.file} failed verification: {report.problems[0]}",
        None if len(report.problems) == 1 else f"{len(report.problems)} problems (listed above)",
    )


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM (`docker stop`) and SIGINT set the event: the scheduler's sleep ends at once,
    a backup under way is finished, and the command exits 0."""
    import signal

    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command(
    "schedule",
    epilog=examples(
        "atendeai db schedule",
        "ATENDEAI_BACKUP_SCHEDULE='30 2 * * *' atendeai db schedule --keep 14",
        "atendeai db schedule --once --json",
    ),
)
def schedule_command(
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            metavar="CRON",
            help="When to back up, in UTC (default: ATENDEAI_BACKUP_SCHEDULE, '0 3 * * *').",
            show_default=False,
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            min=1,
            metavar="N",
            help="Keep the newest N backups (default: ATENDEAI_BACKUP_KEEP, 7).",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Restore each new dump into a scratch database and check it "
            "(default: ATENDEAI_BACKUP_VERIFY, on).",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run one scheduled backup now and exit.")
    ] = False,
    max_runs: Annotated[
        int | None,
        typer.Option("--max-runs", min=1, metavar="N", help="Exit after N scheduled runs."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Back up on a cron schedule (the `backup` service runs this): one line per backup.

    Each run takes a backup with its manifest, keeps the newest N, creates the coming months'
    audit_log partitions and counts rows in the catch-all partition. A failed run is logged
    and the next one still happens. SIGTERM ends the wait at once (exit 0). With --once (or
    --max-runs) the exit status is 1 when the last run failed.
    """
    import json

    from atendeai_ctl.db.schedule import (
        DEFAULT_SCHEDULE,
        RunResult,
        Schedule,
        run_once,
        run_schedule,
        write_status,
    )

    config, url = target(project_dir, database_url)
    parsed = Schedule.parse(schedule or config.get("ATENDEAI_BACKUP_SCHEDULE") or DEFAULT_SCHEDULE)
    if keep is None:
        raw = config.get("ATENDEAI_BACKUP_KEEP") or "7"
        if not raw.isdigit() or int(raw) < 1:
            raise AtendeaiError("invalid", f"ATENDEAI_BACKUP_KEEP={raw[:20]!r} is not 1 or more")
        keep = int(raw)
    if verify is None:
        verify = (config.get("ATENDEAI_BACKUP_VERIFY") or "1") not in ("0", "false", "no")
    directory = backups_dir(config)
    last: list[RunResult] = []

    def report(result: RunResult) -> None:
        last[:] = [result]
        print(json.dumps(result.to_dict()) if json_output else result.line(), flush=True)

    if once:
        result = run_once(url, directory, project=config.project, keep=keep, verify=verify)
        write_status(directory, parsed, result, project=config.project)
        report(result)
    else:
        with _stop_on_signals() as stop:
            info(f"backing up {config.project} on '{parsed.expression}' (UTC) into {directory}")
            run_schedule(
                url,
                directory,
                project=config.project,
                schedule=parsed,
                keep=keep,
                verify=verify,
                stop=stop,
                report=report,
                max_runs=max_runs,
            )
    if (once or max_runs) and last and not last[0].ok:
        raise typer.Exit(EXIT_CODES["failed"])


@app.command("restore")
def restore_command(
    dump_file: Annotated[Path, typer.Argument(metavar="FILE", help="A dump from `db backup`.")],
    yes: YesOption = False,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Replace the database's objects and data with those in FILE (one transaction)."""
    from atendeai_ctl.db import backup
    from atendeai_ctl.db.connect import describe

    config, url = target(project_dir, database_url)
    if not dump_file.is_file():
        raise AtendeaiError("not_found", f"{dump_file} does not exist", "give a dump file")
    confirm(f"Replace the contents of {describe(url)} with {dump_file}", yes=yes)
    with project_lock(config, database_url, "db restore", no_wait):
        backup.restore(url, dump_file)
    info(f"restored {dump_file} into {describe(url)}")

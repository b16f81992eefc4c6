"""What `atendeai status` says about scheduled backups and the audit partitions.

Only when the project runs the `backup` service (profile `backup`), and only from files:
the manifests beside the dumps in ATENDEAI_BACKUP_DIR and the scheduler's own note
(db/schedule.py STATUS_FILE, which carries the catch-all partition's row count from its last
run). No database query and no heavy import, so `status` stays as fast as scripts need it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from atendeai_ctl.config import Config
from atendeai_ctl.errors import AtendeaiError

SERVICE = "backup"
GRACE_MIN_S = 60.0
"""db.schedule.GRACE_MIN_S, the least grace any schedule gets (not imported: see _on_time)."""


def _ago(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def newest_backup_time(directory: Path, project: str) -> datetime | None:
    """The creation time of the project's newest backup with a readable manifest."""
    from atendeai_ctl.db.manifest import SUFFIX, load_manifest

    newest: datetime | None = None
    try:
        paths = [p for p in directory.iterdir() if p.name.endswith(SUFFIX)]
    except OSError:
        return None
    for path in paths:
        try:
            manifest = load_manifest(path)
        except AtendeaiError:
            continue
        dump = path.with_name(path.name[: -len(SUFFIX)])
        fresher = newest is None or manifest.created > newest
        if manifest.project == project and fresher and dump.is_file():
            newest = manifest.created
    return newest


def _on_time(
    note: dict[str, object], project: str, expression: str, directory: Path, now: datetime
) -> bool:
    """The common case, decided from the scheduler's note alone (no cron parsing, no
    manifest): same schedule, last run ok with its dump still here, and its next time not
    yet a minute past (the least grace). Then no scheduled time before that run lacks a
    backup. Anything else (False) takes the full check."""
    last = note.get("last_run")
    if note.get("project") != project or note.get("schedule") != expression:
        return False
    if not isinstance(last, dict) or not last.get("ok"):
        return False
    file, next_at = last.get("file"), last.get("next_at")
    if not isinstance(file, str) or not isinstance(next_at, str):
        return False
    try:
        following = datetime.fromisoformat(next_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    if following.tzinfo is None or (now - following).total_seconds() >= GRACE_MIN_S:
        return False
    return (directory / Path(file).name).is_file()


def backup_warnings(config: Config, services: set[str], now: datetime | None = None) -> list[str]:
    """One line per problem: a backup the schedule wanted and is missing, a failed last run,
    rows in audit_log's catch-all partition. Empty when the backup service does not exist."""
    if SERVICE not in services:
        return []
    from atendeai_ctl.db.schedule import DEFAULT_SCHEDULE, Schedule, read_status

    now = now or datetime.now(UTC)
    directory = Path(config.get("ATENDEAI_BACKUP_DIR") or config.state.root / "backups")
    expression = " ".join((config.get("ATENDEAI_BACKUP_SCHEDULE") or DEFAULT_SCHEDULE).split())
    note = read_status(directory) or {}
    warnings = []
    missed: datetime | None = None
    newest: datetime | None = None
    if not _on_time(note, config.project, expression, directory, now):
        try:
            schedule = Schedule.parse(expression)
        except AtendeaiError as err:
            return [f"backup: {err.message}"]
        newest = newest_backup_time(directory, config.project)
        missed = schedule.overdue(newest, now)
    if missed is not None:
        when = missed.isoformat(timespec="seconds").replace("+00:00", "Z")
        have = (
            f"the newest is {_ago((now - newest).total_seconds())} old"
            if newest
            else f"there is none in {directory}"
        )
        warnings.append(
            f"backup: the schedule '{expression}' wanted a backup at {when} and {have}"
            f" (see `atendeai logs {SERVICE}`)"
        )
    last = note.get("last_run")
    if isinstance(last, dict):
        if last.get("ok") is False:
            warnings.append(
                f"backup: the last scheduled run ({last.get('at')}) failed: {last.get('error')}"
            )
        rows = last.get("audit_default_rows")
        if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0:
            warnings.append(
                f"audit_log: {rows} rows in the catch-all partition audit_log_default"
                f" (as of {last.get('at')}): they belong to months without a partition"
            )
    return warnings

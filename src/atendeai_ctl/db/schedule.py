"""Scheduled backups: the loop behind `atendeai db schedule` (the `backup` service's command).

On each time of ATENDEAI_BACKUP_SCHEDULE (cron syntax, parsed by cronsim, in UTC; a sixth,
leading field of seconds is accepted) it takes a backup exactly as `atendeai db backup` does
(manifest, `--keep` retention), then creates the coming months' audit_log partitions
(`ensure_audit_log_partitions`, as the migrate job does) and counts the rows that fell into
the catch-all partition. What the last run did is kept in STATUS_FILE beside the dumps, so
`atendeai status` can warn about it by reading one small file, with no query.

A failed run is reported and the loop goes on to the next time: a database that is down at
03:00 must not stop the 04:00 backup. The loop sleeps on an Event, so a SIGTERM (the CLI sets
it) ends the sleep at once; a backup under way is finished first.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atendeai_ctl.errors import AtendeaiError

DEFAULT_SCHEDULE = "0 3 * * *"
STATUS_FILE = ".schedule-status.json"
"""Beside the dumps; its leading dot keeps it out of `db backups` and retention."""
GRACE_MIN_S = 60.0
GRACE_MAX_S = 3600.0
MAX_EXPRESSION = 200


@dataclass(frozen=True)
class Schedule:
    """A cron expression that cronsim accepts and that fires at least once a decade."""

    expression: str

    @classmethod
    def parse(cls, text: str, key: str = "ATENDEAI_BACKUP_SCHEDULE") -> Schedule:
        from cronsim import CronSim, CronSimError

        expression = " ".join(text.split())
        hint = (
            "five fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * *' for"
            " 03:00 UTC daily; a sixth, leading field of seconds is accepted"
        )
        if not expression or len(expression) > MAX_EXPRESSION or not expression.isprintable():
            raise AtendeaiError("invalid", f"{key}: {text[:60]!r} is not a cron expression", hint)
        try:
            it = CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
            first = next(it)
        except (CronSimError, ValueError, StopIteration) as exc:
            detail = str(exc) or type(exc).__name__
            raise AtendeaiError(
                "invalid", f"{key}: {expression!r} is not a cron expression ({detail})", hint
            ) from None
        if first > datetime(2010, 1, 1, tzinfo=UTC):
            raise AtendeaiError("invalid", f"{key}: {expression!r} (almost) never fires", hint)
        return cls(expression)

    def next_after(self, moment: datetime) -> datetime:
        """The first time strictly after `moment` (UTC)."""
        from cronsim import CronSim

        return next(CronSim(self.expression, moment.astimezone(UTC)))

    def last_at_or_before(self, moment: datetime) -> datetime:
        """The latest time at or before `moment` (UTC)."""
        from cronsim import CronSim

        moment = moment.astimezone(UTC)
        # CronSim in reverse yields times strictly before its start (after dropping
        # microseconds): start one second later so `moment` itself counts.
        start = moment.replace(microsecond=0) + timedelta(seconds=1)
        return next(CronSim(self.expression, start, reverse=True))

    def grace(self, around: datetime) -> timedelta:
        """How late a backup may be before it counts as missed: half the interval around
        `around`, at least a minute (a dump takes time), at most an hour."""
        last = self.last_at_or_before(around)
        interval = (self.next_after(last) - last).total_seconds()
        return timedelta(seconds=min(max(interval / 2, GRACE_MIN_S), GRACE_MAX_S))

    def overdue(self, newest: datetime | None, now: datetime) -> datetime | None:
        """The scheduled time a backup is missing for (its grace passed with no backup taken
        at or after it), or None when the newest backup is recent enough."""
        grace = self.grace(now)
        due = self.last_at_or_before(now - grace)
        if newest is None or newest < due:
            return due
        return None


@dataclass
class RunResult:
    """One scheduled run: the backup, the partitions, and what failed (if anything)."""

    at: datetime
    ok: bool
    file: str | None = None
    size: int | None = None
    revision: str | None = None
    pruned: list[str] = field(default_factory=list)
    partitions_created: int | None = None
    audit_default_rows: int | None = None
    verified: bool | None = None
    error: str | None = None
    seconds: float = 0.0
    next_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "ok": self.ok,
            "file": self.file,
            "size": self.size,
            "revision": self.revision,
            "pruned": self.pruned,
            "partitions_created": self.partitions_created,
            "audit_default_rows": self.audit_default_rows,
            "verified": self.verified,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "next_at": _iso(self.next_at) if self.next_at else None,
        }

    def line(self) -> str:
        """The one log line of a run."""
        if not self.ok:
            return f"{_iso(self.at)} backup FAILED: {self.error}"
        parts = [f"{_iso(self.at)} backup ok {self.file} ({self.size} bytes"]
        parts.append(f", revision {self.revision}, {self.seconds:.1f}s)")
        if self.verified is not None:
            parts.append(" verified" if self.verified else " VERIFY FAILED")
        if self.pruned:
            parts.append(f", pruned {len(self.pruned)}")
        if self.partitions_created:
            parts.append(f", {self.partitions_created} audit partitions created")
        if self.audit_default_rows:
            parts.append(f", {self.audit_default_rows} rows in audit_log_default")
        if self.next_at is not None:
            parts.append(f"; next {_iso(self.next_at)}")
        return "".join(parts)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


AUDIT_DEFAULT_ROWS = (
    "SELECT CASE WHEN to_regclass('atendeai.audit_log_default') IS NULL THEN NULL"
    " ELSE (SELECT count(*) FROM atendeai.audit_log_default) END"
)


def audit_default_rows(url: str) -> int | None:
    """Rows in audit_log's catch-all partition (they belong to a month without its own);
    None when there is no such table."""
    from atendeai_ctl.db.connect import connect, database_errors

    with connect(url, autocommit=True) as conn, database_errors(url):
        conn.execute("SET row_security = off")
        row = conn.execute(AUDIT_DEFAULT_ROWS).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def run_once(
    url: str,
    directory: Path,
    *,
    project: str,
    keep: int,
    verify: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RunResult:
    """One scheduled run: backup with manifest and retention, partitions, catch-all count,
    and (with `verify`) a restore check of the new dump. Never raises AtendeaiError: a
    failure is in the result (`ok` False, `error`)."""
    from atendeai_ctl.db.backup import take_backup
    from atendeai_ctl.db.migrations import ensure_audit_partitions

    started = time.monotonic()
    result = RunResult(at=now(), ok=False)
    try:
        taken = take_backup(url, directory, project=project, reason="scheduled", keep=keep)
        result.file = str(taken.path)
        result.size = taken.manifest.size
        result.revision = taken.manifest.revision
        result.pruned = [str(p) for p in taken.pruned]
        result.partitions_created = ensure_audit_partitions(url)
        result.audit_default_rows = audit_default_rows(url)
        problems = list(taken.prune_errors)
        if verify:
            from atendeai_ctl.db.verify import verify_backup

            report = verify_backup(url, taken.path)
            result.verified = report.ok
            problems += report.problems
        result.ok = not problems
        result.error = "; ".join(problems) or None
    except AtendeaiError as err:
        result.error = err.message
    except Exception as exc:  # the daemon outlives a bug in one run; the line names it
        lines = str(exc).strip().splitlines()
        result.error = f"unexpected {type(exc).__name__}: {lines[0][:300] if lines else ''}"
    result.seconds = time.monotonic() - started
    return result


def write_status(directory: Path, schedule: Schedule, result: RunResult, *, project: str) -> None:
    """What the last run did, for `atendeai status` (no secrets in it: paths and counts)."""
    from atendeai_ctl.state import write_private

    document = {
        "format": 1,
        "project": project,
        "schedule": schedule.expression,
        "last_run": result.to_dict(),
    }
    # The backups matter; the note about them is best effort.
    with contextlib.suppress(OSError, AtendeaiError):
        write_private(directory / STATUS_FILE, json.dumps(document, indent=2) + "\n")


def read_status(directory: Path) -> dict[str, Any] | None:
    """STATUS_FILE's document, or None when absent or unreadable (it is only a hint)."""
    try:
        raw = (directory / STATUS_FILE).read_bytes()[: 1 << 16]
        document = json.loads(raw)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def run_schedule(
    url: str,
    directory: Path,
    *,
    project: str,
    schedule: Schedule,
    keep: int,
    stop: threading.Event,
    report: Callable[[RunResult], None],
    verify: bool = False,
    max_runs: int | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Sleep until each time of `schedule`, run, report; until `stop` is set or `max_runs`
    runs are done. Returns the number of runs. Each wait is computed from the clock anew, so
    a run longer than the interval skips the times it overran instead of running late twice.
    """
    runs = 0
    while not stop.is_set() and (max_runs is None or runs < max_runs):
        due = schedule.next_after(now())
        while not stop.is_set():
            left = (due - now()).total_seconds()
            if left <= 0:
                break
            stop.wait(min(left, 60.0))  # re-read the clock now and then (suspend, NTP)
        if stop.is_set():
            break
        result = run_once(url, directory, project=project, keep=keep, verify=verify, now=now)
        result.next_at = schedule.next_after(now())
        write_status(directory, schedule, result, project=project)
        report(result)
        runs += 1
    return runs

"""`atendeai status`, apart from Typer: main() answers the plain forms of the command that
scripts and CI poll all day without importing Typer or building any command (together about
0.07 s of a 0.15 s command here); stack.py's Typer command calls the same code."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from atendeai_ctl.cli.render import info, print_json, table
from atendeai_ctl.config import load_config


def _uptime(started_at: str | None) -> str:
    if not started_at:
        return ""
    try:
        started = datetime.fromisoformat(started_at[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return ""
    seconds = int((datetime.now(UTC) - started).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def report_status(project_dir: object, runtime: str | None, as_json: bool) -> int:
    """Print the stack's status; the exit code (0 all healthy, 3 not)."""
    from atendeai_ctl.stack import orchestrator
    from atendeai_ctl.stack.project import load_stack, open_runtime

    overrides = {"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None}
    cfg = load_config(overrides).with_secrets(generate=True)
    spec = load_stack(cfg)
    report = orchestrator.status(spec, open_runtime(cfg, runtime), project=cfg.project)
    if "backup" in spec.services:
        from atendeai_ctl.stack.backup_status import backup_warnings

        report.warnings += backup_warnings(cfg, {s.name for s in report.services})
    if as_json:
        print_json(report.to_dict())
    else:
        rows = [
            (
                s.name,
                s.state if s.exit_code is None else f"{s.state} ({s.exit_code})",
                s.health,
                ", ".join(f"{p.host}:{p.port}->{p.target}" for p in s.ports),
                _uptime(s.started_at) if s.state == "running" else "",
            )
            for s in report.services
        ]
        table(("service", "state", "health", "ports", "uptime"), rows)
        for warning in report.warnings:
            info(f"warning: {warning}")
    return 0 if report.ok else 3


def status_shortcut(args: Sequence[str]) -> int | None:
    """`status [--json] [--project-dir DIR] [--runtime NAME]` parsed here, not by Typer:
    building the command and parsing with it is about a tenth of this command's time, and
    `status` is what scripts and CI poll all day.

    Only these exact forms: anything else (--help, an unknown option, a value missing) answers
    None, and the command goes the normal way with Typer's parsing and messages. The options'
    environment variables are read by load_config and open_runtime, as with Typer.
    """
    values: dict[str, str] = {}
    as_json = False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, sep, value = arg.partition("=")
        if arg == "--json":
            as_json = True
        elif name in ("--project-dir", "--runtime") and name not in values:
            if not sep:
                if not rest or rest[0].startswith("-"):
                    return None
                value = rest.pop(0)
            values[name] = value
        else:
            return None
    return report_status(values.get("--project-dir"), values.get("--runtime"), as_json)

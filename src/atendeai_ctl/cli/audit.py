"""`atendeai audit`: Read the audit log (newest first)."""

from __future__ import annotations

from typing import Annotated

import typer

from atendeai_ctl.cli._admin import RedisUrlOption, admin
from atendeai_ctl.cli.options import DatabaseUrlOption, JsonOption, ProjectDirOption
from atendeai_ctl.cli.render import print_json, table

app = typer.Typer(
    help="Read the audit log.", no_args_is_help=True, pretty_exceptions_show_locals=False
)

MAX_SINCE_S = 3650 * 86400


@app.command("list")
def list_(
    clinic: Annotated[
        str | None,
        typer.Option("--clinic", metavar="SLUG", help="Only this clinic (default: all)."),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action, e.g. login, user.disable."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DURATION", help="Only rows this recent: 30m, 1h, 7d."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="At most N rows (1-10000).")
    ] = 50,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List audit rows, newest first."""
    from atendeai_ctl.admin import audit
    from atendeai_ctl.admin.durations import parse_duration

    since_s = (
        parse_duration(since, what="--since", minimum=1, maximum=MAX_SINCE_S)
        if since is not None
        else None
    )
    with admin(database_url, redis_url, project_dir) as ctx:
        found = audit.list_entries(ctx, clinic=clinic, action=action, since_s=since_s, limit=limit)
    if json_output:
        print_json([e.to_dict() for e in found])
        return
    table(
        ["AT", "CLINIC", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
        [
            (
                e.entry.at.isoformat(timespec="seconds"),
                e.clinic,
                e.entry.actor,
                e.entry.action,
                e.entry.target,
                e.entry.outcome,
            )
            for e in found
        ],
    )

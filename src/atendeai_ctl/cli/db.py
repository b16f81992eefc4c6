"""`atendeai db`: Back up and restore the database (pg_dump custom format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atendeai_ctl.cli.migrate import project_lock, target
from atendeai_ctl.cli.options import DatabaseUrlOption, NoWaitOption, ProjectDirOption, YesOption
from atendeai_ctl.cli.render import confirm, info
from atendeai_ctl.errors import AtendeaiError

app = typer.Typer(
    help="Back up and restore the database.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command("backup")
def backup_command(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Dump file to write (default: a timestamped file in the state dir's backups/).",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Write a pg_dump (custom format, 0600) of the database; prints its path."""
    from atendeai_ctl.db import backup

    config, url = target(project_dir, database_url)
    path = output or backup.default_backup_path(config.state.backups_dir, url)
    print(backup.dump(url, path))


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

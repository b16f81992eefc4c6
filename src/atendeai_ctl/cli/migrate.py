"""`atendeai migrate`: Migrate the database schema (Alembic).

Thin adapter over atendeai_ctl.db.migrations: resolve the target database (the stack's, or
--database-url), call the library, render. Alembic and SQLAlchemy are imported inside the
commands so `atendeai --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from atendeai_ctl.cli.options import (
    DatabaseUrlOption,
    JsonOption,
    NoWaitOption,
    ProjectDirOption,
    YesOption,
    examples,
)
from atendeai_ctl.cli.render import confirm, info, print_json, table
from atendeai_ctl.errors import EXIT_CODES

if TYPE_CHECKING:
    from atendeai_ctl.config import Config
    from atendeai_ctl.db.migrations import Outcome

app = typer.Typer(
    help="Migrate the database schema (Alembic).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print what would run; change nothing.")
]


def target(project_dir: Path | None, database_url: str | None) -> tuple[Config, str]:
    """The resolved config (with the generated secrets, none made) and the database URL."""
    from atendeai_ctl.config import load_config

    config = load_config(
        {
            "ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None,
            "ATENDEAI_DATABASE_URL": database_url,
        }
    ).with_secrets(generate=False)
    return config, config.database_url()


def project_lock(
    config: Config, database_url: str | None, command: str, no_wait: bool, *, dry_run: bool = False
) -> AbstractContextManager[None]:
    """The project's lock when the command changes the stack's database. None for a dry run,
    nor for an explicit --database-url: another database, or the stack's own migrate job,
    which `up` starts while holding the lock and which must not wait for it."""
    if database_url or dry_run:
        return nullcontext()
    return config.state.lock(command, wait=not no_wait, on_wait=info)


def migrations_dir(config: Config) -> Path:
    return config.project_dir / "migrations"


class _RunningOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith("Running ")


def _show_progress() -> None:
    """Alembic's "Running upgrade 0001 -> 0002, ..." lines, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_RunningOnly())
    logger = logging.getLogger("alembic.runtime.migration")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False


def _print_plan(outcome: Outcome, verb: str) -> None:
    if not outcome.planned:
        print(f"nothing to {verb}; at {outcome.before or 'base'}")
        return
    for rev in outcome.planned:
        print(f"would {verb} {rev.revision}  {rev.description}")
    print(f"then at {outcome.target or 'base'}")


@app.command(
    "up",
    epilog=examples(
        "atendeai migrate up",
        "atendeai migrate up 0002 --dry-run",
        "atendeai migrate up --database-url postgresql://user:pw@db:5432/atendeai",
    ),
)
def up(
    revision: Annotated[
        str, typer.Argument(help="Target revision (default: the newest, head).")
    ] = "head",
    dry_run: DryRunOption = False,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    no_wait: NoWaitOption = False,
    json_output: JsonOption = False,
    wait_db: Annotated[
        float,
        typer.Option(
            "--wait-db",
            metavar="SECONDS",
            min=0,
            help="Wait up to SECONDS for the database to accept connections (for a job "
            "started beside its database).",
        ),
    ] = 0,
) -> None:
    """Apply pending migrations and set the atendeai_app password from the generated secret."""
    from atendeai_ctl.db import migrations

    config, url = target(project_dir, database_url)
    if wait_db:
        from atendeai_ctl.db.connect import wait_for_database

        wait_for_database(url, wait_db)
    password = config.get("ATENDEAI_APP_DB_PASSWORD") or None
    if not dry_run:
        _show_progress()
    with project_lock(config, database_url, "migrate up", no_wait, dry_run=dry_run):
        outcome = migrations.upgrade(
            url,
            revision,
            app_password=password,
            monitor_password=config.get("ATENDEAI_MONITOR_DB_PASSWORD") or None,
            dry_run=dry_run,
            migrations_dir=migrations_dir(config),
        )
    if json_output:
        print_json(outcome.to_dict())
    elif dry_run:
        _print_plan(outcome, "apply")
    elif outcome.applied:
        print(f"at {outcome.applied[-1]}; applied {', '.join(outcome.applied)}")
    else:
        print(f"at {outcome.target}; nothing to do")
    if not dry_run and outcome.app_role_exists and not outcome.app_password_set:
        info(
            "warning: the atendeai_app password was not set: no generated secret in "
            f"{config.state.root} and no ATENDEAI_APP_DB_PASSWORD (without one the role "
            "cannot log in; run `atendeai up` to generate the secrets)"
        )


@app.command(
    "rollback",
    epilog=examples(
        "atendeai migrate rollback --dry-run",
        "atendeai migrate rollback --steps 2 --yes",
        "atendeai migrate rollback --to base --yes --no-backup",
    ),
)
def rollback(
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", min=1, metavar="N", help="Undo the newest N migrations (default 1)."
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="REVISION",
            help="Undo every migration after REVISION ('base': all of them).",
        ),
    ] = None,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="Skip the pg_dump taken before rolling back.")
    ] = False,
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    no_wait: NoWaitOption = False,
    json_output: JsonOption = False,
) -> None:
    """Undo migrations, after a confirmation and a pg_dump backup into the state dir."""
    config, url = target(project_dir, database_url)
    with project_lock(config, database_url, "migrate rollback", no_wait, dry_run=dry_run):
        _rollback(config, url, steps, to, yes, dry_run, no_backup, json_output)


def _rollback(
    config: Config,
    url: str,
    steps: int | None,
    to: str | None,
    yes: bool,
    dry_run: bool,
    no_backup: bool,
    json_output: bool,
) -> None:
    from atendeai_ctl.db import backup, migrations
    from atendeai_ctl.db.connect import describe

    plan = migrations.plan_rollback(url, steps=steps, to=to, migrations_dir=migrations_dir(config))
    if dry_run or not plan.planned:
        plan.dry_run = dry_run
        if json_output:
            print_json(plan.to_dict())
        else:
            _print_plan(plan, "undo")
        return
    revisions = ", ".join(r.revision for r in plan.planned)
    confirm(
        f"Roll back {revisions} on {describe(url)}, dropping their tables and data",
        yes=yes,
    )
    backup_path: Path | None = None
    if not no_backup:
        backup_path = backup.take_backup(
            url, config.state.backups_dir, project=config.project, reason="before-rollback"
        ).path
        info(f"backup written to {backup_path}")
    _show_progress()
    outcome = migrations.rollback(
        url, to=plan.target or migrations.BASE, migrations_dir=migrations_dir(config)
    )
    if json_output:
        print_json({**outcome.to_dict(), "backup": str(backup_path) if backup_path else None})
    else:
        print(f"at {outcome.target or 'base'}; rolled back {', '.join(outcome.applied)}")


@app.command("status")
def status(
    database_url: DatabaseUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Current and head revision; exit 3 when migrations are pending."""
    from atendeai_ctl.db import migrations

    config, url = target(project_dir, database_url)
    state = migrations.status(url, migrations_dir=migrations_dir(config))
    if json_output:
        print_json(state.to_dict())
    else:
        print(f"current: {state.current or 'base'}")
        print(f"head:    {state.head}")
        print(f"pending: {', '.join(state.pending) or 'none'}")
    if not state.at_head:
        raise typer.Exit(EXIT_CODES["not_ready"])


@app.command("history")
def history(
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Every revision, oldest first (reads the migration scripts, not the database)."""
    from atendeai_ctl.config import load_config
    from atendeai_ctl.db import migrations

    config = load_config({"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None})
    revisions = migrations.history(migrations_dir=migrations_dir(config))
    if json_output:
        print_json([r.to_dict() for r in revisions])
        return
    table(
        ["revision", "down", "head", "description"],
        [
            [r.revision, r.down_revision or "base", "yes" if r.is_head else "", r.description]
            for r in revisions
        ],
    )


@app.command("sql")
def sql(
    spec: Annotated[
        str | None,
        typer.Argument(
            metavar="FROM:TO",
            help="Range, e.g. base:head (default), 0001:0003, or 0003:0001 for a downgrade.",
        ),
    ] = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Print the SQL of a range of migrations, for review or for a DBA; nothing is executed."""
    from atendeai_ctl.config import load_config
    from atendeai_ctl.db import migrations

    config = load_config({"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None})
    sys.stdout.write(migrations.offline_sql(spec, migrations_dir=migrations_dir(config)))

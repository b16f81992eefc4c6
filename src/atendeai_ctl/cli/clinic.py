"""`atendeai clinic`: Administer clinics (tenants).

Thin adapter over atendeai_ctl.admin.clinics; every change is one transaction with its audit
row, written as `cli:<os user>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atendeai_ctl.cli._admin import IfNotExistsOption, RedisUrlOption, admin, record
from atendeai_ctl.cli.options import DatabaseUrlOption, JsonOption, ProjectDirOption, examples
from atendeai_ctl.cli.render import info, print_json, table

app = typer.Typer(
    help="Administer clinics.", no_args_is_help=True, pretty_exceptions_show_locals=False
)

SlugArgument = Annotated[str, typer.Argument(metavar="SLUG", help="The clinic's slug.")]
FIELDS = ["slug", "name", "status", "id", "created_at"]


@app.command(
    "create",
    epilog=examples(
        "atendeai clinic create 'Clínica Sorriso'",
        "atendeai clinic create 'Clínica Sorriso' --slug sorriso --if-not-exists --json",
    ),
)
def create(
    name: Annotated[str, typer.Argument(help="Display name, e.g. 'Clínica Sorriso'.")],
    slug: Annotated[
        str | None,
        typer.Option(
            "--slug", metavar="SLUG", help="Default: derived from the name (clinica-sorriso)."
        ),
    ] = None,
    if_not_exists: IfNotExistsOption = False,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create a clinic."""
    from atendeai_ctl.admin import clinics

    with admin(database_url, redis_url, project_dir) as ctx:
        result = clinics.create(ctx, name=name, slug=slug, if_not_exists=if_not_exists)
    if json_output:
        print_json(result.to_dict())
        return
    slug_made = result.clinic.slug
    info(f"Created clinic {slug_made}." if result.created else f"Clinic {slug_made} exists.")
    record(result.clinic.to_dict(), FIELDS)


@app.command("list")
def list_(
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List every clinic."""
    from atendeai_ctl.admin import clinics

    with admin(database_url, redis_url, project_dir) as ctx:
        found = clinics.list_all(ctx)
    if json_output:
        print_json([c.to_dict() for c in found])
        return
    table(
        ["SLUG", "NAME", "STATUS", "CREATED"],
        [(c.slug, c.name, c.status, c.created_at.isoformat(timespec="seconds")) for c in found],
    )


@app.command("show")
def show(
    slug: SlugArgument,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one clinic."""
    from atendeai_ctl.admin import clinics

    with admin(database_url, redis_url, project_dir) as ctx:
        clinic = clinics.show(ctx, slug)
    if json_output:
        print_json(clinic.to_dict())
    else:
        record(clinic.to_dict(), FIELDS)


@app.command("rename")
def rename(
    slug: SlugArgument,
    name: Annotated[str, typer.Argument(help="The new display name (the slug stays).")],
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change a clinic's display name; its slug stays."""
    from atendeai_ctl.admin import clinics

    with admin(database_url, redis_url, project_dir) as ctx:
        clinic = clinics.rename(ctx, slug, name)
    if json_output:
        print_json(clinic.to_dict())
    else:
        info(f"Renamed clinic {clinic.slug}.")
        record(clinic.to_dict(), FIELDS)


def _set_status(
    slug: str,
    *,
    enabled: bool,
    database_url: str | None,
    redis_url: str | None,
    project_dir: Path | None,
    json_output: bool,
) -> None:
    from atendeai_ctl.admin import clinics

    with admin(database_url, redis_url, project_dir, need_redis=not enabled) as ctx:
        clinic = clinics.set_status(ctx, slug, enabled=enabled)
    if json_output:
        print_json(clinic.to_dict())
    else:
        info(f"Clinic {clinic.slug} is {clinic.status}.")


@app.command("disable")
def disable(
    slug: SlugArgument,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Disable a clinic: its users cannot log in and every session ends now."""
    _set_status(
        slug, enabled=False, database_url=database_url, redis_url=redis_url,
        project_dir=project_dir, json_output=json_output,
    )  # fmt: skip


@app.command("enable")
def enable(
    slug: SlugArgument,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Enable a disabled clinic again (ended sessions stay ended)."""
    _set_status(
        slug, enabled=True, database_url=database_url, redis_url=redis_url,
        project_dir=project_dir, json_output=json_output,
    )  # fmt: skip

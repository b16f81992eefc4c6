"""`atendeai user`: Administer users of a clinic.

Thin adapter over atendeai_ctl.admin.users. Passwords never come from argv: stdin
(--password-stdin), a generated one (--generate-password, printed once) or a hidden prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from atendeai_ctl.cli._admin import (
    ClinicOption,
    GeneratePasswordOption,
    IfNotExistsOption,
    PasswordStdinOption,
    RedisUrlOption,
    admin,
    read_password,
    record,
)
from atendeai_ctl.cli.options import DatabaseUrlOption, JsonOption, ProjectDirOption, examples
from atendeai_ctl.cli.render import info, print_json, table

if TYPE_CHECKING:
    from atendeai_ctl.admin.users import Member

app = typer.Typer(
    help="Administer users.", no_args_is_help=True, pretty_exceptions_show_locals=False
)

EmailArgument = Annotated[str, typer.Argument(metavar="EMAIL", help="The user's email.")]
RoleOption = Annotated[
    str, typer.Option("--role", metavar="owner|admin|staff", help="What the user may do.")
]
FIELDS = ["email", "clinic", "name", "role", "status", "last_login_at", "id", "created_at"]


def _show(member: Member, json_output: bool) -> None:
    if json_output:
        print_json(member.to_dict())
    else:
        record(member.to_dict(), FIELDS)


@app.command(
    "create",
    epilog=examples(
        "atendeai user create ana@sorriso.test --clinic sorriso --role admin",
        "atendeai user create bot@sorriso.test --clinic sorriso --generate-password --json",
        "atendeai user create ana@sorriso.test --clinic sorriso --password-stdin < pw.txt",
    ),
)
def create(
    email: EmailArgument,
    clinic: ClinicOption,
    role: RoleOption = "staff",
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    password_stdin: PasswordStdinOption = False,
    generate_password: GeneratePasswordOption = False,
    if_not_exists: IfNotExistsOption = False,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create a user in a clinic (without a password flag, asks twice on a terminal)."""
    from atendeai_ctl.admin import users

    password, generated = read_password(from_stdin=password_stdin, generate=generate_password)
    with admin(database_url, redis_url, project_dir) as ctx:
        result = users.create(
            ctx, clinic=clinic, email=email, password=password, role=role, name=name,
            if_not_exists=if_not_exists, generated=generated,
        )  # fmt: skip
    if json_output:
        print_json(result.to_dict())
        return
    user = result.member.user
    info(f"Created user {user.email}." if result.created else f"User {user.email} exists.")
    record(result.member.to_dict(), FIELDS)
    if result.password is not None:
        print(f"password  {result.password}")
        info("The generated password is shown only this once.")


@app.command("list")
def list_(
    clinic: Annotated[
        str | None,
        typer.Option("--clinic", metavar="SLUG", help="Only this clinic (default: all)."),
    ] = None,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List users, of one clinic or of all."""
    from atendeai_ctl.admin import users

    with admin(database_url, redis_url, project_dir) as ctx:
        found = users.list_members(ctx, clinic=clinic)
    if json_output:
        print_json([m.to_dict() for m in found])
        return
    table(
        ["CLINIC", "EMAIL", "ROLE", "STATUS", "NAME", "LAST LOGIN"],
        [
            (
                m.clinic,
                m.user.email,
                m.user.role,
                m.user.status,
                m.user.name,
                m.user.last_login_at.isoformat(timespec="seconds")
                if m.user.last_login_at
                else None,
            )
            for m in found
        ],
    )


@app.command("show")
def show(
    email: EmailArgument,
    clinic: ClinicOption,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one user."""
    from atendeai_ctl.admin import users

    with admin(database_url, redis_url, project_dir) as ctx:
        member = users.show(ctx, clinic=clinic, email=email)
    _show(member, json_output)


@app.command("set-role")
def set_role(
    email: EmailArgument,
    role: Annotated[str, typer.Argument(metavar="ROLE", help="owner, admin or staff.")],
    clinic: ClinicOption,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change a user's role; a changed role ends the user's sessions at once."""
    from atendeai_ctl.admin import users

    with admin(database_url, redis_url, project_dir, need_redis=True) as ctx:
        member = users.set_role(ctx, clinic=clinic, email=email, role=role)
    if not json_output:
        info(f"User {member.user.email} is now {member.user.role}.")
    _show(member, json_output)


def _set_status(
    email: str,
    clinic: str,
    *,
    enabled: bool,
    database_url: str | None,
    redis_url: str | None,
    project_dir: Path | None,
    json_output: bool,
) -> None:
    from atendeai_ctl.admin import users

    with admin(database_url, redis_url, project_dir, need_redis=not enabled) as ctx:
        member = users.set_status(ctx, clinic=clinic, email=email, enabled=enabled)
    if json_output:
        print_json(member.to_dict())
    else:
        info(f"User {member.user.email} is {member.user.status}.")


@app.command("disable")
def disable(
    email: EmailArgument,
    clinic: ClinicOption,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Disable a user: no logins, and every session ends now."""
    _set_status(
        email, clinic, enabled=False, database_url=database_url, redis_url=redis_url,
        project_dir=project_dir, json_output=json_output,
    )  # fmt: skip


@app.command("enable")
def enable(
    email: EmailArgument,
    clinic: ClinicOption,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Enable a disabled user again (ended sessions stay ended)."""
    _set_status(
        email, clinic, enabled=True, database_url=database_url, redis_url=redis_url,
        project_dir=project_dir, json_output=json_output,
    )  # fmt: skip


@app.command("set-password")
def set_password(
    email: EmailArgument,
    clinic: ClinicOption,
    password_stdin: PasswordStdinOption = False,
    generate_password: GeneratePasswordOption = False,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Set a new password; every session of the user ends."""
    from atendeai_ctl.admin import users

    password, generated = read_password(from_stdin=password_stdin, generate=generate_password)
    with admin(database_url, redis_url, project_dir, need_redis=True) as ctx:
        member = users.set_password(ctx, clinic=clinic, email=email, password=password)
    shown = password if generated else None
    if json_output:
        print_json({**member.to_dict(), "password": shown})
        return
    info(f"Password of {member.user.email} changed; their sessions were ended.")
    if shown is not None:
        print(f"password  {shown}")
        info("The generated password is shown only this once.")

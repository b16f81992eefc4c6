"""What the admin command groups (clinic, user, token, audit) share: target options, the
connection, password input and record rendering."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from atendeai_ctl.cli._input import check_text, read_stdin_line
from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    from atendeai_ctl.admin.target import Admin

RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        metavar="URL",
        envvar="ATENDEAI_REDIS_URL",
        help="Target this Redis instead of the stack's (revocations are written there).",
        show_default=False,
        show_envvar=True,
    ),
]
ClinicOption = Annotated[
    str, typer.Option("--clinic", metavar="SLUG", help="The clinic's slug.", show_default=False)
]
IfNotExistsOption = Annotated[
    bool,
    typer.Option("--if-not-exists", help="If it already exists, print it and exit 0."),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]
GeneratePasswordOption = Annotated[
    bool,
    typer.Option("--generate-password", help="Generate a password and print it once."),
]


@contextmanager
def admin(
    database_url: str | None,
    redis_url: str | None,
    project_dir: Path | None,
    *,
    need_redis: bool = False,
    need_database: bool = True,
) -> Iterator[Admin]:
    from atendeai_ctl.admin.target import open_admin

    with open_admin(
        database_url=database_url,
        redis_url=redis_url,
        project_dir=project_dir,
        need_redis=need_redis,
        need_database=need_database,
    ) as opened:
        yield opened


def read_password(*, from_stdin: bool, generate: bool) -> tuple[str, bool]:
    """(password, generated). Never from argv: stdin, a generator, or a hidden prompt."""
    if from_stdin and generate:
        raise AtendeaiError("invalid", "give --password-stdin or --generate-password, not both")
    if generate:
        from atendeai_ctl.admin.users import generate_password

        return generate_password(), True
    if from_stdin:
        password = read_stdin_line("the password")
        if not password:
            raise AtendeaiError("invalid", "no password on stdin")
        return password, False
    if not sys.stdin.isatty():
        raise AtendeaiError(
            "refused",
            "a password is needed and there is no terminal to ask on",
            "pass --password-stdin or --generate-password",
        )
    entered: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    return check_text(entered, "the password"), False


def record(document: dict[str, Any], keys: list[str]) -> None:
    """`key: value` lines for one record, in a fixed order (the JSON has every key)."""
    width = max(len(key) for key in keys)
    for key in keys:
        value = document.get(key)
        print(f"{key.ljust(width)}  {'' if value is None else value}".rstrip())

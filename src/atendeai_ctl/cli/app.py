"""The root command: Typer's app with every command group, and the help tidying.

The boundary that turns errors into exit codes is main(), in cli/main.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import typer

from atendeai_ctl import __version__
from atendeai_ctl.cli import (
    audit,
    auth,
    clinic,
    config,
    db,
    drill,
    migrate,
    stack,
    swarm,
    token,
    top,
    user,
)

_SETTINGS: dict[str, Any] = {
    "name": "atendeai",
    "help": "Operate the AtendeAI stack: services, schema, auth service and administration.",
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "pretty_exceptions_show_locals": False,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
app = typer.Typer(**_SETTINGS)


def _version(value: bool) -> None:
    if value:
        print(f"atendeai {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Operate the AtendeAI stack: services, schema, auth service and administration."""


stack.register(app)
top.register(app)
app.add_typer(config.app, name="config")
app.add_typer(migrate.app, name="migrate")
app.add_typer(db.app, name="db")
app.add_typer(auth.app, name="auth")
app.add_typer(clinic.app, name="clinic")
app.add_typer(user.app, name="user")
app.add_typer(token.app, name="token")
app.add_typer(audit.app, name="audit")
app.add_typer(swarm.app, name="swarm")
app.add_typer(drill.app, name="drill")


def _name_params(command: Any) -> None:
    """Help that reads like the best Typer CLIs: a flag shows no value placeholder (Typer
    0.29 printed `<bool>` on every flag), and every argument and value option without an
    explicit metavar gets its name in upper case, like Click's default, so usage lines and
    errors never mix `{EMAIL}` and `{name}`.

    Duck-typed on purpose: Typer 0.26 and later build on their own copy of Click's classes.
    """
    for param in command.params:
        if param.param_type_name == "option" and (param.is_flag or param.count):
            param.metavar = ""
        elif param.metavar is None and param.name:
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        _name_params(sub)


def _tidy_help_options(root: Any, args: Sequence[str]) -> None:
    """The same for --help itself, which Click makes per command on first use: only along
    the commands `args` address (the only help this process can show), so a plain command
    does not pay for building the help option of every command."""
    command = root
    ctx = root.context_class(root, info_name=root.name, **root.context_settings)
    words = iter(args)
    while True:
        help_option = command.get_help_option(ctx)  # created and cached here, then tidied
        if help_option is not None:
            help_option.metavar = ""
        subcommands = getattr(command, "commands", None)
        name = next((word for word in words if not word.startswith("-")), None)
        if not subcommands or name not in subcommands:
            return
        command = subcommands[name]
        ctx = command.context_class(command, info_name=name, parent=ctx, **command.context_settings)


def _command_name(info: Any) -> str:
    """The name Typer gives a registered command: its own, else its function's."""
    return str(info.name or typer.main.get_command_name(info.callback.__name__))


def _addressed(args: Sequence[str]) -> str | None:
    """The top-level command `args` name, when it is one of `app`'s; None for anything else
    (no command, a root option first, a misspelling), which needs the whole tree."""
    name = args[0] if args else None
    commands = {_command_name(info) for info in app.registered_commands}
    groups = {info.name for info in app.registered_groups}
    return name if name in commands or name in groups else None


@functools.cache
def _built(only: str | None = None) -> Any:
    """Typer's Click group for `app`, or for `app` holding only the command `only`: Typer
    turns each command's signature into Click parameters when it builds the group, about
    1 ms a command, and one invocation runs one command. Usage lines, errors and the
    command's help read the same either way."""
    source = app
    if only is not None:
        source = typer.Typer(**_SETTINGS)
        source.registered_callback = app.registered_callback
        source.registered_commands = [
            info for info in app.registered_commands if _command_name(info) == only
        ]
        source.registered_groups = [info for info in app.registered_groups if info.name == only]
    built = typer.main.get_command(source)
    _name_params(built)
    return built


def command(args: Sequence[str] = ()) -> Any:
    """The command tree for `args` (Typer's Click group), built once per process, with help
    tidied for the commands `args` address."""
    built = _built(_addressed(args))
    _tidy_help_options(built, args)
    return built


# The entry point's first home: console scripts made before it moved still call it here.
from atendeai_ctl.cli.main import main  # noqa: E402

__all__ = ["app", "command", "main"]

"""The root command. AtendeaiError becomes an exit code and one line here, and only here."""

from __future__ import annotations

import sys

import typer

from atendeai_ctl import __version__
from atendeai_ctl.cli import (
    audit,
    auth,
    clinic,
    config,
    db,
    migrate,
    stack,
    token,
    user,
)
from atendeai_ctl.cli.render import error
from atendeai_ctl.errors import AtendeaiError

app = typer.Typer(
    name="atendeai",
    help="Operate the AtendeAI stack: services, schema, auth service and administration.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
app.add_typer(config.app, name="config")
app.add_typer(migrate.app, name="migrate")
app.add_typer(db.app, name="db")
app.add_typer(auth.app, name="auth")
app.add_typer(clinic.app, name="clinic")
app.add_typer(user.app, name="user")
app.add_typer(token.app, name="token")
app.add_typer(audit.app, name="audit")


def _from_engine(exc: Exception) -> AtendeaiError | None:
    """A Docker engine refusal mid-command is the operator's to act on, not a crash."""
    if not type(exc).__module__.startswith("docker."):
        return None
    detail = getattr(exc, "explanation", None) or str(exc)
    return AtendeaiError("failed", f"the Docker engine refused: {detail}", "see `atendeai status`")


def main() -> None:
    try:
        app()
    except AtendeaiError as err:
        error(err, as_json="--json" in sys.argv[1:])
        sys.exit(err.exit_code)
    except Exception as exc:
        converted = _from_engine(exc)
        if converted is None:
            raise
        error(converted, as_json="--json" in sys.argv[1:])
        sys.exit(converted.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)

"""`atendeai db`: Back up and restore the database."""

from __future__ import annotations

import typer

app = typer.Typer(help="Back up and restore the database.", no_args_is_help=True)

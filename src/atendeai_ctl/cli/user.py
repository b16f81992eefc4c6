"""`atendeai user`: Administer users."""

from __future__ import annotations

import typer

app = typer.Typer(help="Administer users.", no_args_is_help=True)

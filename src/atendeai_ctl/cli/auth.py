"""`atendeai auth`: Run the bundled auth service."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the bundled auth service.", no_args_is_help=True)

"""`atendeai migrate`: Migrate the database schema (Alembic)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Migrate the database schema (Alembic).", no_args_is_help=True)

"""`atendeai clinic`: Administer clinics."""

from __future__ import annotations

import typer

app = typer.Typer(help="Administer clinics.", no_args_is_help=True)

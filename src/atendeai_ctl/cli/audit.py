"""`atendeai audit`: Read the audit log."""

from __future__ import annotations

import typer

app = typer.Typer(help="Read the audit log.", no_args_is_help=True)

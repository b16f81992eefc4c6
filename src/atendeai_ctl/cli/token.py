"""`atendeai token`: Issue, verify and revoke tokens; rotate signing keys."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Issue, verify and revoke tokens; rotate signing keys.", no_args_is_help=True
)

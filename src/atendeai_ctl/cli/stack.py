"""`atendeai up | down | status | logs`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """The stack commands sit at the top level, like `docker compose`'s."""

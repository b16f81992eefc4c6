"""Typed option aliases shared by every command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON document to stdout.")]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (destructive steps).")
]
ProjectDirOption = Annotated[
    Path | None,
    typer.Option(
        "--project-dir",
        envvar="ATENDEAI_PROJECT_DIR",
        help="A customised copy of the project (compose/, migrations/, configs/).",
        show_default=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="ATENDEAI_DATABASE_URL",
        help="Target this database instead of the stack's (PostgreSQL URL).",
        show_default=False,
        show_envvar=True,
    ),
]

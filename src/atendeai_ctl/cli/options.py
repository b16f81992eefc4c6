"""Typed option aliases shared by every command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def examples(*lines: str) -> str:
    """A command's epilog: example command lines, each shown on a line of its own.

    Paragraph breaks between them, because some Typer versions join single line breaks.
    """
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON document to stdout.")]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (destructive steps).")
]
ProjectDirOption = Annotated[
    Path | None,
    typer.Option(
        "--project-dir",
        metavar="DIR",
        envvar="ATENDEAI_PROJECT_DIR",
        help="A customised copy of the project (compose/, migrations/, configs/).",
        show_default=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        envvar="ATENDEAI_DATABASE_URL",
        help="Target this database instead of the stack's (PostgreSQL URL).",
        show_default=False,
        show_envvar=True,
    ),
]
NoWaitOption = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="Fail at once (exit 5) if another command is changing the project, not wait.",
    ),
]

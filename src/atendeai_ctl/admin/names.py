"""Display names (clinic and user) checked before they reach the database.

Quotes, accents and emoji are ordinary text and are stored exactly as given (every query is
parameterised). Control characters are refused: a NUL cannot be stored in PostgreSQL text at
all, and a newline or escape sequence in a name would corrupt tables and terminals later.
"""

from __future__ import annotations

import unicodedata

from atendeai_ctl.errors import AtendeaiError

MAX_NAME = 200


def check_name(name: str, *, what: str) -> str:
    """The name without surrounding blanks, or AtendeaiError("invalid") saying what is wrong."""
    name = name.strip()
    if not name:
        raise AtendeaiError("invalid", f"{what} must not be empty")
    if len(name) > MAX_NAME:
        raise AtendeaiError(
            "invalid", f"{what} is {len(name)} characters long; the limit is {MAX_NAME}"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise AtendeaiError(
            "invalid", f"{what} contains control characters", "use printable text only"
        )
    return name

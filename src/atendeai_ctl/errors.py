"""One exception type for every user-facing failure, with a closed set of codes.

    AtendeaiError(code, message, hint)
      code  -> exit code (EXIT_CODES), the same for the human and the JSON rendering

The CLI maps these to a single line on stderr (or a JSON error document) in one place
(cli/app.py); library code raises them and never prints.
"""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "failed",  # something ran and failed (a service did not become healthy, a dump failed)
    "unavailable",  # the Docker engine, PostgreSQL or Redis cannot be reached
    "not_ready",  # the stack is not healthy / the schema is behind
    "not_found",  # unknown clinic, user, revision, service, file
    "conflict",  # already exists, port in use, database ahead of the code
    "invalid",  # bad input: compose file, email, password policy, ttl
    "refused",  # a destructive step without --yes and without a terminal to ask on
    "unauthorized",  # wrong credentials, invalid/expired/revoked token
]

EXIT_CODES: dict[str, int] = {
    "failed": 1,
    "unavailable": 1,
    "not_ready": 3,
    "not_found": 4,
    "conflict": 5,
    "invalid": 6,
    "refused": 7,
    "unauthorized": 8,
}
"""Exit codes (documented in README.md). 0 is success and 2 is a usage error (Click's)."""


class AtendeaiError(Exception):
    def __init__(self, code: ErrorCode, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.code]

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

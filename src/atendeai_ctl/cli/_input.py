"""Text from outside the program (argv, ATENDEAI_* variables, stdin) is checked here, once.

Python hands undecodable argv bytes over as lone surrogates (surrogateescape) and stdin may
carry any bytes; passed on, they fail deep inside psycopg, bcrypt or redis as a traceback.
Refused here they are one `Error:` line and exit 6, before anything is opened or changed.
Values are never echoed back: an argument may be a database URL with its password.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from atendeai_ctl.errors import AtendeaiError

MAX_STDIN_BYTES = 64 * 1024
"""More than any password line or token; the rest of a hostile stream is never read."""


def text_problem(value: str) -> str | None:
    """Why `value` cannot be passed on as text, or None when it can."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def check_text(value: str, what: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise AtendeaiError("invalid", f"{what} {problem}", "give UTF-8 text without NUL")
    return value


def check_arguments(args: Sequence[str]) -> None:
    for position, arg in enumerate(args, 1):
        previous = args[position - 2] if position > 1 else ""
        where = f" (after {previous})" if previous.startswith("-") and "=" not in previous else ""
        check_text(arg, f"argument {position}{where}")


def check_environment(environ: Mapping[str, str]) -> None:
    for key, value in environ.items():
        if key.startswith("ATENDEAI_"):
            check_text(value, f"environment variable {key}")


def _decode(raw: bytes, what: str) -> str:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AtendeaiError(
            "invalid",
            f"{what} on stdin is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start})",
            "give UTF-8 text without NUL",
        ) from None
    return check_text(decoded, f"{what} on stdin")


def _stdin_bytes(limit: int, *, line: bool) -> bytes:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text-only stream (an embedding program's): encode what it gives
        read = sys.stdin.readline(limit) if line else sys.stdin.read(limit)
        return read.encode("utf-8", "surrogateescape")
    data: bytes = buffer.readline(limit) if line else buffer.read(limit)
    return data


def read_stdin_line(what: str) -> str:
    """The first line of stdin (without its line ending), strictly decoded."""
    raw = _stdin_bytes(MAX_STDIN_BYTES, line=True)
    return _decode(raw.removesuffix(b"\n").removesuffix(b"\r"), what)


def read_stdin(what: str) -> str:
    """All of stdin, strictly decoded; more than MAX_STDIN_BYTES is refused unread."""
    raw = _stdin_bytes(MAX_STDIN_BYTES + 1, line=False)
    if len(raw) > MAX_STDIN_BYTES:
        raise AtendeaiError("invalid", f"{what} on stdin is longer than {MAX_STDIN_BYTES} bytes")
    return _decode(raw, what)

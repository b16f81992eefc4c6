"""Durations as operators type them: 30s, 15m, 2h, 7d (a bare number means seconds)."""

from __future__ import annotations

import re

from atendeai_ctl.errors import AtendeaiError

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

TOKEN_TTL_MIN_S = 1
TOKEN_TTL_MAX_S = 24 * 3600
"""`token issue --ttl` range: long enough for a smoke test, short enough to forget safely."""


def _show(seconds: int) -> str:
    """The largest whole unit, hours up to a day: "24h" reads better than "1d" for a TTL."""
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0 and (unit != "d" or seconds > 86400):
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_duration(text: str, *, what: str, minimum: int, maximum: int) -> int:
    """Seconds, or AtendeaiError("invalid") naming the accepted form and range."""
    match = _DURATION.match(text.lower())
    hint = f"use a number with s, m, h or d, from {_show(minimum)} to {_show(maximum)}"
    if match is None:
        raise AtendeaiError("invalid", f"{what} {text[:20]!r} is not a duration", hint)
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not minimum <= seconds <= maximum:
        raise AtendeaiError("invalid", f"{what} {text.strip()} is out of range", hint)
    return seconds


def parse_ttl(text: str) -> int:
    return parse_duration(text, what="--ttl", minimum=TOKEN_TTL_MIN_S, maximum=TOKEN_TTL_MAX_S)

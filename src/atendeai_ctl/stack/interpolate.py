"""Compose variable interpolation: ${VAR}, $VAR, ${VAR:-d}, ${VAR-d}, ${VAR:?m}, ${VAR?m},
${VAR:+a}, ${VAR+a} and $$ for a literal dollar.

Stricter than Compose on one point: a variable that is unset and has no default is an error
(Compose warns and substitutes ""), because a silently empty password or port is worse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PATTERN = re.compile(
    r"""\$(?:
        (?P<escaped>\$) |
        (?P<named>[_a-zA-Z][_a-zA-Z0-9]*) |
        \{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\} |
        (?P<invalid>)
    )""",
    re.VERBOSE,
)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped") is not None:
            return "$"
        name = match.group("named") or match.group("braced")
        if name is None:
            raise InterpolationError(f"invalid interpolation format in {text!r} (use $$ for '$')")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op is None:
            if value is None:
                raise InterpolationError(f"variable {name} is not set and has no default")
            return value
        empty_counts = op.startswith(":")
        missing = value is None or (empty_counts and value == "")
        kind = op[-1]
        if kind == "-":
            return interpolate(arg, env) if missing else str(value)
        if kind == "?":
            if missing:
                raise InterpolationError(
                    f"required variable {name} is missing: {arg or 'no value'}"
                )
            return str(value)
        return "" if missing else interpolate(arg, env)

    return _PATTERN.sub(replace, text)

"""The entry point, and the boundary: AtendeaiError becomes an exit code and one line here,
and only here.

Whatever escapes a command (AtendeaiError, a Docker engine refusal, or a bug) leaves as one
line on stderr (and a JSON error document with --json) and an exit code, never as a
traceback; ATENDEAI_DEBUG=1 adds the traceback for a bug report. Typer and the command tree
are imported only for a command that needs them (cli/status.py).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Sequence

from atendeai_ctl.cli._input import check_arguments, check_environment
from atendeai_ctl.cli.render import error
from atendeai_ctl.cli.status import status_shortcut
from atendeai_ctl.errors import AtendeaiError


def _from_engine(exc: Exception) -> AtendeaiError | None:
    """A Docker engine refusal mid-command is the operator's to act on, not a crash."""
    if not type(exc).__module__.startswith("docker."):
        return None
    detail = getattr(exc, "explanation", None) or str(exc)
    return AtendeaiError("failed", f"the Docker engine refused: {detail}", "see `atendeai status`")


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def _unexpected(exc: BaseException, *, debug: bool) -> AtendeaiError:
    """A bug, said in one line: the type and the first line of the message, passwords in
    URLs masked (the message of a library exception may quote a connection string)."""
    lines = str(exc).strip().splitlines()
    detail = _URL_PASSWORD.sub(r"\1***@", lines[0] if lines else "")
    if len(detail) > 300:
        detail = detail[:300] + "..."
    message = f"unexpected {type(exc).__name__}" + (f": {detail}" if detail else "")
    hint = None if debug else "set ATENDEAI_DEBUG=1 to see the traceback"
    return AtendeaiError("failed", message, hint)


def _fail(err: AtendeaiError, *, as_json: bool) -> None:
    error(err, as_json=as_json)
    sys.exit(err.exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    debug = os.environ.get("ATENDEAI_DEBUG") == "1"
    try:
        check_arguments(args)
        check_environment(os.environ)
        if args[:1] == ["status"] and (code := status_shortcut(args[1:])) is not None:
            sys.exit(code)  # the command scripts poll, without importing Typer
        from atendeai_ctl.cli.app import command

        command(args).main(args=args)
    except AtendeaiError as err:
        _fail(err, as_json=as_json)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        _fail(_from_engine(exc) or _unexpected(exc, debug=debug), as_json=as_json)

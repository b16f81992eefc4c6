"""Running the real `atendeai` boundary, cli.app.main(), in this process.

A subprocess costs a Python start per call; property tests make hundreds of calls. This
gives main() what a new process would have (argv, stdin bytes, stdout/stderr, environment)
and restores ours after; nothing inside the CLI is replaced.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from atendeai_ctl.cli.main import main


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


@contextmanager
def _process_state(
    args: list[str], stdin: bytes, env: Mapping[str, str]
) -> Iterator[tuple[io.BytesIO, io.BytesIO]]:
    out, err = io.BytesIO(), io.BytesIO()
    saved = sys.stdin, sys.stdout, sys.stderr, dict(os.environ), sys.argv
    sys.argv = ["atendeai", *args]
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="surrogateescape")
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace",
                                  write_through=True)  # fmt: skip
    os.environ.clear()
    os.environ.update(env)
    try:
        yield out, err
    finally:
        for stream in (sys.stdin, sys.stdout, sys.stderr):
            stream.flush()
            stream.detach()  # keep the BytesIO open for the caller
        sys.stdin, sys.stdout, sys.stderr = saved[:3]
        os.environ.clear()
        os.environ.update(saved[3])
        sys.argv = saved[4]


def run_main(args: list[str], stdin: bytes = b"", env: Mapping[str, str] | None = None) -> Ran:
    """main() with this argv; its exit code and what it wrote."""
    with _process_state(args, stdin, os.environ if env is None else env) as (out, err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Ran(
        code,
        out.getvalue().decode("utf-8", "backslashreplace"),
        err.getvalue().decode("utf-8", "backslashreplace"),
    )

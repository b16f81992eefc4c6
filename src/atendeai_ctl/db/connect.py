"""PostgreSQL URLs and connections, with driver errors turned into one-line AtendeaiErrors.

Shared by the migrations, the backups and the auth service: every caller gets the same clear
message for "cannot reach the server", "wrong password" or "no such database", and no message
ever contains the password (psycopg's own text never does; `redact` covers the URL itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT = 5
"""Seconds before an unreachable server is reported, instead of hanging on a dead host."""

_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def _split(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise AtendeaiError(
            "invalid",
            "the database URL must start with postgresql://",
            "e.g. postgresql://user:password@host:5432/dbname",
        )
    return scheme, rest


def psycopg_url(url: str) -> str:
    """The libpq form of a URL (psycopg and pg_dump do not know `postgresql+psycopg://`)."""
    return "postgresql://" + _split(url)[1]


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form, so a plain `postgresql://` URL uses psycopg 3 and not psycopg2."""
    return "postgresql+psycopg://" + _split(url)[1]


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe for messages and logs."""
    parts = urlsplit(psycopg_url(url))
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def conninfo(url: str) -> dict[str, str]:
    """libpq parameters of the URL (user, password, host, port, dbname, ...)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(psycopg_url(url))
    except Exception as exc:
        raise AtendeaiError(
            "invalid", f"cannot parse the database URL {redact(url)}", "check its syntax"
        ) from exc
    return {k: str(v) for k, v in params.items() if v is not None}


def describe(url: str) -> str:
    """`user@host:port/dbname`, how messages name a database."""
    params = conninfo(url)
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"{params.get('user', '?')}@{host}:{port}/{params.get('dbname', '?')}"


def _root_cause(exc: BaseException) -> BaseException:
    """The psycopg error inside a SQLAlchemy wrapper, or the error itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def _first_line(exc: BaseException, password: str | None) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = text.removeprefix("connection failed: ")
    text = re.sub(r"\s*FATAL:\s+", " ", text).strip()
    if password:
        text = text.replace(password, "***")
    return text


def credentials_refused(where: str) -> AtendeaiError:
    """PostgreSQL refused the login (`where`: describe()'s user@host:port/dbname)."""
    return AtendeaiError(
        "unauthorized",
        f"PostgreSQL rejected the credentials for {where}",
        "check the password (`atendeai config show`, or the one in --database-url)",
    )


def cannot_connect(where: str, reason: str) -> AtendeaiError:
    return AtendeaiError(
        "unavailable",
        f"cannot connect to PostgreSQL at {where}: {reason}",
        "start the stack with `atendeai up`, or check --database-url",
    )


def translate_error(exc: BaseException, url: str) -> AtendeaiError:
    """An AtendeaiError for a psycopg or SQLAlchemy database error, naming the database."""
    cause = _root_cause(exc)
    where = describe(url)
    password = conninfo(url).get("password")
    sqlstate = getattr(cause, "sqlstate", None)
    reason = _first_line(cause, password)
    if sqlstate in ("28P01", "28000") or "password authentication failed" in reason:
        return credentials_refused(where)
    if sqlstate == "3D000" or re.search(r'database ".*" does not exist', reason):
        return AtendeaiError(
            "not_found",
            f"database {conninfo(url).get('dbname', '?')!r} does not exist on {where}",
            "create it, or pass another --database-url",
        )
    if sqlstate == "55P03":
        return AtendeaiError(
            "failed",
            f"gave up waiting for a lock on {where}: {reason}",
            "another session holds a lock on the same table; retry when it is done",
        )
    if sqlstate == "42501":
        return AtendeaiError(
            "unauthorized",
            f"permission denied on {where}: {reason}",
            "connect as the database owner",
        )
    import psycopg

    if isinstance(cause, psycopg.OperationalError) and sqlstate is None:
        return cannot_connect(where, reason)
    return AtendeaiError("failed", f"database error on {where}: {reason}")


def _is_database_error(exc: BaseException) -> bool:
    import psycopg

    if isinstance(exc, psycopg.Error):
        return True
    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return False
    return isinstance(exc, DBAPIError)


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn any psycopg/SQLAlchemy error raised in the block into an AtendeaiError."""
    try:
        yield
    except AtendeaiError:
        raise
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        raise translate_error(exc, url) from exc


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection, or an AtendeaiError saying why there is none."""
    import psycopg

    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    with database_errors(url):
        return psycopg.connect(psycopg_url(url), **kwargs)


def wait_for_database(url: str, seconds: float, *, interval: float = 0.1) -> None:
    """Until the server accepts a connection, for at most `seconds`; then AtendeaiError.

    For a job started beside its database rather than after it (`up` starts the migrate job
    early, orchestrator.starts_early): a server still initialising refuses TCP, its name may
    not resolve yet, or it says it is starting up (57P03); those are waited out. A refused
    password or a missing database is not a matter of time and fails at once."""
    import time

    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(psycopg_url(url), connect_timeout=CONNECT_TIMEOUT):
                return
        except psycopg.OperationalError as exc:
            # libpq's connection errors carry no SQLSTATE (a refused password neither):
            # translate_error tells "cannot reach it" (unavailable) from the rest.
            error = translate_error(exc, url)
            retry = error.code == "unavailable" or exc.sqlstate == "57P03"
            if not retry or time.monotonic() + interval > deadline:
                raise error from exc
        time.sleep(interval)

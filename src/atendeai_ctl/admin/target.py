"""Where an admin command acts and who it acts as.

By default the running stack: its admin database URL, its Redis and its signing keys
directory; `--database-url` / `--redis-url` (or ATENDEAI_DATABASE_URL / ATENDEAI_REDIS_URL)
point at any other. The actor written to every audit row is the operator, `cli:<os user>`.

`Admin.transaction()` is the one transaction of a command: library calls inside it nest as
savepoints, and the Redis denylist writes they make happen before the commit, so a Redis
failure rolls the database change back instead of leaving sessions revoked only on paper.

The admin URL is the schema owner, which bypasses row level security; the library's
tenant-scoped queries rely on RLS to stay inside one clinic (a user is looked up by email
alone, a clinic's users are "every user"). So a transaction runs as `atendeai_app` (SET LOCAL
ROLE), under the same policies as the auth service; only the few reads that must span
clinics (the clinic list, the audit trail) ask for the owner role explicitly.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    import psycopg
    import redis

    from atendeai_ctl.auth.keys import KeyRing
    from atendeai_ctl.auth.redis_ha import RedisTarget
    from atendeai_ctl.auth.sessions import Denylist
    from atendeai_ctl.auth.settings import AuthSettings
    from atendeai_ctl.config import Config


def operator_actor() -> str:
    """`cli:<os user>`; the numeric uid when the account has no name (bare containers)."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        name = f"uid-{os.getuid()}"
    return f"cli:{name}"


def _redis_where(target: str | RedisTarget) -> str:
    from urllib.parse import urlsplit

    if not isinstance(target, str):
        return target.where()
    parts = urlsplit(target)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


@contextmanager
def redis_errors(url: str | RedisTarget) -> Iterator[None]:
    """Any Redis client error in the block becomes one line naming the server (no password)."""
    import redis

    from atendeai_ctl.auth.redis_ha import ReplicationUnconfirmed

    try:
        yield
    except ReplicationUnconfirmed as exc:
        raise AtendeaiError(
            "unavailable",
            f"Redis at {_redis_where(url)} took the revocation, but no replica confirmed it: {exc}",
            "a failover now could lose it; check that redis-replica is running, then run the"
            " command again",
        ) from exc
    except redis.AuthenticationError as exc:
        raise AtendeaiError(
            "unauthorized",
            f"Redis at {_redis_where(url)} rejected the credentials",
            "check the password in --redis-url",
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise AtendeaiError(
            "unavailable",
            f"cannot reach Redis at {_redis_where(url)}",
            "start the stack with `atendeai up`, or check --redis-url",
        ) from exc
    except redis.RedisError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AtendeaiError(
            "unavailable", f"Redis at {_redis_where(url)} refused the write: {reason}"
        ) from exc


@dataclass
class Admin:
    """One command's view of the platform: connection, policy, operator, keys, denylist."""

    config: Config
    settings: AuthSettings
    actor: str
    conn: psycopg.Connection[Any] | None = None
    client: redis.Redis | None = field(default=None, repr=False)
    # With a replica (profile `ha`): revocations wait for this many replicas, this long (ms).
    redis_wait: tuple[int, int] = (0, 0)

    @contextmanager
    def transaction(self, *, owner: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """BEGIN ... COMMIT, as the RLS-bound app role unless `owner` (reads across clinics)."""
        if self.conn is None:
            raise AtendeaiError("failed", "this command was opened without a database")
        with self.conn.transaction():
            if not owner:
                act_as_app(self.conn)
            yield self.conn

    @property
    def denylist(self) -> Denylist:
        from atendeai_ctl.auth.sessions import Denylist

        if self.client is None:
            raise AtendeaiError("failed", "this command was opened without Redis")
        replicas, timeout_ms = self.redis_wait
        return Denylist(self.client, wait_replicas=replicas, wait_timeout_ms=timeout_ms)

    @property
    def keys_dir(self) -> Path:
        return Path(self.config.require("ATENDEAI_JWT_KEYS_DIR")).expanduser()

    def ring(self) -> KeyRing:
        from atendeai_ctl.auth.keys import KeyRing

        return KeyRing(directory=self.keys_dir)


APP_ROLE = "atendeai_app"


def act_as_app(conn: psycopg.Connection[Any]) -> None:
    """Row level security for the rest of the transaction (SET LOCAL ends with it)."""
    import psycopg

    try:
        conn.execute(f"SET LOCAL ROLE {APP_ROLE}")
    except psycopg.errors.InvalidParameterValue as exc:  # no such role: never migrated
        raise _not_migrated() from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise AtendeaiError(
            "unauthorized",
            f"the admin database user may not act as {APP_ROLE}",
            f"connect as a superuser or a member of {APP_ROLE}",
        ) from exc


def resolve_config(
    *, database_url: str | None, redis_url: str | None, project_dir: Path | None
) -> Config:
    """Flags over the environment over the project's files, with the stack's secrets."""
    from atendeai_ctl.config import load_config

    return load_config(
        {
            "ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None,
            "ATENDEAI_DATABASE_URL": database_url,
            "ATENDEAI_REDIS_URL": redis_url,
        }
    ).with_secrets(generate=False)


def auth_settings(config: Config) -> AuthSettings:
    """The auth policy (issuer, audience, bcrypt cost) as the service reads it: same sources."""
    from atendeai_ctl.auth.settings import AuthSettings

    return AuthSettings.from_env({key: s.value for key, s in config.settings.items()})


@contextmanager
def open_admin(
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    project_dir: Path | None = None,
    need_redis: bool = False,
    need_database: bool = True,
    config: Config | None = None,
) -> Iterator[Admin]:
    """Connect (PostgreSQL in autocommit, so `transaction()` is a real BEGIN/COMMIT).

    Redis is reached first when the command will write to the denylist: if it is down the
    command stops before touching the database. `config`: already resolved settings (with
    the secrets) instead of the flags, e.g. the drill's, which adds the `ha` profile.
    """
    if config is None:
        config = resolve_config(
            database_url=database_url, redis_url=redis_url, project_dir=project_dir
        )
    admin = Admin(config, auth_settings(config), operator_actor())
    with contextlib.ExitStack() as stack:
        if need_redis:
            target = redis_target(config)
            admin.client = stack.enter_context(_redis_client(target))
            admin.redis_wait = target.denylist_wait()
        if need_database:
            admin.conn = stack.enter_context(_database(config.database_url()))
        yield admin


@contextmanager
def _redis_client(target: RedisTarget) -> Iterator[redis.Redis]:
    """The primary: the URL's server, or the one the Sentinels name (profile `ha`)."""
    with redis_errors(target):
        client = target.sync_client(socket_timeout=5, connect_timeout=3)
        try:
            client.ping()
            yield client
        finally:
            client.close()


@contextmanager
def _database(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose driver errors, raised anywhere in the command, become one line."""
    import psycopg

    from atendeai_ctl.db.connect import connect, database_errors

    with database_errors(url), connect(url, autocommit=True) as conn:
        try:
            yield conn
        except psycopg.errors.DataError as exc:
            raise AtendeaiError(
                "invalid", f"the database refused a value: {exc.diag.message_primary}"
            ) from exc
        except (
            psycopg.errors.UndefinedTable,
            psycopg.errors.UndefinedFunction,
            psycopg.errors.InvalidSchemaName,
        ) as exc:
            raise _not_migrated() from exc


def _not_migrated() -> AtendeaiError:
    return AtendeaiError(
        "not_ready",
        "this database has no atendeai schema (or an older one)",
        "run `atendeai migrate up` first",
    )


def redis_target(config: Config) -> RedisTarget:
    """How the CLI reaches the Redis primary. ATENDEAI_REDIS_SENTINELS when set; else, with
    the `ha` profile active and no ATENDEAI_REDIS_URL of its own, the stack's Sentinels on
    their published ports, and the containers they name mapped to published ports too
    (the announced names resolve only inside the project network)."""
    from atendeai_ctl.auth.redis_ha import RedisTarget
    from atendeai_ctl.config import (
        REDIS_SERVER_PORT_KEYS,
        SENTINEL_PORT_KEYS,
        connect_host,
        ha_active,
    )

    env = {key: s.value for key, s in config.settings.items()}
    url = config.redis_url()
    if env.get("ATENDEAI_REDIS_SENTINELS") or env.get("ATENDEAI_REDIS_URL"):
        return RedisTarget.from_env(env, url=url)
    if not ha_active(config.settings):
        return RedisTarget.from_env(env, url=url)
    host = connect_host(config.require("ATENDEAI_BIND"))
    env["ATENDEAI_REDIS_SENTINELS"] = ",".join(
        f"{host}:{config.port(key)}" for key in SENTINEL_PORT_KEYS
    )
    address_map = {
        (name, 6379): (host, config.port(key)) for name, key in REDIS_SERVER_PORT_KEYS.items()
    }
    return RedisTarget.from_env(env, url=url, address_map=address_map)

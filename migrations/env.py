"""Alembic environment of the `atendeai` schema.

Two ways in: `atendeai migrate ...` builds the Alembic Config in code and passes the URL and the
app role's password in `config.attributes`; a plain `alembic` command run in the project dir
reads the URL from `-x url=...` or ATENDEAI_DATABASE_URL and the password from
ATENDEAI_APP_DB_PASSWORD. Either way the same safety applies:

- a session-level advisory lock around the whole run, so a second concurrent run waits and
  then finds nothing to do (Alembic reads the current revision after the lock is held);
- one transaction per migration, so a failing migration leaves the schema exactly as the
  previous one left it;
- a lock_timeout for the DDL, so a migration stuck behind a long transaction fails instead of
  queueing every other query on that table behind its own lock request;
- at base nothing is left: the version table and the empty schema are dropped too.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, MetaData, create_engine, pool, text

from atendeai_ctl.db.connect import CONNECT_TIMEOUT, sqlalchemy_url
from atendeai_ctl.db.migrations import MIGRATION_LOCK_KEY as LOCK_KEY
from atendeai_ctl.db.migrations import SCHEMA
from atendeai_ctl.db.roles import (
    MONITOR_ROLE,
    ROLE_EXISTS_SQL,
    role_exists_sql,
    set_password_sql,
)

LOCK_WAIT = os.environ.get("ATENDEAI_MIGRATION_LOCK_WAIT", "10min")
DDL_LOCK_TIMEOUT = os.environ.get("ATENDEAI_MIGRATION_LOCK_TIMEOUT", "15s")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
target_metadata = MetaData(schema=SCHEMA, naming_convention=NAMING_CONVENTION)

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def record_applied(ctx: object, step: Any, heads: object, run_args: object) -> None:
    """Tell the caller which revisions this run applied (a concurrent run may have done some)."""
    config.attributes.setdefault("applied", []).append(step.up_revision_id)


COMMON_OPTIONS = {
    "target_metadata": target_metadata,
    "version_table_schema": SCHEMA,
    "transaction_per_migration": True,
    "include_schemas": True,
    "on_version_apply": [record_applied],
}


def database_url() -> str | None:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("ATENDEAI_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    return sqlalchemy_url(url) if url else None


def app_password() -> str | None:
    """From the caller when it says (even None); else the environment, for plain `alembic`."""
    if "app_db_password" in config.attributes:
        password = config.attributes["app_db_password"]
        return str(password) if password else None
    return os.environ.get("ATENDEAI_APP_DB_PASSWORD") or None


def monitor_password() -> str | None:
    """atendeai_monitor's (the postgres-exporter's), found the same way as app_password()."""
    if "monitor_db_password" in config.attributes:
        password = config.attributes["monitor_db_password"]
        return str(password) if password else None
    return os.environ.get("ATENDEAI_MONITOR_DB_PASSWORD") or None


def run_migrations_offline() -> None:
    """Print the SQL, locks included, for a DBA to run with psql; nothing is executed."""
    url = database_url()
    context.configure(
        url=url,
        dialect_name=None if url else "postgresql",
        literal_binds=True,
        **COMMON_OPTIONS,
    )
    context.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
    context.execute(f"SET lock_timeout = '{DDL_LOCK_TIMEOUT}'")
    context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    with context.begin_transaction():
        context.run_migrations()
    context.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})")


def set_app_password(connection: Connection) -> None:
    """Give atendeai_app its generated password, once the role exists."""
    password = app_password()
    has_role = connection.execute(text(ROLE_EXISTS_SQL)).first() is not None
    if password and has_role:
        connection.exec_driver_sql(set_password_sql(password))
    monitor = monitor_password()
    if monitor and connection.execute(text(role_exists_sql(MONITOR_ROLE))).first() is not None:
        connection.exec_driver_sql(set_password_sql(monitor, MONITOR_ROLE))
    connection.commit()
    config.attributes["app_password_set"] = bool(password and has_role)
    config.attributes["app_role_exists"] = has_role


def leave_nothing_at_base(connection: Connection) -> None:
    """At base, drop the version table and the then empty schema: no trace of atendeai left."""
    if context.get_context().get_current_heads():
        return
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {SCHEMA}.alembic_version")
    connection.exec_driver_sql(
        f"DO $$ BEGIN DROP SCHEMA {SCHEMA}; "
        "EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $$"
    )
    connection.commit()


def run_migrations_online() -> None:
    url = database_url()
    if url is None:
        raise SystemExit("no database URL: pass -x url=... or set ATENDEAI_DATABASE_URL")
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT}
    )
    # NullPool: closing the connection ends the session, which releases the advisory lock
    # on every exit path, a crash of this process included.
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_WAIT}'")
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({LOCK_KEY})")
        connection.exec_driver_sql(f"SET lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        connection.commit()
        context.configure(connection=connection, **COMMON_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        set_app_password(connection)
        leave_nothing_at_base(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

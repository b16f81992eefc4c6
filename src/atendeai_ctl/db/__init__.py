"""The platform database: schema migrations (Alembic), backups, connections.

    connect.py     URLs (psycopg/SQLAlchemy forms, redaction), connect(), database_errors():
                   psycopg/SQLAlchemy errors -> one-line AtendeaiError, for every caller
    migrations.py  upgrade(), plan_rollback()/rollback(), status(), history(), offline_sql()
    backup.py      dump() / restore() with pg_dump / pg_restore (custom format);
                   take_backup() (dump + manifest + retention), list_backups(), prune()
    manifest.py    the JSON manifest beside each dump: facts read in the dump's snapshot
    verify.py      verify_backup(): checksum, restore into a scratch database, compare
    roles.py       the atendeai_app role; its password sent as a SCRAM verifier

Modules import psycopg, SQLAlchemy and Alembic lazily, so importing them is cheap.
"""

"""The platform database: schema migrations (Alembic), backups, connections."""

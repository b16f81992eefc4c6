"""The stack's login roles (the RLS-bound app role, the monitoring role) and how their
passwords reach the server.

The password is sent as a SCRAM-SHA-256 verifier computed here, so the plaintext never
appears in a statement (and so never in the server log, even with log_statement=all).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

APP_ROLE = "atendeai_app"
MONITOR_ROLE = "atendeai_monitor"
ROLES = (APP_ROLE, MONITOR_ROLE)
SCRAM_ITERATIONS = 4096


def scram_sha256_verifier(password: str, *, salt: bytes | None = None) -> str:
    """The verifier PostgreSQL stores for `password` (RFC 5802/7677, as libpq computes it)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def set_password_sql(password: str, role: str = APP_ROLE) -> str:
    """`ALTER ROLE <role> PASSWORD '<verifier>'`: base64 and `$:` need no quoting, and the role
    is one of ours (never outside input), so nothing here is interpolated unchecked."""
    if role not in ROLES:
        raise ValueError(f"not a stack role: {role!r}")
    return f"ALTER ROLE {role} PASSWORD '{scram_sha256_verifier(password)}'"


def role_exists_sql(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"not a stack role: {role!r}")
    return f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"


ROLE_EXISTS_SQL = role_exists_sql(APP_ROLE)

"""The RLS-bound application role and how its password reaches the server.

The password is sent as a SCRAM-SHA-256 verifier computed here, so the plaintext never
appears in a statement (and so never in the server log, even with log_statement=all).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

APP_ROLE = "atendeai_app"
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


def set_password_sql(password: str) -> str:
    """`ALTER ROLE atendeai_app PASSWORD '<verifier>'`: base64 and `$:` need no quoting."""
    return f"ALTER ROLE {APP_ROLE} PASSWORD '{scram_sha256_verifier(password)}'"


ROLE_EXISTS_SQL = f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}'"

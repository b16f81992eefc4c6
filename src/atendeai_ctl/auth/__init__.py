"""The bundled auth service as a library: the admin CLI and the HTTP app both call these.

    settings   AuthSettings / RateLimits (ATENDEAI_AUTH_*)
    passwords  policy + bcrypt             keys      Ed25519 signing keys, JWKS, rotation
    tokens     access JWT issue/verify     sessions  login, logout, revocation, denylist
    refresh    rotation + reuse detection  audit     the audit trail
    clinics    tenant administration       users     user administration
    ratelimit  Redis limits (HTTP app)     service   one worker's state (HTTP app)
    http       the ASGI app over all of the above

Library functions take a psycopg connection (or pool) and an `actor` string for the audit
row, and raise atendeai_ctl.errors.AtendeaiError for user errors.

Only the light modules are re-exported here (`atendeai up` imports this package to create
the first signing key); import sessions, users, clinics ... from their modules.
"""

from atendeai_ctl.auth.keys import KeyRing, ensure_signing_key, rotate_key
from atendeai_ctl.auth.settings import AuthSettings, RateLimits

__all__ = ["AuthSettings", "KeyRing", "RateLimits", "ensure_signing_key", "rotate_key"]

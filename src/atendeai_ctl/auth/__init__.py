"""The bundled auth service as a library: the admin CLI and the HTTP app both call these.

passwords  policy + bcrypt          keys      Ed25519 signing keys, JWKS, rotation
tokens     access JWT issue/verify  sessions  login, refresh rotation, logout, revocation
clinics    tenant administration    users     user administration
audit      the audit trail          ratelimit Redis limits (HTTP app)
http       the ASGI app over all of the above
"""

from atendeai_ctl.auth.keys import ensure_signing_key
from atendeai_ctl.auth.settings import AuthSettings

__all__ = ["AuthSettings", "ensure_signing_key"]

"""Every secret a project holds, as the strings a leak would show.

A leak check that scans for an empty list passes on anything, so `project_secrets` insists on
each generated password by name and on at least one signing key, and returns the forms a
private key could leak in: the PEM body and the raw 32-byte seed (base64url, as a JWK's `d`,
and hex).
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PASSWORD_NAMES = (
    "ATENDEAI_POSTGRES_PASSWORD",
    "ATENDEAI_REDIS_PASSWORD",
    "ATENDEAI_APP_DB_PASSWORD",
    "ATENDEAI_MONITOR_DB_PASSWORD",
    "ATENDEAI_GRAFANA_ADMIN_PASSWORD",
)


def _key_forms(pem: bytes) -> dict[str, str]:
    body = "".join(
        line for line in pem.decode("ascii").splitlines() if line and not line.startswith("-----")
    )
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    seed = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return {
        "pem body": body,
        "seed (base64url)": base64.urlsafe_b64encode(seed).rstrip(b"=").decode(),
        "seed (hex)": seed.hex(),
    }


def project_secrets(state_dir: Path, project: str) -> dict[str, str]:
    """{what: secret} for the project's generated passwords and signing keys."""
    root = state_dir / project
    found: dict[str, str] = {}
    for raw in (root / "secrets.env").read_text().splitlines():
        key, sep, value = raw.partition("=")
        if sep and key.strip() in PASSWORD_NAMES:
            found[key.strip()] = value.strip().strip("'\"")
    missing = [name for name in PASSWORD_NAMES if len(found.get(name, "")) < 16]
    assert not missing, f"secrets.env lacks {missing}: the leak check would prove nothing"
    keys = sorted((root / "jwt").glob("*.pem"))
    assert keys, "no signing key under jwt/: the leak check would prove nothing"
    for path in keys:
        for form, value in _key_forms(path.read_bytes()).items():
            found[f"{path.stem} {form}"] = value
    return found


def leaked(text: str, secrets: dict[str, str]) -> list[str]:
    """The names of the secrets that appear in `text`."""
    return [name for name, value in secrets.items() if value in text]


def mask(text: str, secrets: dict[str, str]) -> str:
    """`text` with every secret replaced by its name, for assertion messages: a failing leak
    check must not print the secret into the CI log itself."""
    for name, value in secrets.items():
        text = text.replace(value, f"<{name}>")
    return text

"""Ed25519 signing keys on disk, and the in-memory key ring the service verifies with.

A keys directory holds one PKCS#8 PEM file per key, ``<kid>.pem``, mode 0600. The kid starts
with a UTC timestamp, so sorting kids sorts keys by age: the newest signs, every key present
stays in the JWKS (old public keys must outlive the tokens they signed; `prune_keys` removes
a key only once its successor is older than the longest token lifetime).

The ring notices a rotation without a restart: it re-reads the directory when its mtime
changes (checked at most once a second) and when a token names a kid it does not know.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.state import write_private

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
# cryptography is imported where a key is made or read: `atendeai up` on a project whose key
# exists only lists the directory, and the import is about 20 ms of every `up`.

KID = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{8}$")
RELOAD_INTERVAL_S = 1.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _new_kid() -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def _raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(kid: str, key: Ed25519PublicKey) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(_raw_public(key)),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    }


def _write_key(directory: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    kid = _new_kid()
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(directory / f"{kid}.pem", pem.decode("ascii"))
    return kid


def _load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AtendeaiError(
            "invalid", f"cannot read signing key {path}: {exc}", "rotate or replace the key"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AtendeaiError("invalid", f"{path} is not an Ed25519 private key")
    return key


def _kids(directory: Path) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n[:-4] for n in names if n.endswith(".pem") and KID.match(n[:-4]))


def ensure_signing_key(directory: Path) -> None:
    """Create the first signing key if the directory has none (dir 0700, file 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _kids(directory):
        _write_key(directory)


def rotate_key(directory: Path) -> str:
    """Add a new key that signs from now on; older keys stay for verification."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _write_key(directory)


def _created(kid: str) -> float:
    match = KID.match(kid)
    assert match is not None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    created_at: datetime
    signing: bool


def list_keys(directory: Path) -> list[KeyInfo]:
    kids = _kids(directory)
    return [
        KeyInfo(kid, datetime.fromtimestamp(_created(kid), UTC), i == len(kids) - 1)
        for i, kid in enumerate(kids)
    ]


def prune_keys(directory: Path, *, older_than_s: int) -> list[str]:
    """Delete keys whose successor has signed for longer than `older_than_s` (the max TTL)."""
    kids = _kids(directory)
    now = time.time()
    removed = []
    for kid, successor in itertools.pairwise(kids):
        if now - _created(successor) > older_than_s:
            (directory / f"{kid}.pem").unlink(missing_ok=True)
            removed.append(kid)
    return removed


def file_kid(key: Ed25519PublicKey) -> str:
    """A stable kid for a single key file: a short thumbprint of the public key."""
    return _b64(hashlib.sha256(_raw_public(key)).digest())[:16]


class KeyRing:
    """Parsed keys, cached: verification never touches the disk unless something changed."""

    def __init__(self, directory: Path | None = None, private_key_file: Path | None = None):
        if (directory is None) == (private_key_file is None):
            raise AtendeaiError("invalid", "give either a keys directory or one private key file")
        self.directory = directory
        self.private_key_file = private_key_file
        self._private: dict[str, Ed25519PrivateKey] = {}
        self.public: dict[str, Ed25519PublicKey] = {}
        self.signing_kid = ""
        self.generation = 0
        self._mtime = -1.0
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        if self.private_key_file is not None:
            key = _load_private(self.private_key_file)
            private = {file_kid(key.public_key()): key}
        else:
            assert self.directory is not None
            try:
                self._mtime = self.directory.stat().st_mtime
            except FileNotFoundError as exc:
                raise AtendeaiError(
                    "not_found",
                    f"keys directory {self.directory} does not exist",
                    "run `atendeai up` (it creates the first key) or set ATENDEAI_JWT_KEYS_DIR",
                ) from exc
            kids = _kids(self.directory)
            private = {
                kid: self._private.get(kid) or _load_private(self.directory / f"{kid}.pem")
                for kid in kids
            }
        if not private:
            raise AtendeaiError(
                "not_found", f"no signing key in {self.directory}", "run `atendeai auth rotate-key`"
            )
        self._private = private
        self.public = {kid: key.public_key() for kid, key in private.items()}
        self.signing_kid = max(private)
        self.generation += 1
        self._checked = time.monotonic()

    def refresh_if_changed(self) -> None:
        """Cheap (one stat a second at most): pick up a rotation done by another process."""
        if self.directory is None:
            return
        now = time.monotonic()
        if now - self._checked < RELOAD_INTERVAL_S:
            return
        self._checked = now
        try:
            mtime = self.directory.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            self.reload()

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        self.refresh_if_changed()
        return self.signing_kid, self._private[self.signing_kid]

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        key = self.public.get(kid)
        if key is None and self.directory is not None and KID.match(kid):
            self._checked = 0.0
            self.refresh_if_changed()
            key = self.public.get(kid)
        return key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        self.refresh_if_changed()
        return {"keys": [public_jwk(kid, key) for kid, key in sorted(self.public.items())]}

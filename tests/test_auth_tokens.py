"""Access tokens and signing keys: every way a forged or stale token must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atendeai_ctl.auth import keys
from atendeai_ctl.auth.keys import KeyRing, ensure_signing_key, prune_keys, rotate_key
from atendeai_ctl.auth.tokens import REQUIRED_CLAIMS, Verifier, issue_access_token
from tests.auth_helpers import FAST, refusal_reason, token_claims


def _ring(tmp_path: Path) -> KeyRing:
    ensure_signing_key(tmp_path / "jwt")
    return KeyRing(directory=tmp_path / "jwt")


def _token(ring: KeyRing, **overrides: Any) -> str:
    return issue_access_token(
        ring, FAST, user_id="u-1", clinic_id="c-1", session_id="s-1", role="staff", **overrides
    )[0]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_first_key_is_created_once_with_private_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "jwt"
    ensure_signing_key(directory)
    ensure_signing_key(directory)
    files = list(directory.iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_valid_token_verifies_with_every_required_claim(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    claims = Verifier(ring, FAST).verify(_token(ring))
    assert {*REQUIRED_CLAIMS, "clinic_id"} <= set(claims)
    header = jwt.get_unverified_header(_token(ring))
    assert header["alg"] == "EdDSA" and header["kid"] == ring.signing_kid


def test_alg_none_is_refused(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    header = _b64(json.dumps({"alg": "none", "kid": ring.signing_kid}).encode())
    token = f"{header}.{_b64(json.dumps(token_claims()).encode())}."
    assert refusal_reason(Verifier(ring, FAST), token) == "algorithm_not_allowed"


def test_hs256_signed_with_the_public_key_is_refused(tmp_path: Path) -> None:
    """Key confusion: an HMAC 'signed' with the published public key must not pass."""
    ring = _ring(tmp_path)
    public = ring.public[ring.signing_kid].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": ring.signing_kid}).encode())
    body = _b64(json.dumps(token_claims()).encode())
    sig = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert (
        refusal_reason(Verifier(ring, FAST), f"{header}.{body}.{_b64(sig)}")
        == "algorithm_not_allowed"
    )


def test_rs256_and_es256_tokens_are_refused(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    verifier = Verifier(ring, FAST)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        token_claims(), rsa_key, algorithm="RS256", headers={"kid": ring.signing_kid}
    )
    assert refusal_reason(verifier, token) == "algorithm_not_allowed"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(token_claims(), ec_key, algorithm="ES256", headers={"kid": ring.signing_kid})
    assert refusal_reason(verifier, token) == "algorithm_not_allowed"


def test_a_foreign_kid_is_refused(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    foreign = Ed25519PrivateKey.generate()
    token = jwt.encode(token_claims(), foreign, algorithm="EdDSA", headers={"kid": "someone-else"})
    assert refusal_reason(Verifier(ring, FAST), token) == "unknown_kid"
    no_kid = jwt.encode(token_claims(), foreign, algorithm="EdDSA")
    assert refusal_reason(Verifier(ring, FAST), no_kid) == "unknown_kid"


def test_a_foreign_key_claiming_our_kid_is_refused(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    foreign = Ed25519PrivateKey.generate()
    token = jwt.encode(
        token_claims(), foreign, algorithm="EdDSA", headers={"kid": ring.signing_kid}
    )
    assert refusal_reason(Verifier(ring, FAST), token) == "bad_signature"


def test_a_tampered_payload_is_refused_even_after_the_original_was_cached(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    verifier = Verifier(ring, FAST)
    token = _token(ring)
    verifier.verify(token)
    header, _, signature = token.split(".")
    forged = _b64(json.dumps(token_claims(sub="admin-user", role="owner")).encode())
    assert refusal_reason(verifier, f"{header}.{forged}.{signature}") == "bad_signature"


def test_a_signature_of_another_length_is_a_bad_signature(tmp_path: Path) -> None:
    """libsodium takes signature and message as one buffer, so the length is checked first;
    every length but 64 is refused with the reason, never an error of another kind."""
    ring = _ring(tmp_path)
    verifier = Verifier(ring, FAST)
    _, key = ring.signing_key()
    header, payload, _ = _token(ring).split(".")
    signed = f"{header}.{payload}".encode()
    real = key.sign(signed)
    for signature in (real[:63], real + b"\0", b"", real[:32], real * 2, real[1:] + real[:1]):
        forged = f"{header}.{payload}.{_b64(signature)}"
        assert refusal_reason(verifier, forged) == "bad_signature"
    assert verifier.verify(f"{header}.{payload}.{_b64(real)}")["sub"]


def test_an_expired_token_is_refused_also_from_the_cache(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    verifier = Verifier(ring, FAST)
    expired = _token(ring, ttl_s=-1)
    assert refusal_reason(verifier, expired) == "expired"
    short = _token(ring, ttl_s=1)
    verifier.verify(short)
    time.sleep(1.1)
    assert refusal_reason(verifier, short) == "expired"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "aud", "iss", "clinic_id", "sid"])
def test_each_required_claim_is_required(tmp_path: Path, claim: str) -> None:
    ring = _ring(tmp_path)
    kid, key = ring.signing_key()
    token = jwt.encode(token_claims(**{claim: None}), key, algorithm="EdDSA", headers={"kid": kid})
    assert refusal_reason(Verifier(ring, FAST), token).startswith("missing_claim")


def test_wrong_audience_or_issuer_is_refused(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    kid, key = ring.signing_key()
    verifier = Verifier(ring, FAST)
    for changes, reason in (
        ({"aud": "other-api"}, "wrong_audience"),
        ({"iss": "evil"}, "wrong_issuer"),
    ):
        token = jwt.encode(token_claims(**changes), key, algorithm="EdDSA", headers={"kid": kid})
        assert refusal_reason(verifier, token) == reason


def test_garbage_is_refused(tmp_path: Path) -> None:
    verifier = Verifier(_ring(tmp_path), FAST)
    for token in ("", "abc", "a.b.c", "x" * 5000):
        assert refusal_reason(verifier, token) == "malformed"


def test_rotation_keeps_old_public_keys_and_is_picked_up_without_restart(tmp_path: Path) -> None:
    directory = tmp_path / "jwt"
    ensure_signing_key(directory)
    service_ring = KeyRing(directory=directory)
    verifier = Verifier(service_ring, FAST)
    old_kid = service_ring.signing_kid
    old_token = _token(service_ring)

    time.sleep(1.1)  # kids carry a second-resolution timestamp
    new_kid = rotate_key(directory)
    assert new_kid > old_kid
    # another process (the CLI) signs with the new key: the service learns it on sight
    new_token = _token(KeyRing(directory=directory))
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert verifier.verify(new_token)["sub"] == "u-1"
    assert verifier.verify(old_token)["sub"] == "u-1"
    assert service_ring.signing_key()[0] == new_kid
    assert {k["kid"] for k in service_ring.jwks()["keys"]} == {old_kid, new_kid}
    assert all(k["alg"] == "EdDSA" and k["crv"] == "Ed25519" for k in service_ring.jwks()["keys"])


def test_prune_removes_a_key_only_after_its_successor_outlived_the_tokens(tmp_path: Path) -> None:
    directory = tmp_path / "jwt"
    ensure_signing_key(directory)
    time.sleep(1.1)
    rotate_key(directory)
    assert prune_keys(directory, older_than_s=900) == []
    assert len(keys.list_keys(directory)) == 2
    time.sleep(1.1)
    removed = prune_keys(directory, older_than_s=0)
    assert len(removed) == 1
    assert [k.signing for k in keys.list_keys(directory)] == [True]


def test_a_single_private_key_file_works_too(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)
    ring = KeyRing(private_key_file=path)
    assert Verifier(ring, FAST).verify(_token(ring))["clinic_id"] == "c-1"


def test_access_ttl_is_15_minutes_by_default_and_configurable(tmp_path: Path) -> None:
    from atendeai_ctl.auth.settings import AuthSettings

    ring = _ring(tmp_path)
    for settings, ttl in (
        (AuthSettings(), 900),
        (AuthSettings.from_env({"ATENDEAI_AUTH_ACCESS_TTL": "300"}), 300),
    ):
        claims = issue_access_token(
            ring, settings, user_id="u", clinic_id="c", session_id="s", role="staff"
        )[1]
        assert claims["exp"] - claims["iat"] == ttl
    assert AuthSettings().refresh_ttl_s == 30 * 86400

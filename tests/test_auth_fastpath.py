"""The request path's shortcuts keep every check: pinned JWS headers, one-write responses,
literal SQL in refresh, the raw readiness route, pre-encoded rate-limit headers."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg

from atendeai_ctl.auth._server import CoalescingTransport
from atendeai_ctl.auth.keys import KeyRing, ensure_signing_key
from atendeai_ctl.auth.ratelimit import Decision
from atendeai_ctl.auth.refresh import _inet
from atendeai_ctl.auth.tokens import Verifier, issue_access_token
from tests.auth_helpers import FAST, LiveServer, refusal_reason, token_claims


def _ring(tmp_path: Path) -> KeyRing:
    ensure_signing_key(tmp_path / "jwt")
    return KeyRing(directory=tmp_path / "jwt")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_our_tokens_carry_the_header_pyjwt_would_write(tmp_path: Path) -> None:
    """The pinned header bytes are the ones PyJWT writes for the same header, so tokens
    minted before this verifier (by PyJWT) take the exact-match path too."""
    ring = _ring(tmp_path)
    kid, key = ring.signing_key()
    ours = issue_access_token(ring, FAST, user_id="u", clinic_id="c", session_id="s", role="r")
    theirs = jwt.encode(token_claims(), key, algorithm="EdDSA", headers={"kid": kid})
    assert ours[0].split(".")[0] == theirs.split(".")[0]
    assert jwt.decode(
        ours[0], ring.public[kid], algorithms=["EdDSA"], audience=FAST.audience
    ) == json.loads(json.dumps(ours[1]))


def test_verify_returns_the_signed_payload_bytes(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    token, claims = issue_access_token(
        ring, FAST, user_id="u", clinic_id="c", session_id="s", role="r"
    )
    verifier = Verifier(ring, FAST)
    for _ in range(2):  # a miss, then a cache hit
        found, body = verifier.verify_with_payload(token)
        assert found == claims and json.loads(body) == claims


def test_a_header_in_another_spelling_is_parsed_and_still_pinned(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    kid, key = ring.signing_key()
    verifier = Verifier(ring, FAST)
    other = jwt.encode(
        token_claims(), key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}
    )
    assert verifier.verify(other)["sub"] == "u-1"
    # the same header segment with a forged payload still needs the signature
    header, _, signature = other.split(".")
    forged = _b64(json.dumps(token_claims(sub="admin")).encode())
    assert refusal_reason(verifier, f"{header}.{forged}.{signature}") == "bad_signature"
    crit = jwt.encode(token_claims(), key, algorithm="EdDSA", headers={"kid": kid, "crit": ["exp"]})
    assert refusal_reason(verifier, crit) == "malformed"


def test_base64url_is_decoded_strictly(tmp_path: Path) -> None:
    """As strict as PyJWT was: a lenient decoder (base64.urlsafe_b64decode) skips characters
    outside the alphabet, so one token would have many spellings, each a cache miss."""
    ring = _ring(tmp_path)
    token = issue_access_token(ring, FAST, user_id="u", clinic_id="c", session_id="s", role="r")[0]
    header, payload, signature = token.split(".")
    verifier = Verifier(ring, FAST)
    for bad in (
        f"{header}.{payload}.{signature[:10]}!{signature[10:]}",
        f"{header}.{payload[:5]}*{payload[5:]}.{signature}",
        f"{header}.{payload}.{signature}=",
    ):
        assert refusal_reason(verifier, bad) == "malformed"
    assert verifier.verify(token)["sub"] == "u"


def test_registered_claims_are_checked_as_before(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    kid, key = ring.signing_key()
    verifier = Verifier(ring, FAST)

    def sign(**changes: Any) -> str:
        """Signed by hand: PyJWT refuses to encode some of these claims."""
        header = _b64(json.dumps({"alg": "EdDSA", "kid": kid, "typ": "JWT"}).encode())
        signing_input = f"{header}.{_b64(json.dumps(token_claims(**changes)).encode())}"
        return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"

    now = int(time.time())
    assert refusal_reason(verifier, sign(nbf=now + 60)) == "not_yet_valid"
    assert refusal_reason(verifier, sign(iat=now + 60)) == "not_yet_valid"
    assert refusal_reason(verifier, sign(exp="soon")) == "malformed"
    assert refusal_reason(verifier, sign(exp=True)) == "malformed"
    assert refusal_reason(verifier, sign(aud=["other", "another"])) == "wrong_audience"
    assert refusal_reason(verifier, sign(aud=7)) == "wrong_audience"
    assert refusal_reason(verifier, sign(iss=["x"])) == "wrong_issuer"
    assert refusal_reason(verifier, sign(sid=5)) == "missing_claim:sid"
    assert verifier.verify(sign(aud=["other", FAST.audience], nbf=now - 1))["sub"] == "u-1"


def test_refresh_writes_only_checked_ip_literals() -> None:
    assert _inet("127.0.0.1") == "'127.0.0.1'::inet"
    assert _inet("2001:db8::1") == "'2001:db8::1'::inet"
    for hostile in ("1'; DROP TABLE atendeai.sessions; --", "", "localhost", None):
        assert _inet(hostile) == "NULL"


def test_rate_limit_headers_encode_like_the_dict() -> None:
    for decision in (
        Decision(True, 100, 40, 12),
        Decision(False, 100, 0, 0, "requests_per_ip"),
        Decision(True, 0, 0, 0),
    ):
        assert decision.raw_headers() == [
            (k.lower().encode(), v.encode()) for k, v in decision.headers().items()
        ]


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"extra:{name}"


def test_writes_of_one_loop_iteration_leave_in_one_write_in_order() -> None:
    async def main() -> _Recorder:
        real = _Recorder()
        wrapped = CoalescingTransport(real, asyncio.get_running_loop())
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(b"body")
        assert real.writes == []  # nothing left yet
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        wrapped.write(b"second")
        wrapped.close()  # flushes before closing, synchronously
        assert real.events == ["write", "write", "close"] and real.writes[-1] == b"second"
        wrapped.write(b"after close")
        await asyncio.sleep(0)
        assert wrapped.get_extra_info("peername") == "extra:peername"
        return real

    real = asyncio.run(main())
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"second"]


def test_readiness_is_answered_by_the_raw_front_and_the_router(server: LiveServer) -> None:
    with server.client() as http:
        got = http.get("/health/ready", headers={"X-Request-ID": "ready-1"})
        assert got.status_code == 200 and got.json() == {"status": "ok"}
        assert got.headers["content-type"] == "application/json"
        assert got.headers["x-request-id"] == "ready-1"
        assert http.head("/health/ready").status_code == 200
        assert http.post("/health/ready").status_code == 405


def test_generated_request_ids_are_unique_hex(server: LiveServer) -> None:
    with server.client() as http:
        ids = [http.get("/health/live").headers["x-request-id"] for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_access_log_lines_are_json(server: LiveServer) -> None:
    with server.client() as http:
        http.get("/auth/verify", headers={"X-Request-ID": "log-1"})
    lines = [json.loads(line) for line in server.log.getvalue().splitlines()]
    request = [line for line in lines if line.get("request_id") == "log-1"]
    assert request[-1]["event"] == "request" and request[-1]["status"] == 401
    assert request[-1]["route"] == "/auth/verify" and request[-1]["method"] == "GET"


def test_refresh_rotates_in_one_statement_and_audits_the_ip(
    server: LiveServer, admin_conn: psycopg.Connection[Any]
) -> None:
    pair = server.login()
    with server.client() as http:
        got = http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
    body = got.json()
    assert (
        httpx.get(
            server.url + "/auth/verify", headers={"Authorization": f"Bearer {body['access_token']}"}
        ).json()["sid"]
        == jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]
    )
    rows = admin_conn.execute(
        "SELECT outcome, host(ip) FROM atendeai.audit_log WHERE action = 'refresh'"
    ).fetchall()
    assert rows == [("success", "127.0.0.1")]
    spent = admin_conn.execute(
        "SELECT count(*) FILTER (WHERE used_at IS NOT NULL AND replaced_by IS NOT NULL),"
        " count(*) FILTER (WHERE used_at IS NULL) FROM atendeai.refresh_tokens"
    ).fetchone()
    assert spent == (1, 1)

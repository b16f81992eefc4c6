"""Property tests (hypothesis) over the auth edge: no input gets a 5xx or kills the connection.

One server for the module (PostgreSQL, Redis, uvicorn on a real socket) and one keep-alive
connection per test: every example sends one hostile request, checks the answer is a JSON
document below 500, then sends GET /health/live on the SAME socket. The login limits are off
here so every well-formed example goes all the way to PostgreSQL and bcrypt.

Header values are drawn from what HTTP/1.1 allows in a field value (VCHAR, obs-text, SP,
HTAB), and methods from those the parser knows: anything else is a framing error that
uvicorn's HTTP parser answers (400) and closes on before the app sees a request.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from atendeai_ctl.auth import clinics, sessions, users
from atendeai_ctl.auth.forwarding import ClientAddress, parse_address
from atendeai_ctl.auth.http import KNOWN_ROUTES
from atendeai_ctl.auth.identity import normalize, unsafe
from atendeai_ctl.auth.keys import KeyRing, ensure_signing_key
from atendeai_ctl.auth.ratelimit import account_key
from atendeai_ctl.auth.settings import parse_networks
from tests.auth_helpers import (
    APP_PASSWORD,
    FAST,
    PASSWORD,
    AuthDb,
    LiveServer,
    live_server,
    strict_limits,
)
from tests.servers import PostgresServer, RedisServer

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Target:
    live: LiveServer
    access_token: str
    refresh_token: str
    admin: psycopg.Connection[Any]
    ring: KeyRing

    def mint(self) -> str:
        """A token in a session of its own, without a bcrypt login (as `token issue` does)."""
        token, _ = sessions.issue_token(
            self.admin, self.ring, FAST, clinic="alpha", email="ana@alpha.test", ttl_s=600,
            actor="cli:test",
        )  # fmt: skip
        return token


@pytest.fixture(scope="module")
def target(
    pg: PostgresServer, redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    from atendeai_ctl.db.migrations import upgrade

    name = pg.create_database()
    admin_url = pg.url(name)
    upgrade(admin_url, app_password=APP_PASSWORD)
    with psycopg.connect(admin_url) as conn:
        clinics.create_clinic(conn, slug="alpha", name="Alpha", actor="cli:test")
        users.create_user(conn, FAST, clinic="alpha", email="ana@alpha.test", password=PASSWORD,
                          actor="cli:test")  # fmt: skip
    keys = tmp_path_factory.mktemp("jwt")
    ensure_signing_key(keys)
    db = AuthDb(admin_url, pg.url(name, user="atendeai_app", password=APP_PASSWORD))
    limits = strict_limits(login_failures_per_account=0, login_failures_per_ip=0,
                           requests_per_ip=0)  # fmt: skip
    with (
        live_server(db, redis_srv.url(), keys, limits) as live,
        psycopg.connect(admin_url, autocommit=True) as admin,
    ):
        pair = live.login()
        yield Target(
            live, pair["access_token"], pair["refresh_token"], admin, KeyRing(directory=keys)
        )
    pg.drop_database(name)


class Wire:
    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.connect()
        self.sock = self.conn.sock

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, Any]
    ) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def check(self, method: str, path: str, body: bytes | None, headers: dict[str, Any]) -> int:
        """One hostile request, then a plain one on the same socket."""
        status, data = self.send(method, path, body, headers)
        assert status < 500, (status, data[:300])
        if status >= 400:
            document = json.loads(data)
            assert set(document) == {"error", "message"}, document
        assert self.conn.sock is self.sock, "the server closed the connection"
        status_after, _ = self.send("GET", "/health/live", None, {})
        assert status_after == 200 and self.conn.sock is self.sock
        event(f"{path} answered {status}")
        return status


@pytest.fixture
def wire(target: Target) -> Iterator[Wire]:
    w = Wire(target.live.url)
    yield w
    w.conn.close()


# -- strategies ----------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=80)  # surrogates, NUL included
huge_text = st.integers(0, 90_000).map(lambda n: "\u00e9" * n)
deep = st.integers(1, 6000).map(lambda n: "[" * n + "]" * n)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def json_body(draw: st.DrawFn, fields: tuple[str, ...]) -> bytes:
    """A JSON object whose named fields are anything, raw-spliced deep nesting included."""
    parts = []
    for name in fields:
        kind = draw(st.sampled_from(["text", "value", "deep", "huge", "absent", "valid"]))
        if kind == "absent":
            continue
        if kind == "deep":
            raw = draw(deep)
        elif kind == "huge":
            raw = json.dumps(draw(huge_text))
        elif kind == "value":
            raw = json.dumps(draw(json_values))
        elif kind == "valid":
            raw = json.dumps({"clinic": "alpha", "email": "ana@alpha.test"}.get(name, "x" * 14))
        else:
            raw = json.dumps(draw(any_text), ensure_ascii=draw(st.booleans()))
        parts.append(f"{json.dumps(name)}: {raw}")
    text = "{" + ", ".join(parts) + "}"
    return text.encode("utf-8", "surrogatepass")


storable_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=60
)


@st.composite
def string_body(draw: st.DrawFn, fields: tuple[str, ...]) -> bytes:
    """Every field a string PostgreSQL can hold: these examples reach the database."""
    valid = {"clinic": "alpha", "email": "ana@alpha.test", "scope": "session"}
    document = {
        name: draw(st.one_of(storable_text, st.just(valid.get(name, "x" * 14)))) for name in fields
    }
    return json.dumps(document, ensure_ascii=draw(st.booleans())).encode()


def bodies(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        string_body(fields),  # three times: about half the examples reach PostgreSQL
        string_body(fields),
        string_body(fields),
        json_body(fields),
        st.binary(max_size=2000),
        deep.map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
        st.integers(60_000, 120_000).map(lambda n: b"[" * n),
    )


FIELD_BYTES = st.binary(max_size=300).map(
    lambda raw: bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128).strip(b" \t")
)
bearer_values = st.one_of(
    FIELD_BYTES,
    FIELD_BYTES.map(lambda raw: b"Bearer " + raw),
    st.integers(1, 3000).map(
        lambda n: b"Bearer " + base64.urlsafe_b64encode(b"[" * n + b"]" * n) + b".e30.c2ln"
    ),
    st.integers(4000, 9000).map(lambda n: b"Bearer " + b"A" * n),
)
common_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Forwarded-For": FIELD_BYTES,
        "X-Request-ID": FIELD_BYTES,
        "User-Agent": FIELD_BYTES,
        "Content-Type": FIELD_BYTES,
    },
)


# -- the edge ------------------------------------------------------------------------------


@EXAMPLES
@given(body=bodies(("clinic", "email", "password")), headers=common_headers)
def test_login_never_5xx_and_keeps_the_connection(
    wire: Wire, body: bytes, headers: dict[str, bytes]
) -> None:
    status = wire.check("POST", "/auth/login", body, headers)
    assert status in (200, 400, 401, 413)


@EXAMPLES
@given(body=bodies(("refresh_token",)), headers=common_headers)
def test_refresh_never_5xx_and_keeps_the_connection(
    wire: Wire, body: bytes, headers: dict[str, bytes]
) -> None:
    status = wire.check("POST", "/auth/refresh", body, headers)
    assert status in (400, 401, 413)


@EXAMPLES
@given(
    body=bodies(("scope",)),
    headers=common_headers,
    kind=st.sampled_from(["fresh", "fresh", "none", "hostile"]),
    hostile=bearer_values,
)
def test_logout_never_5xx_and_keeps_the_connection(
    wire: Wire,
    target: Target,
    body: bytes,
    headers: dict[str, bytes],
    kind: str,
    hostile: bytes,
) -> None:
    authorization = None if kind == "none" else hostile
    if kind == "fresh":  # a live session of its own, so the body is read
        authorization = f"Bearer {target.mint()}".encode()
    if authorization is not None:
        headers = {**headers, "Authorization": authorization}
    status = wire.check("POST", "/auth/logout", body, headers)
    assert status in (204, 400, 401, 413)


@EXAMPLES
@given(authorization=bearer_values, headers=common_headers)
def test_verify_and_me_never_5xx_and_keep_the_connection(
    wire: Wire, target: Target, authorization: bytes, headers: dict[str, bytes]
) -> None:
    for path in ("/auth/verify", "/auth/me"):
        status = wire.check("GET", path, None, {**headers, "Authorization": authorization})
        assert status == 401
    # a valid token next to hostile headers still works
    valid = {**headers, "Authorization": f"Bearer {target.access_token}"}
    assert wire.check("GET", "/auth/verify", None, valid) == 200


@EXAMPLES
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.one_of(
        st.sampled_from(sorted(KNOWN_ROUTES)),
        st.text(max_size=60).map(lambda t: "/" + quote(t, safe="/%?&=+;")),
        st.sampled_from(sorted(KNOWN_ROUTES)).map(lambda r: r + "%00%ff%c3%28/..;/"),
    ),
    headers=common_headers,
)
def test_any_method_and_path_never_5xx(
    wire: Wire, method: str, path: str, headers: dict[str, bytes]
) -> None:
    body = None if method in ("GET", "HEAD") else b"{}"
    if method == "HEAD":  # no body comes back to check; the connection must still live
        wire.conn.request(method, path, headers=headers)
        response = wire.conn.getresponse()
        response.read()
        assert response.status < 500 and wire.conn.sock is wire.sock
        return
    wire.check(method, path, body, headers)


# -- the pure pieces -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.characters(exclude_categories=()), max_size=40))
def test_normalize_is_idempotent_and_keys_agree(value: str) -> None:
    once = normalize(value)
    assert normalize(once) == once
    assert account_key(value, value.upper()) == account_key(once, normalize(value.upper()))
    assert unsafe(value) == ("\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value))


SHARED_RESOLVER = ClientAddress(parse_networks("127.0.0.1, 10.0.0.0/8"))


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=12)), max_size=6),
    peer=st.sampled_from(["127.0.0.1", "10.1.1.1", "192.0.2.8"]),
)
def test_forwarded_client_is_never_a_forgery_left_of_the_proxies(
    entries: list[str], peer: str
) -> None:
    trusted = parse_networks("127.0.0.1, 10.0.0.0/8")
    resolve = ClientAddress(trusted)
    header = ",".join(entries).encode("utf-8", "replace")
    scope = {"client": (peer, 1), "headers": [(b"x-forwarded-for", header)]}
    client = resolve(scope)
    ipaddress.ip_address(client)  # always an address
    # The walk is remembered by the header values: asked again, and by a resolver that has
    # seen every example so far, the answer is the same.
    assert resolve(scope) == client and SHARED_RESOLVER(scope) == client
    if peer == "192.0.2.8":
        assert client == peer
        return
    # the answer is the peer or the right-most untrusted parsable entry reached by the walk
    walked = [parse_address(e) for e in header.decode("latin-1").split(",")] if entries else []
    expected = peer
    for address in reversed(walked):
        if address is None:
            expected = peer
            break
        expected = str(address)
        if not any(address in n for n in trusted):
            break
    assert client == expected

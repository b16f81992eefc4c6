"""The smallest PostgreSQL client: a login (SCRAM-SHA-256 or md5) and one simple query.

Why not psycopg: `up` on an unchanged stack asks the database for its Alembic revision, and
importing psycopg costs 60-100 ms there, a fifth of the whole command (pg8000 and scramp
import slower still). The protocol needed for one query is small and stable (protocol 3.0,
RFC 5802/7677 for SCRAM). Anything this client does not do (TLS, cleartext passwords, GSS,
a non-ASCII password, which SASLprep might change) raises `Unsupported`, and the caller asks
psycopg instead: the shortcut may decline, never answer differently.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import struct

PROTOCOL = 196608  # 3.0
MAX_MESSAGE = 1 << 20  # no reply this client waits for is anywhere near this


class Unsupported(Exception):
    """The server wants something this client does not do: use a full driver."""


class ServerError(Exception):
    """An ErrorResponse: its SQLSTATE and message."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate} {message}")
        self.sqlstate = sqlstate
        self.message = message


class ProtocolError(Exception):
    """A reply that breaks the protocol (or is not PostgreSQL)."""


def query(
    host: str,
    port: int,
    *,
    user: str,
    password: str,
    dbname: str,
    sql: str,
    timeout: float = 5.0,
) -> list[tuple[str | None, ...]]:
    """The rows of one simple query, as text. Raises ServerError, Unsupported, ProtocolError
    or OSError (unreachable, closed, timed out)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        conn = Conn(sock)
        sock.sendall(startup_message(user, dbname))
        _login(conn, user, password)
        conn.wait_ready()
        sock.sendall(_message(b"Q", sql.encode() + b"\0"))
        rows = conn.rows()
        sock.sendall(_message(b"X", b""))
        return rows


def startup_message(user: str, dbname: str) -> bytes:
    """The first message a client sends (no type byte): protocol 3.0, user and database."""
    params = b"user\0%s\0database\0%s\0\0" % (user.encode(), dbname.encode())
    return struct.pack("!ii", 8 + len(params), PROTOCOL) + params


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


class Conn:
    """Reads the server's messages off a socket (probes.pg_accepting reads one too)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("connection closed by the server")
            data += chunk
        return bytes(data)

    def read(self) -> tuple[bytes, bytes]:
        """The next message that is not a notice or a parameter report."""
        while True:
            kind = self._exactly(1)
            (length,) = struct.unpack("!i", self._exactly(4))
            if not 4 <= length <= MAX_MESSAGE:
                raise ProtocolError(f"a {kind!r} message of length {length}")
            body = self._exactly(length - 4)
            if kind == b"E":
                raise _server_error(body)
            if kind not in (b"N", b"S"):
                return kind, body

    def wait_ready(self) -> None:
        while True:
            kind, _ = self.read()
            if kind == b"Z":
                return
            if kind != b"K":
                raise ProtocolError(f"unexpected {kind!r} before ReadyForQuery")

    def rows(self) -> list[tuple[str | None, ...]]:
        rows: list[tuple[str | None, ...]] = []
        error: ServerError | None = None
        while True:
            try:
                kind, body = self.read()
            except ServerError as exc:  # the server still sends ReadyForQuery after it
                error = exc
                continue
            if kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows
            elif kind not in (b"T", b"C", b"I"):
                raise ProtocolError(f"unexpected {kind!r} in a query's reply")


def _server_error(body: bytes) -> ServerError:
    fields = {f[:1]: f[1:] for f in body.split(b"\0") if f}
    return ServerError(
        fields.get(b"C", b"").decode(errors="replace"),
        fields.get(b"M", b"").decode(errors="replace"),
    )


def _data_row(body: bytes) -> tuple[str | None, ...]:
    try:
        (count,) = struct.unpack_from("!h", body)
        at, values = 2, list[str | None]()
        for _ in range(count):
            (size,) = struct.unpack_from("!i", body, at)
            at += 4
            if size == -1:
                values.append(None)
                continue
            if size < 0 or at + size > len(body):
                raise ProtocolError("a DataRow field runs past its message")
            values.append(body[at : at + size].decode())
            at += size
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"a malformed DataRow: {exc}") from exc
    return tuple(values)


def _auth_code(kind: bytes, body: bytes) -> int:
    if kind != b"R" or len(body) < 4:
        raise ProtocolError(f"expected an authentication message, got {kind!r}")
    return int(struct.unpack_from("!i", body)[0])


def _login(conn: Conn, user: str, password: str) -> None:
    kind, body = conn.read()
    code = _auth_code(kind, body)
    if code == 0:  # trust
        return
    if code == 5 and len(body) == 8:
        inner = hashlib.md5((password + user).encode()).hexdigest()
        outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
        conn.sock.sendall(_message(b"p", b"md5" + outer.encode() + b"\0"))
    elif code == 10:
        mechanisms = body[4:].split(b"\0")
        if b"SCRAM-SHA-256" not in mechanisms:
            raise Unsupported(f"SASL mechanisms {mechanisms!r}")
        _scram(conn, password)
    else:
        raise Unsupported(f"authentication method {code}")
    kind, body = conn.read()
    if _auth_code(kind, body) != 0:
        raise ProtocolError("the server did not confirm the login")


def _scram(conn: Conn, password: str) -> None:
    """SCRAM-SHA-256 without channel binding (RFC 5802, 7677), as libpq does it without TLS:
    the user name travels in the startup message, so the SCRAM one is empty."""
    if not password.isascii():
        raise Unsupported("a non-ASCII password (SASLprep)")
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
    conn.sock.sendall(_message(b"p", body))
    kind, reply = conn.read()
    if _auth_code(kind, reply) != 11:
        raise ProtocolError("expected SASLContinue")
    server_first = reply[4:].decode(errors="replace")
    try:
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        server_nonce, salt, rounds = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
    except (ValueError, KeyError) as exc:
        raise ProtocolError(f"a malformed SCRAM server-first message: {exc}") from exc
    if not server_nonce.startswith(nonce) or not 1 <= rounds <= 1_000_000:
        raise ProtocolError("the server's SCRAM nonce or iteration count is wrong")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    final_bare = f"c=biws,r={server_nonce}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    conn.sock.sendall(_message(b"p", f"{final_bare},p={proof.decode()}".encode()))
    kind, reply = conn.read()
    if _auth_code(kind, reply) != 12:
        raise ProtocolError("expected SASLFinal")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    if not hmac.compare_digest(reply[4:].strip(), b"v=" + expected):
        raise ProtocolError("the server's SCRAM signature is wrong")

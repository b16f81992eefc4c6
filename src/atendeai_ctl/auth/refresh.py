"""Refresh-token rotation with reuse detection, for sync and async connections alike.

Each refresh spends the presented token and issues its successor in the same session.
Presenting a spent token again means it leaked: the whole session is revoked - unless it was
spent less than `refresh_grace_s` ago, which is one client racing itself (the session
survives, that request gets 401). The row lock (FOR UPDATE) serialises parallel refreshes of
one token, so at most one succeeds.

A successful refresh is one round trip: BEGIN; the tenant; one prepared statement that locks
and reads the token row and, only when it may be spent (unused, unrevoked, unexpired, user
and clinic active), inserts the successor, spends the token, extends the session and writes
the audit row; COMMIT. Under a concurrent refresh of the same token the lock wait re-reads
the row (READ COMMITTED), sees it spent and writes nothing. A refused refresh reads the
verdict columns and records it (and revokes the session on reuse) in a second transaction.
The several statements travel in one simple-protocol message, which needs client-side
binding (psycopg's ClientCursor escapes every value); both statements are server-side
prepared once per connection (planning the join and the CTEs costs more than running them,
and even the one-line tenant SELECT costs a parse and a plan per refresh otherwise), and the
tenant is set by its own statement before any RLS-protected table is read.

The decision logic is written once, as a generator that yields SQL and receives results
(`_flow`); `refresh` drives it on a sync connection (admin tools, tests) and `refresh_async`
on an async one (the HTTP service: no thread hop per refresh).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Generator
from typing import Any

import psycopg

from atendeai_ctl.auth._db import Conn, Results, run_simple
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.sessions import AuthFailed, Denylist, TokenPair
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.auth.tokens import issue_access_token, new_refresh_token, refresh_token_hash

_PREPARE = """
PREPARE atendeai_refresh_tenant (bytea) AS
SELECT set_config('atendeai.clinic_id',
                  coalesce(atendeai.refresh_token_clinic($1)::text, ''), true);
PREPARE atendeai_refresh (bytea, int, bytea, int, inet) AS
WITH cur AS (
  SELECT rt.id, rt.session_id, rt.used_at IS NOT NULL AS used,
         rt.used_at > now() - make_interval(secs => $2) AS in_grace,
         rt.revoked_at IS NOT NULL OR s.revoked_at IS NOT NULL AS revoked,
         rt.expires_at <= now() AS expired, s.user_id, u.role,
         u.status AS user_status, c.status AS clinic_status, rt.clinic_id
    FROM atendeai.refresh_tokens rt
    JOIN atendeai.sessions s ON s.id = rt.session_id
    JOIN atendeai.users u ON u.id = s.user_id
    JOIN atendeai.clinics c ON c.id = rt.clinic_id
   WHERE rt.token_hash = $1
     FOR UPDATE OF rt
), ok AS (
  SELECT * FROM cur
   WHERE NOT used AND NOT revoked AND NOT expired
     AND user_status = 'active' AND clinic_status = 'active'
), new AS (
  INSERT INTO atendeai.refresh_tokens (clinic_id, session_id, token_hash, expires_at)
  SELECT clinic_id, session_id, $3, now() + make_interval(secs => $4) FROM ok
  RETURNING id, expires_at
), spent AS (
  UPDATE atendeai.refresh_tokens SET used_at = now(), replaced_by = (SELECT id FROM new)
   WHERE id = (SELECT id FROM ok)
), sess AS (
  UPDATE atendeai.sessions SET last_seen_at = now(), expires_at = (SELECT expires_at FROM new)
   WHERE id = (SELECT session_id FROM ok)
), audit AS (
  INSERT INTO atendeai.audit_log (clinic_id, actor, action, target, outcome, ip)
  SELECT clinic_id, 'user:' || user_id, 'refresh', 'session:' || session_id, 'success', $5
    FROM ok
)
SELECT session_id, used, in_grace, revoked, expired, user_id, role, clinic_id,
       EXISTS (SELECT FROM new)
  FROM cur
"""

_REFRESH = """
BEGIN;
EXECUTE atendeai_refresh_tenant({h});
EXECUTE atendeai_refresh({h}, {grace:d}, {new}, {ttl:d}, {ip});
COMMIT
"""
"""The hot message, formatted with literals (no client-side binding machinery per refresh):
every value is a hex bytea, an int or a checked IP address (`_literals`)."""

_REFUSED_TENANT = """
BEGIN;
SELECT set_config('atendeai.clinic_id', %(c)s::text, true);
"""

_REFRESH_REVOKE = """
UPDATE atendeai.sessions SET revoked_at = coalesce(revoked_at, now()),
       revoked_reason = coalesce(revoked_reason, %(reason)s)
 WHERE id = %(s)s RETURNING id::text, extract(epoch FROM expires_at - now())::float8;
UPDATE atendeai.refresh_tokens SET revoked_at = now()
 WHERE session_id = %(s)s AND revoked_at IS NULL;
"""

_REFRESH_REFUSED = """
INSERT INTO atendeai.audit_log (clinic_id, actor, action, target, outcome, ip, detail)
VALUES (%(c)s, %(actor)s, %(action)s, %(target)s, %(outcome)s, %(ip)s, %(detail)s::jsonb);
COMMIT
"""


Flow = Generator[tuple[str, dict[str, Any] | None], Results, TokenPair]


class RefreshRefused(AuthFailed):
    """A refused refresh; `revoked` lists (session id, ttl) pairs to add to the denylist."""

    def __init__(self, reason: str, revoked: list[tuple[str, float]]) -> None:
        super().__init__(reason, "invalid refresh token")
        self.revoked = revoked


def _bytea(data: bytes) -> str:
    return f"'\\x{data.hex()}'::bytea"


_IP_TEXT = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")


def _inet(ip: str | None) -> str:
    """An IP address as an SQL literal. The service passes canonical addresses
    (forwarding.py); anything else, which could not be one, is NULL rather than quoted."""
    return f"'{ip}'::inet" if ip is not None and _IP_TEXT.match(ip) else "NULL"


def _flow(ring: KeyRing, settings: AuthSettings, refresh_token: str, ip: str | None) -> Flow:
    new = new_refresh_token()
    sql = _REFRESH.format(
        h=_bytea(refresh_token_hash(refresh_token)),
        grace=int(settings.refresh_grace_s),
        new=_bytea(refresh_token_hash(new)),
        ttl=int(settings.refresh_ttl_s),
        ip=_inet(ip),
    )
    results = yield sql, None
    rows = results[2]  # BEGIN, set_config, EXECUTE, COMMIT
    if not rows:
        raise RefreshRefused("unknown_refresh_token", [])
    sid, used, in_grace, revoked, expired, user_id, role, clinic_id, rotated = rows[0]
    sid, user_id, clinic_id = str(sid), str(user_id), str(clinic_id)
    if rotated:
        access, claims = issue_access_token(
            ring,
            settings,
            user_id=user_id,
            clinic_id=clinic_id,
            session_id=sid,
            role=role,
        )
        return TokenPair(access, new, settings.access_ttl_s, claims)
    reason = "disabled"  # none of the below: the user or the clinic is not active
    if revoked:
        reason = "revoked"
    elif used and in_grace:
        reason = "concurrent_use"
    elif used:
        reason = "reuse"
    elif expired:
        reason = "expired"
    revoke = reason in ("reuse", "disabled")
    params = {
        "c": clinic_id,
        "s": sid,
        "ip": ip,
        "actor": f"user:{user_id}",
        "target": f"session:{sid}",
        "reason": reason,
        "action": "refresh_reuse" if reason == "reuse" else "refresh",
        "outcome": "denied" if reason == "reuse" else "failure",
        "detail": json.dumps({"reason": reason}),
    }
    sql = _REFUSED_TENANT + (_REFRESH_REVOKE if revoke else "") + _REFRESH_REFUSED
    results = yield sql, params
    denied = [(str(r[0]), max(1.0, float(r[1]))) for r in results[2] or []] if revoke else []
    raise RefreshRefused(reason, denied)


_prepared: weakref.WeakSet[Any] = weakref.WeakSet()


def _idle(status: psycopg.pq.TransactionStatus) -> bool:
    return status == psycopg.pq.TransactionStatus.IDLE


def refresh(
    conn: Conn,
    ring: KeyRing,
    settings: AuthSettings,
    denylist: Denylist | None,
    *,
    refresh_token: str,
    ip: str | None = None,
) -> TokenPair:
    """Spend a refresh token for a new pair, or raise RefreshRefused (an AuthFailed).

    `conn` must be idle; it runs in autocommit mode here and is given back as it came.
    """
    flow = _flow(ring, settings, refresh_token, ip)
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with psycopg.ClientCursor(conn) as cur:
            if conn not in _prepared:
                cur.execute(_PREPARE)
                _prepared.add(conn)
            step = next(flow)
            while True:
                cur.execute(*step)
                results: Results = []
                while True:
                    results.append(
                        cur.fetchall() if cur.pgresult and cur.pgresult.nfields else None
                    )
                    if not cur.nextset():
                        break
                step = flow.send(results)
    except StopIteration as done:
        pair: TokenPair = done.value
        return pair
    except RefreshRefused as refused:
        if refused.revoked and denylist is not None:
            denylist.deny_sessions(refused.revoked)
        raise
    except BaseException:
        if not _idle(conn.info.transaction_status):
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.autocommit = autocommit


async def refresh_async(
    conn: psycopg.AsyncConnection[Any],
    ring: KeyRing,
    settings: AuthSettings,
    *,
    refresh_token: str,
    ip: str | None = None,
) -> TokenPair:
    """`refresh` on an idle autocommit AsyncConnection; the caller denylists `revoked`
    sessions."""
    flow = _flow(ring, settings, refresh_token, ip)
    try:
        if conn not in _prepared:
            await run_simple(conn, _PREPARE)
            _prepared.add(conn)
        sql, params = next(flow)
        while True:
            if params is not None:
                sql = psycopg.AsyncClientCursor(conn).mogrify(sql, params)
            sql, params = flow.send(await run_simple(conn, sql))
    except StopIteration as done:
        pair: TokenPair = done.value
        return pair
    except RefreshRefused:
        raise
    except BaseException:
        if not _idle(conn.info.transaction_status):
            await conn.execute("ROLLBACK")
        raise

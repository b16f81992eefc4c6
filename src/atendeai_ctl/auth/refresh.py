"""Refresh-token rotation with reuse detection, for sync and async connections alike.

Each refresh spends the presented token and issues its successor in the same session.
Presenting a spent token again means it leaked: the whole session is revoked - unless it was
spent less than `refresh_grace_s` ago, which is one client racing itself (the session
survives, that request gets 401). The row lock (FOR UPDATE) serialises parallel refreshes of
one token, so at most one succeeds.

The decision logic is written once, as a generator that yields SQL and receives results
(`_flow`); `refresh` drives it on a sync connection (admin tools, tests) and `refresh_async`
on an async one (the HTTP service: no thread hop per refresh). One refresh is two round
trips: (BEGIN; tenant; lock and read) then (writes; COMMIT). Several statements travel in
one simple-protocol message, which needs client-side binding (psycopg's ClientCursor escapes
every value); the two heavy statements are server-side prepared once per connection, and
the tenant is set by its own statement before any RLS-protected table is read.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Generator
from typing import Any

import psycopg

from atendeai_ctl.auth._db import Conn
from atendeai_ctl.auth.keys import KeyRing
from atendeai_ctl.auth.sessions import AuthFailed, Denylist, TokenPair, session_ttl
from atendeai_ctl.auth.settings import AuthSettings
from atendeai_ctl.auth.tokens import issue_access_token, new_refresh_token, refresh_token_hash

# The two hot statements are server-side prepared once per connection (planning the join
# and the CTE costs more than executing them); EXECUTE runs them inside the multi-statement
# messages. The tenant statement is trivial to plan.
_PREPARE = """
PREPARE atendeai_refresh_read (bytea, int) AS
SELECT rt.id, rt.session_id, rt.used_at IS NOT NULL,
       rt.used_at > now() - make_interval(secs => $2),
       rt.revoked_at IS NOT NULL OR s.revoked_at IS NOT NULL,
       rt.expires_at <= now(), s.user_id, u.role, u.status, c.status, rt.clinic_id
  FROM atendeai.refresh_tokens rt
  JOIN atendeai.sessions s ON s.id = rt.session_id
  JOIN atendeai.users u ON u.id = s.user_id
  JOIN atendeai.clinics c ON c.id = rt.clinic_id
 WHERE rt.token_hash = $1
   FOR UPDATE OF rt;
PREPARE atendeai_refresh_rotate (uuid, uuid, bytea, int, uuid, text, text, inet) AS
WITH new AS (
  INSERT INTO atendeai.refresh_tokens (clinic_id, session_id, token_hash, expires_at)
  VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING id, expires_at
), spent AS (
  UPDATE atendeai.refresh_tokens SET used_at = now(), replaced_by = (SELECT id FROM new)
   WHERE id = $5
), sess AS (
  UPDATE atendeai.sessions SET last_seen_at = now(), expires_at = (SELECT expires_at FROM new)
   WHERE id = $2
)
INSERT INTO atendeai.audit_log (clinic_id, actor, action, target, outcome, ip)
VALUES ($1, $6, 'refresh', $7, 'success', $8)
"""

_REFRESH_READ = """
BEGIN;
SELECT set_config('atendeai.clinic_id',
                  coalesce(atendeai.refresh_token_clinic(%(h)s)::text, ''), true);
EXECUTE atendeai_refresh_read(%(h)s, %(grace)s)
"""

_REFRESH_ROTATE = """
EXECUTE atendeai_refresh_rotate(%(c)s, %(s)s, %(new)s, %(ttl)s, %(old)s, %(actor)s, %(target)s,
                                %(ip)s);
COMMIT
"""

_REFRESH_REVOKE = """
UPDATE atendeai.sessions SET revoked_at = coalesce(revoked_at, now()),
       revoked_reason = coalesce(revoked_reason, %(reason)s)
 WHERE id = %(s)s RETURNING id, expires_at;
UPDATE atendeai.refresh_tokens SET revoked_at = now()
 WHERE session_id = %(s)s AND revoked_at IS NULL;
"""

_REFRESH_REFUSED = """
INSERT INTO atendeai.audit_log (clinic_id, actor, action, target, outcome, ip, detail)
VALUES (%(c)s, %(actor)s, %(action)s, %(target)s, %(outcome)s, %(ip)s, %(detail)s::jsonb);
COMMIT
"""


Results = list[list[tuple[Any, ...]] | None]
Flow = Generator[tuple[str, dict[str, Any]], Results, TokenPair]


class RefreshRefused(AuthFailed):
    """A refused refresh; `revoked` lists (session id, ttl) pairs to add to the denylist."""

    def __init__(self, reason: str, revoked: list[tuple[str, float]]) -> None:
        super().__init__(reason, "invalid refresh token")
        self.revoked = revoked


def _flow(ring: KeyRing, settings: AuthSettings, refresh_token: str, ip: str | None) -> Flow:
    params: dict[str, Any] = {
        "h": refresh_token_hash(refresh_token),
        "grace": settings.refresh_grace_s,
        "ip": ip,
    }
    results = yield _REFRESH_READ, params
    rows = results[-1]
    if not rows:
        yield "ROLLBACK", {}
        raise RefreshRefused("unknown_refresh_token", [])
    (rt_id, sid, used, in_grace, revoked, expired, user_id, role, user_status,
     clinic_status, clinic_id) = rows[0]  # fmt: skip
    params |= {"c": clinic_id, "s": sid, "actor": f"user:{user_id}", "target": f"session:{sid}"}
    reason = None
    if revoked:
        reason = "revoked"
    elif used and in_grace:
        reason = "concurrent_use"
    elif used:
        reason = "reuse"
    elif expired:
        reason = "expired"
    elif user_status != "active" or clinic_status != "active":
        reason = "disabled"
    if reason is None:
        new = new_refresh_token()
        params |= {"new": refresh_token_hash(new), "ttl": settings.refresh_ttl_s, "old": rt_id}
        yield _REFRESH_ROTATE, params
        access, claims = issue_access_token(
            ring,
            settings,
            user_id=str(user_id),
            clinic_id=str(clinic_id),
            session_id=str(sid),
            role=role,
        )
        return TokenPair(access, new, settings.access_ttl_s, claims)
    revoke = reason in ("reuse", "disabled")
    params |= {
        "reason": reason,
        "action": "refresh_reuse" if reason == "reuse" else "refresh",
        "outcome": "denied" if reason == "reuse" else "failure",
        "detail": json.dumps({"reason": reason}),
    }
    results = yield (_REFRESH_REVOKE if revoke else "") + _REFRESH_REFUSED, params
    denied = [(str(r[0]), session_ttl(r[1])) for r in results[0] or []] if revoke else []
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
                    results.append(cur.fetchall() if cur.description else None)
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
    """`refresh` on an autocommit AsyncConnection; the caller denylists `revoked` sessions."""
    flow = _flow(ring, settings, refresh_token, ip)
    try:
        async with psycopg.AsyncClientCursor(conn) as cur:
            if conn not in _prepared:
                await cur.execute(_PREPARE)
                _prepared.add(conn)
            step = next(flow)
            while True:
                await cur.execute(*step)
                results: Results = []
                while True:
                    results.append(await cur.fetchall() if cur.description else None)
                    if not cur.nextset():
                        break
                step = flow.send(results)
    except StopIteration as done:
        pair: TokenPair = done.value
        return pair
    except RefreshRefused:
        raise
    except BaseException:
        if not _idle(conn.info.transaction_status):
            await conn.execute("ROLLBACK")
        raise

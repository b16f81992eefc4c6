"""Fixed-window rate limits in Redis, each decision one atomic Lua call.

Failed logins are counted per clinic+email and per IP. A password check is admitted only if
failures + checks in flight stay under the limit (one script: check and reserve), so N
parallel wrong guesses cannot all slip under it; each failure is an atomic INCR, so none is
lost. Only a verified success clears the account's failures; an attempt that ends any other way
(wrong password, a crash, a cancelled request) counts as a failure (http.login).

The request limiter for /auth/* also answers the denylist question for /auth/verify in the
same round trip, so the hot path costs one Redis call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from atendeai_ctl.auth import identity
from atendeai_ctl.auth._resp import PipelinedRedis
from atendeai_ctl.auth.settings import RateLimits
from atendeai_ctl.auth.tokens import Claims

PREFIX = "atendeai:rl:"

_GATE = """
local limit = tonumber(ARGV[1])
local count, ttl = 0, 0
if limit > 0 then
  count = redis.call('INCR', KEYS[1])
  ttl = redis.call('TTL', KEYS[1])
  if ttl < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    ttl = tonumber(ARGV[2])
  end
end
local denied = 0
if #KEYS > 1 then denied = redis.call('EXISTS', KEYS[2], KEYS[3]) end
return {count, ttl, denied}
"""

_LOGIN_ATTEMPT = """
-- KEYS: per account then per IP: failures, checks in flight, "block audited" marker
-- ARGV: account limit, IP limit; returns {limiter (0 = admitted), ttl, first block (0/1)}
for i = 0, 1 do
  local limit = tonumber(ARGV[i + 1])
  if limit > 0 then
    local failed = tonumber(redis.call('GET', KEYS[3 * i + 1]) or '0')
    local flying = tonumber(redis.call('GET', KEYS[3 * i + 2]) or '0')
    if failed + flying >= limit then
      local ttl = redis.call('TTL', KEYS[3 * i + 1])
      if ttl < 1 then ttl = 1 end
      local first = redis.call('SET', KEYS[3 * i + 3], '1', 'NX', 'EX', ttl)
      return {i + 1, ttl, first and 1 or 0}
    end
  end
end
for i = 0, 1 do
  redis.call('INCR', KEYS[3 * i + 2])
  redis.call('EXPIRE', KEYS[3 * i + 2], 60)
end
return {0, 0, 0}
"""

_LOGIN_DONE = """
-- KEYS as above; ARGV: 1 if the attempt failed, the failure window
for i = 0, 1 do
  if tonumber(redis.call('GET', KEYS[3 * i + 2]) or '0') > 0 then
    redis.call('DECR', KEYS[3 * i + 2])
  end
end
if ARGV[1] == '1' then
  local counts = {}
  for i = 0, 1 do
    counts[i + 1] = redis.call('INCR', KEYS[3 * i + 1])
    if redis.call('TTL', KEYS[3 * i + 1]) < 0 then
      redis.call('EXPIRE', KEYS[3 * i + 1], ARGV[2])
    end
  end
  return counts
end
redis.call('DEL', KEYS[1])
return {0, 0}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    limiter: str = ""
    first_block: bool = False
    revoked: bool = False

    def headers(self) -> dict[str, str]:
        if self.limit <= 0:
            return {}
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_s))
        return headers

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """`headers()` as ASGI wants them, built without a dict (once per /auth/* request)."""
        if self.limit <= 0:
            return []
        headers = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_s),
        ]
        if not self.allowed:
            headers.append((b"retry-after", b"%d" % max(1, self.reset_s)))
        return headers


def account_key(clinic: str, email: str) -> str:
    """Hashed, so Redis never holds email addresses.

    Keyed on the normalised identity (identity.normalize, the same form the lookup uses), so
    `alpha`, `ALPHA` and ` Alpha ` share one counter. `surrogatepass`: a key is computed even
    for a string PostgreSQL would refuse, though the HTTP edge never lets one through.
    """
    account = f"{identity.normalize(clinic)}\0{identity.normalize(email)}"
    digest = hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{PREFIX}login:acct:{digest}"


class _Script:
    def __init__(self, client: PipelinedRedis, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any] | None = None) -> Any:
        return await self.client.evalsha(self.sha, self.text, keys, args or [])


class RateLimiter:
    def __init__(self, client: PipelinedRedis, limits: RateLimits) -> None:
        self.client = client
        self.limits = limits
        self._gate = _Script(client, _GATE)
        self._attempt = _Script(client, _LOGIN_ATTEMPT)
        self._done = _Script(client, _LOGIN_DONE)

    async def request(self, ip: str, claims: Claims | None = None) -> Decision:
        """Count one /auth/* request from `ip`; with claims, also report if they are revoked."""
        from atendeai_ctl.auth.sessions import DENY_JTI, DENY_SID

        keys = [f"{PREFIX}req:{ip}"]
        if claims is not None:
            keys += [DENY_JTI + claims["jti"], DENY_SID + claims["sid"]]
        limit = self.limits.requests_per_ip
        count, ttl, denied = await self._gate(keys, [limit, self.limits.request_window_s])
        allowed = limit <= 0 or count <= limit
        return Decision(
            allowed,
            limit,
            max(0, limit - count),
            int(ttl),
            "requests_per_ip",
            first_block=count == limit + 1,
            revoked=bool(denied),
        )

    def _login_keys(self, clinic: str, email: str, ip: str) -> list[str]:
        account, by_ip = account_key(clinic, email), f"{PREFIX}login:ip:{ip}"
        return [k + s for k in (account, by_ip) for s in ("", ":flying", ":blocked")]

    async def login_attempt(self, clinic: str, email: str, ip: str) -> Decision:
        """Admit one password check unless failures + checks in flight reach a limit.

        Call while holding a bcrypt slot: in-flight checks are then bounded by the slots, so
        parallel correct logins are never blocked, and parallel wrong guesses never exceed the
        limit. Every admitted attempt must end with `login_finished`.
        """
        rate = self.limits
        which, ttl, first = await self._attempt(
            self._login_keys(clinic, email, ip),
            [rate.login_failures_per_account, rate.login_failures_per_ip],
        )
        if which == 0:
            return Decision(True, 0, 0, 0)
        name, limit = [
            ("failed_logins_per_account", rate.login_failures_per_account),
            ("failed_logins_per_ip", rate.login_failures_per_ip),
        ][which - 1]
        return Decision(False, limit, 0, int(ttl), name, first_block=bool(first))

    async def login_finished(self, clinic: str, email: str, ip: str, *, failed: bool) -> None:
        """Count a failure (atomic INCR, never lost) or clear the account's failures."""
        await self._done(
            self._login_keys(clinic, email, ip),
            ["1" if failed else "0", self.limits.login_failure_window_s],
        )

    async def failures(self, clinic: str, email: str) -> int:
        """The account's attempt count in the current window (for tests and the admin CLI)."""
        value = await self.client.call("GET", account_key(clinic, email))
        return int(value or 0)

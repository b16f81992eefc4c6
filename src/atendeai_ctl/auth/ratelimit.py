"""Fixed-window rate limits in Redis, each decision one atomic Lua call.

Login attempts are counted *before* the password is checked (check-and-increment in one
script), so N parallel guesses cannot all slip under the limit, and no increment is lost. A
successful login clears the account counter and gives back its IP count.

The request limiter for /auth/* also answers the denylist question for /auth/verify in the
same round trip, so the hot path costs one Redis call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

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
local result = {}
for i = 1, 2 do
  local n = redis.call('INCR', KEYS[i])
  local ttl = redis.call('TTL', KEYS[i])
  if ttl < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    ttl = tonumber(ARGV[3])
  end
  result[#result + 1] = n
  result[#result + 1] = ttl
end
return result
"""

_LOGIN_SUCCESS = """
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 1
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


def account_key(clinic: str, email: str) -> str:
    """Hashed, so Redis never holds email addresses."""
    digest = hashlib.sha256(f"{clinic}\0{email.lower()}".encode()).hexdigest()[:32]
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
        self._success = _Script(client, _LOGIN_SUCCESS)

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

    async def login_attempt(self, clinic: str, email: str, ip: str) -> Decision:
        """Count one login attempt against the account and the IP; refuse over either limit."""
        rate = self.limits
        keys = [account_key(clinic, email), f"{PREFIX}login:ip:{ip}"]
        acct, acct_ttl, by_ip, ip_ttl = await self._attempt(
            keys, [rate.login_failures_per_account, rate.login_failures_per_ip,
                   rate.login_failure_window_s]
        )  # fmt: skip
        checks = [
            ("failed_logins_per_account", rate.login_failures_per_account, acct, acct_ttl),
            ("failed_logins_per_ip", rate.login_failures_per_ip, by_ip, ip_ttl),
        ]
        for name, limit, count, ttl in checks:
            if limit > 0 and count > limit:
                return Decision(False, limit, 0, int(ttl), name, first_block=count == limit + 1)
        active = [(limit - count, limit, ttl) for _, limit, count, ttl in checks if limit > 0]
        if not active:
            return Decision(True, 0, 0, 0)
        remaining, limit, ttl = min(active)
        return Decision(True, limit, remaining, int(ttl))

    async def login_succeeded(self, clinic: str, email: str, ip: str) -> None:
        await self._success([account_key(clinic, email), f"{PREFIX}login:ip:{ip}"])

    async def failures(self, clinic: str, email: str) -> int:
        """The account's attempt count in the current window (for tests and the admin CLI)."""
        value = await self.client.call("GET", account_key(clinic, email))
        return int(value or 0)

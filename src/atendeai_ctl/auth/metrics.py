"""Prometheus text metrics, cheap on the hot path and summed across uvicorn workers.

Each worker counts in plain dicts (one increment per request, no locks: one event loop). A
background task adds the deltas to Redis hashes every second; /metrics flushes its own worker
first and renders the hashes, so a scrape sees every worker. Without Redis it renders the
local worker's counts only.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

import redis.asyncio as aioredis

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KEY = "atendeai:metrics:"
SEP = "\x1f"
TABLES = ("requests", "latency_sum", "buckets", "logins", "rate_limited")


class Metrics:
    def __init__(self) -> None:
        self.tables: dict[str, defaultdict[str, float]] = {
            name: defaultdict(float) for name in TABLES
        }
        self.requests = self.tables["requests"]
        self.latency_sum = self.tables["latency_sum"]
        self.buckets = self.tables["buckets"]
        self.logins = self.tables["logins"]
        self.rate_limited = self.tables["rate_limited"]

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[f"{route}{SEP}{status}"] += 1
        self.latency_sum[route] += seconds
        self.buckets[f"{route}{SEP}{bisect.bisect_left(BUCKETS, seconds)}"] += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {name: dict(table) for name, table in self.tables.items()}

    async def flush(self, client: aioredis.Redis) -> None:
        """Move this worker's counts into Redis (put back if Redis fails)."""
        taken = self.snapshot()
        for table in self.tables.values():
            table.clear()
        try:
            pipe = client.pipeline(transaction=False)
            for name, values in taken.items():
                for field, value in values.items():
                    pipe.hincrbyfloat(KEY + name, field, value)
            await pipe.execute()
        except Exception:
            for name, values in taken.items():
                for field, value in values.items():
                    self.tables[name][field] += value
            raise

    async def render(self, client: aioredis.Redis | None) -> str:
        if client is None:
            return _render(self.snapshot())
        await self.flush(client)
        data = {}
        for name in TABLES:
            raw = await client.hgetall(KEY + name)
            data[name] = {_text(k): float(v) for k, v in raw.items()}
        return _render(data)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _render(data: dict[str, dict[str, float]]) -> str:
    lines = [
        "# HELP atendeai_auth_requests_total HTTP requests by route and status.",
        "# TYPE atendeai_auth_requests_total counter",
    ]
    for key, value in sorted(data["requests"].items()):
        route, status = key.split(SEP)
        lines.append(
            f'atendeai_auth_requests_total{{route="{route}",status="{status}"}} {_num(value)}'
        )
    lines += [
        "# HELP atendeai_auth_request_duration_seconds Request latency by route.",
        "# TYPE atendeai_auth_request_duration_seconds histogram",
    ]
    per_route: defaultdict[str, list[float]] = defaultdict(lambda: [0.0] * (len(BUCKETS) + 1))
    for key, value in data["buckets"].items():
        route, index = key.split(SEP)
        per_route[route][int(index)] += value
    for route, counts in sorted(per_route.items()):
        running = 0.0
        for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(
                f'atendeai_auth_request_duration_seconds_bucket{{route="{route}",le="{le}"}}'
                f" {_num(running)}"
            )
        lines.append(
            f'atendeai_auth_request_duration_seconds_sum{{route="{route}"}}'
            f" {_num(data['latency_sum'].get(route, 0.0))}"
        )
        lines.append(
            f'atendeai_auth_request_duration_seconds_count{{route="{route}"}} {_num(running)}'
        )
    lines += [
        "# HELP atendeai_auth_logins_total Login attempts by outcome.",
        "# TYPE atendeai_auth_logins_total counter",
    ]
    for outcome, value in sorted(data["logins"].items()):
        lines.append(f'atendeai_auth_logins_total{{outcome="{outcome}"}} {_num(value)}')
    lines += [
        "# HELP atendeai_auth_rate_limited_total Requests refused by a rate limiter.",
        "# TYPE atendeai_auth_rate_limited_total counter",
    ]
    for limiter, value in sorted(data["rate_limited"].items()):
        lines.append(f'atendeai_auth_rate_limited_total{{limiter="{limiter}"}} {_num(value)}')
    return "\n".join(lines) + "\n"

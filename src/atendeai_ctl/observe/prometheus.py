"""Prometheus's HTTP API (/api/v1/query, /api/v1/query_range), with its answers checked.

Plain urllib, no proxies: the server is the stack's, on a loopback address, and the library
adds no HTTP client to the runtime dependencies for two GET requests. An answer is outside
input: anything that is not the documented shape (status, data.resultType, result with
`metric` and `value`/`values` pairs of a time and a string number) raises one AtendeaiError.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from atendeai_ctl.errors import AtendeaiError

TIMEOUT_S = 3.0
MAX_BODY = 16 * 1024 * 1024
Point = tuple[float, float]
"""(Unix seconds, value); the value may be NaN or +-Inf, as Prometheus sends them."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[Point]
    """One point for an instant query, the range's points for a range query."""


def opener() -> urllib.request.OpenerDirector:
    """An opener that ignores *_proxy variables: the targets are on this host."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, *, what: str, timeout: float = TIMEOUT_S) -> bytes:
    """GET `url`; its body (at most MAX_BODY), whatever the status. Raises 'unavailable' when
    nothing answers. `what` names the server in the message."""
    try:
        with opener().open(url, timeout=timeout) as response:
            body: bytes = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        body = exc.read(MAX_BODY + 1)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AtendeaiError(
            "unavailable", f"{what} at {_origin(url)} does not answer: {reason}", None
        ) from exc
    if len(body) > MAX_BODY:
        raise AtendeaiError("failed", f"{what} at {_origin(url)} sent more than 16 MiB", None)
    return body


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else url


class PrometheusAPI:
    def __init__(self, url: str, *, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> list[Series]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        body = http_get(url, what="Prometheus", timeout=self.timeout)
        return parse_answer(body)

    def query(self, expr: str, at: float) -> list[Series]:
        """An instant query evaluated at `at` (Unix seconds)."""
        return self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        return self._get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )


def _bad(detail: str) -> AtendeaiError:
    return AtendeaiError(
        "failed", f"Prometheus sent an answer that is not a query result: {detail}"
    )


def parse_answer(body: bytes) -> list[Series]:
    """The series of an API answer (vector, matrix or scalar); an error answer raises with
    Prometheus's own errorType and message."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _bad("not JSON") from exc
    if not isinstance(document, dict):
        raise _bad("not a JSON object")
    status = document.get("status")
    if status == "error":
        kind, message = document.get("errorType"), document.get("error")
        raise AtendeaiError(
            "failed",
            f"Prometheus refused the query: {_text(kind)}: {_text(message)}",
            "see the query in `atendeai top --help`",
        )
    if status != "success":
        raise _bad("no status 'success' or 'error'")
    data = document.get("data")
    if not isinstance(data, dict):
        raise _bad("no data object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return [Series({}, [_point(result)])]
    if kind not in ("vector", "matrix") or not isinstance(result, list):
        raise _bad(f"resultType {_text(kind)}")
    series: list[Series] = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
            raise _bad("a series without a metric object")
        labels = item["metric"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise _bad("a label that is not a string")
        if kind == "vector":
            points = [_point(item.get("value"))]
        else:
            values = item.get("values")
            if not isinstance(values, list):
                raise _bad("a matrix series without values")
            points = [_point(value) for value in values]
        series.append(Series(dict(labels), points))
    return series


def _point(raw: Any) -> Point:
    """[<unix seconds>, "<number>"]: Prometheus sends sample values as strings ("NaN", "+Inf"
    included) so that they survive JSON."""
    if not (isinstance(raw, list) and len(raw) == 2):
        raise _bad("a sample that is not [time, value]")
    at, value = raw
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise _bad("a sample time that is not a number")
    if not isinstance(value, str):
        raise _bad("a sample value that is not a string")
    try:
        number = float(value)
    except ValueError as exc:
        raise _bad(f"a sample value {_text(value)}") from exc
    return float(at), number


def _text(value: object) -> str:
    text = str(value)
    return text[:200] + ("..." if len(text) > 200 else "")

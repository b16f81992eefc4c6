"""`atendeai top`: the figures (rates and quantiles as Prometheus computes them), the two
sources against a real auth service and a real Prometheus, and the terminal view (80x24,
NO_COLOR, `q` and Ctrl-C on a real pseudo-terminal)."""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from atendeai_ctl.cli.top import console, frame, human, sparkline
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.observe import exposition as ex
from atendeai_ctl.observe.prometheus import PrometheusAPI, parse_answer
from atendeai_ctl.observe.snapshot import FIGURES, KEYS
from atendeai_ctl.observe.sources import DirectSource, auth_rates
from tests.auth_helpers import PASSWORD, AuthDb
from tests.serve_helpers import Served, auth_serve
from tests.servers import free_port
from tests.stack_helpers import Project, new_project, remove_project

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (Debian: apt-get install prometheus)"
)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# --- exposition text as prometheus_client writes it (the auth service's library) ---------


def _registry() -> tuple[CollectorRegistry, Counter, Histogram, Counter]:
    registry = CollectorRegistry()
    requests = Counter(
        "atendeai_auth_requests", "Requests.", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "atendeai_auth_request_duration_seconds",
        "Latency.",
        ["route"],
        buckets=BUCKETS,
        registry=registry,
    )
    logins = Counter("atendeai_auth_logins", "Logins.", ["outcome"], registry=registry)
    return registry, requests, latency, logins


def _scrape(registry: CollectorRegistry, at: float) -> ex.Scrape:
    return ex.parse_exposition(generate_latest(registry).decode(), at)


def test_rates_from_two_real_scrapes() -> None:
    registry, requests, latency, logins = _registry()
    requests.labels("/auth/login", "200").inc(5)
    before = _scrape(registry, 100.0)
    for _ in range(90):
        requests.labels("/auth/verify", "200").inc()
        latency.labels("/auth/verify").observe(0.003)
    for _ in range(8):
        requests.labels("/auth/login", "200").inc()
        latency.labels("/auth/login").observe(0.07)
        logins.labels("success").inc()
    requests.labels("/auth/login", "503").inc(2)  # a series that did not exist before
    logins.labels("unavailable").inc(2)
    after = _scrape(registry, 110.0)

    rates = auth_rates(before, after)
    assert rates["request_rate"] == pytest.approx(100 / 10)
    assert rates["error_ratio"] == pytest.approx(2 / 100)
    assert rates["login_rate"] == pytest.approx(10 / 10)
    assert rates["rate_limited_rate"] == 0.0  # requests counted, none refused
    # 98 observations: rank 97.02 lies in the (0.05, 0.1] bucket, which holds the 8 logins
    # above the 90 verifies: 0.05 + 0.05 * (97.02 - 90) / 8.
    assert rates["p99_seconds"] == pytest.approx(0.05 + 0.05 * 7.02 / 8)
    assert rates["login_p99_seconds"] == pytest.approx(0.05 + 0.05 * (8 * 0.99) / 8)


def test_counter_reset_counts_the_new_value_as_the_increase() -> None:
    registry, requests, _, _ = _registry()
    requests.labels("/auth/verify", "200").inc(50)
    before = _scrape(registry, 0.0)
    restarted, requests2, _, _ = _registry()  # a restarted process: counting from 0
    requests2.labels("/auth/verify", "200").inc(7)
    after = _scrape(restarted, 2.0)
    assert ex.counter_increase(before, after, "atendeai_auth_requests_total") == 7
    assert ex.counter_rate(before, after, "atendeai_auth_requests_total") == 3.5
    assert ex.counter_rate(after, after, "atendeai_auth_requests_total") is None  # no time
    assert ex.counter_rate(before, after, "atendeai_missing_total") is None


def test_no_requests_gives_no_ratio_and_no_quantile() -> None:
    registry, requests, _, _ = _registry()
    requests.labels("/auth/verify", "200").inc(3)
    one = _scrape(registry, 0.0)
    rates = auth_rates(one, _scrape(registry, 5.0))
    assert rates["request_rate"] == 0.0
    assert rates["error_ratio"] is None and rates["p99_seconds"] is None


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        # Worked by hand from promql/quantile.go; test_direct_quantile_equals_prometheus_...
        # checks the same function against the real binary.
        (0.5, {0.1: 50, 0.2: 70, float("inf"): 100}, 0.1),  # rank 50 ends the first bucket
        (0.6, {0.1: 50, 0.2: 70, float("inf"): 100}, 0.15),  # 10 of the 20 in (0.1, 0.2]
        (0.8, {0.1: 50, 0.2: 70, float("inf"): 100}, 0.2),  # in +Inf: the highest finite bound
        (0.0, {0.1: 50, 0.2: 70, float("inf"): 100}, 0.0),
        (1.0, {0.1: 50, 0.2: 70, float("inf"): 100}, 0.2),
        (0.5, {0.1: 0, float("inf"): 0}, math.nan),  # no observations
        (0.5, {0.1: 3}, math.nan),  # no +Inf bucket
        (-0.1, {0.1: 3, float("inf"): 3}, -math.inf),
        (1.1, {0.1: 3, float("inf"): 3}, math.inf),
        (0.5, {-1.0: 4, 0.5: 8, float("inf"): 8}, -1.0),  # rank in a first bucket <= 0
        (0.5, {0.1: 6, 0.2: 4, float("inf"): 10}, 0.1 * 5 / 6),  # non-monotonic, fixed up
    ],
)
def test_histogram_quantile_matches_prometheus(
    q: float, counts: dict[float, float], expected: float
) -> None:
    got = ex.histogram_quantile(q, counts)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


# --- properties over outside input: exposition text and Prometheus answers -------------

LABEL_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            LABEL_TEXT,
            st.sampled_from(["200", "401", "429", "500", "503"]),
            st.floats(0, 1e6, allow_nan=False),
        ),
        max_size=12,
    ),
    st.lists(st.floats(0, 10, allow_nan=False), max_size=30),
)
def test_exposition_round_trip(
    increments: list[tuple[str, str, float]], observations: list[float]
) -> None:
    """Any label values (quotes, backslashes, newlines, any script) and counts survive
    prometheus_client's writer and our reading of it."""
    registry, requests, latency, _ = _registry()
    for route, status, amount in increments:
        requests.labels(route, status).inc(amount)
    for seconds in observations:
        latency.labels("/auth/login").observe(seconds)
    scrape = _scrape(registry, 1.0)
    total = scrape.total("atendeai_auth_requests_total")
    if increments:
        assert total == pytest.approx(math.fsum(a for _, _, a in increments), rel=1e-9)
        routes = scrape.by_label("atendeai_auth_requests_total", "route")
        assert set(routes) == {r for r, _, _ in increments}
    else:
        assert total is None
    buckets = ex.buckets(scrape, "atendeai_auth_request_duration_seconds")
    if observations:
        assert buckets[math.inf] == len(observations)
        assert buckets[0.1] == sum(1 for s in observations if s <= 0.1)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_exposition_garbage_is_one_error_or_a_scrape(text: str) -> None:
    try:
        scrape = ex.parse_exposition(text, 0.0)
    except AtendeaiError as err:
        assert err.code == "failed" and "\n" not in err.message
        return
    for series in scrape.samples.values():
        assert all(isinstance(v, float) for v in series.values())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.floats(-1e6, 1e6), st.floats(0, 1e9), max_size=8),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_quantile_is_monotone_and_bounded(counts: dict[float, float], q1: float, q2: float) -> None:
    counts = {**counts, math.inf: max([*counts.values(), 0.0]) + 1}
    low, high = sorted((q1, q2))
    a, b = ex.histogram_quantile(low, counts), ex.histogram_quantile(high, counts)
    finite = sorted(k for k in counts if math.isfinite(k))
    if not finite:
        assert math.isnan(a) and math.isnan(b)
        return
    # NaN only where Prometheus gives it too: a rank of 0 in an empty first bucket.
    for q, value in ((low, a), (high, b)):
        assert not math.isnan(value) or q == 0 or q * counts[math.inf] <= 0
        assert math.isnan(value) or min(0.0, finite[0]) <= value <= finite[-1]
    if not (math.isnan(a) or math.isnan(b)):
        assert a <= b


VECTOR = {
    "status": "success",
    "data": {
        "resultType": "vector",
        "result": [
            {"metric": {"outcome": "success"}, "value": [1764400000.123, "3"]},
            {"metric": {"outcome": "failure"}, "value": [1764400000.123, "NaN"]},
        ],
    },
}
MATRIX = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [{"metric": {}, "values": [[1764400000, "1.5"], [1764400010, "+Inf"]]}],
    },
}


def test_prometheus_answers_of_each_shape() -> None:
    vector = parse_answer(json.dumps(VECTOR).encode())
    assert vector[0].labels == {"outcome": "success"} and vector[0].points == [
        (1764400000.123, 3.0)
    ]
    assert math.isnan(vector[1].points[0][1])
    matrix = parse_answer(json.dumps(MATRIX).encode())
    assert matrix[0].points == [(1764400000.0, 1.5), (1764400010.0, math.inf)]
    scalar = parse_answer(b'{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}')
    assert scalar[0].points == [(1.0, 2.0)]
    with pytest.raises(AtendeaiError, match="bad_data: parse error at char 5"):
        parse_answer(b'{"status":"error","errorType":"bad_data","error":"parse error at char 5"}')


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip


def _mutations() -> st.SearchStrategy[Any]:
    """Real answers with one part replaced by arbitrary JSON."""
    paths = [("data",), ("data", "resultType"), ("data", "result"), ("status",)]
    return st.tuples(st.sampled_from([VECTOR, MATRIX]), st.sampled_from(paths), JSON)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, _mutations(), st.binary(max_size=64)))
def test_prometheus_garbage_is_one_error_or_series(case: Any) -> None:
    if isinstance(case, tuple):
        document, path, value = case
        document = json.loads(json.dumps(document))
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        body = json.dumps(document).encode()
    elif isinstance(case, bytes):
        body = case
    else:
        body = json.dumps(case).encode()
    try:
        series = parse_answer(body)
    except AtendeaiError as err:
        assert err.code == "failed"
        return
    for one in series:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in one.labels.items())
        assert all(isinstance(t, float) and isinstance(v, float) for t, v in one.points)


# --- the terminal view ------------------------------------------------------------------


def _document(**changes: Any) -> dict[str, Any]:
    """A snapshot document at its largest: every profile's services, every error."""
    names = ["postgres", "redis", "redis-replica", "migrate", "auth", "gateway", "prometheus",
             "postgres-exporter", "redis-exporter", "grafana-with-a-long-name"]  # fmt: skip
    history = [[1764400000.0 + i * 5, float(i % 7) * 3.3] for i in range(120)]
    document: dict[str, Any] = {
        "schema": 1,
        "project": "a-project-with-a-rather-long-name-" * 2,
        "source": "prometheus",
        "where": "http://127.0.0.1:9090",
        "at": 1764400000.0,
        "window_seconds": 60.0,
        "services": [
            {
                "name": n,
                "state": "running",
                "health": "healthy" if i % 3 else "unhealthy",
                "ok": i % 3 != 0,
            }
            for i, n in enumerate(names)
        ],
        "metrics": {
            f.key: {"value": 123456.789, "unit": f.unit, "history": history} for f in FIGURES
        },
        "totals": {
            "requests": 10**9,
            "errors_5xx": 12,
            "rate_limited": 3,
            "logins": {"success": 40, "failure": 2, "rate_limited": 1},
        },
        "errors": {p: "x" * 200 for p in ("auth", "postgres", "redis", "services", "prometheus")},
    }
    document.update(changes)
    return document


def _render(document: dict[str, Any], **console_args: Any) -> str:
    buffer = io.StringIO()
    out = console(buffer, width=80, height=24, **console_args)
    out.print(frame(document, width=80, height=24))
    return buffer.getvalue()


def test_a_frame_fits_80_by_24() -> None:
    text = _render(_document())
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24
    from rich.cells import cell_len

    assert max(cell_len(line) for line in lines) <= 80
    assert "requests/s" in text and "redis memory" in text and "q quit" in text
    assert any(c in text for c in "▁▂▃▄▅▆▇█")
    # Ten services in nine cells: every unhealthy one shows, the rest are counted.
    assert "✘ postgres" in text and "✘ migrate" in text and "✘ prometheus" in text
    assert "… 2 more" in text


def test_no_color_means_no_escape_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert "\x1b[" in _render(_document(), force_terminal=True)  # colour without it
    monkeypatch.setenv("NO_COLOR", "1")
    plain = _render(_document(), force_terminal=True)
    assert "\x1b" not in plain and "requests/s" in plain


def test_sparkline_and_units() -> None:
    assert sparkline([0.0, 1.0, None, 7.0]) == "▁▂ █"
    assert sparkline([5.0, 5.0]) == "██" and sparkline([0.0, 0.0]) == "▁▁"  # from 0
    assert len(sparkline([1.0] * 100, width=40)) == 40
    assert human(None, "1/s") == "-" and human(float("nan"), "s") == "-"
    assert human(0.0123, "ratio") == "1.23%"
    assert human(0.25, "s") == "250 ms" and human(2.5, "s") == "2.50 s"
    assert human(3 * 1024 * 1024, "bytes") == "3.0 MiB"
    assert human(12.345, "1/s") == "12.3/s"


# --- against a real auth service (and a real Prometheus) -------------------------------


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.pop("NO_COLOR", None)
    return {
        **env,
        "ATENDEAI_STATE_DIR": str(state_dir),
        "ATENDEAI_PROJECT": f"top-{os.getpid()}",
        "ATENDEAI_RUNTIME": "local",  # status of a project with nothing running: fast
        **extra,
    }


@pytest.fixture
def served(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, state_dir: Path
) -> Iterator[tuple[Served, dict[str, str]]]:
    """`atendeai auth serve` on a free port, and the environment `top` needs to find it, the
    database (owner) and Redis."""
    serve_env = _env(
        state_dir,
        ATENDEAI_DATABASE_URL=auth_db.app_url,
        ATENDEAI_REDIS_URL=redis_url,
        ATENDEAI_JWT_KEYS_DIR=str(keys_dir),
        ATENDEAI_AUTH_BCRYPT_COST="10",
    )
    with auth_serve(serve_env, "--workers", "1") as live:
        top_env = _env(
            state_dir,
            ATENDEAI_AUTH_PORT=live.url.rsplit(":", 1)[1],
            ATENDEAI_DATABASE_URL=auth_db.admin_url,
            ATENDEAI_REDIS_URL=redis_url,
        )
        yield live, top_env


def _login(url: str, *, password: str = PASSWORD) -> int:
    response = httpx.post(
        url + "/auth/login",
        json={"clinic": "alpha", "email": "ana@alpha.test", "password": password},
        timeout=30,
    )
    return response.status_code


def _top(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "top", "--once", "--json", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_top_once_json_reports_logins(served: tuple[Served, dict[str, str]]) -> None:
    live, env = served
    assert [_login(live.url) for _ in range(3)] == [200] * 3
    assert _login(live.url, password="wrong password!") == 401
    document = _top(env, "--source", "metrics", "--interval", "0.5")
    assert document["schema"] == 1 and document["source"] == "metrics"
    assert set(document["metrics"]) == set(KEYS)
    assert document["errors"] == {}
    logins = document["totals"]["logins"]
    assert {k: v for k, v in logins.items() if v} == {"failure": 1, "success": 3}
    assert document["totals"]["requests"] >= 4
    assert document["totals"]["errors_5xx"] == 0
    metrics = document["metrics"]
    assert metrics["postgres_connections"]["value"] >= 1  # at least the service's and ours
    assert metrics["redis_memory_bytes"]["value"] > 0
    # Between the two reads only top's own scrape hit the service: a rate, and no 5xx.
    assert metrics["request_rate"]["value"] > 0 and metrics["error_ratio"]["value"] == 0
    assert metrics["redis_ops_rate"]["value"] > 0
    # Without a terminal, plain `top` prints one frame, no escape codes.
    done = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "top", "--source", "metrics", "--interval", "0.3"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    assert "logins/s" in done.stdout and "success 3" in done.stdout
    assert "\x1b" not in done.stdout and len(done.stdout.splitlines()) <= 24
    assert 0.4 <= document["window_seconds"] < 5
    assert [s["name"] for s in document["services"]] == ["postgres", "redis", "migrate", "auth"]
    assert {s["state"] for s in document["services"]} == {"missing"}


def test_direct_rates_count_what_happened_between_reads(
    served: tuple[Served, dict[str, str]], auth_db: AuthDb, redis_url: str
) -> None:
    live, _ = served
    source = DirectSource(live.url, auth_db.admin_url, redis_url)
    try:
        first = source.read(time.time())
        assert first.values["login_rate"] is None  # one read: no rate yet
        assert [_login(live.url) for _ in range(4)] == [200] * 4
        # A backend flushes its transaction counts to pg_stat_database when it has been idle
        # for a while or when it exits, so the service's pooled connections may not show the
        # logins yet: a connection of ours commits 3 and exits, which flushes for sure.
        with psycopg.connect(auth_db.admin_url, autocommit=True) as conn:
            for _ in range(3):
                conn.execute("SELECT 1")
        second = source.read(time.time())
    finally:
        source.close()
    seconds = source.window_seconds
    assert second.errors == {}
    assert second.values["login_rate"] == pytest.approx(4 / seconds, rel=0.05)
    # 4 logins and this second /metrics scrape (the first was counted before it answered).
    assert second.values["request_rate"] == pytest.approx(5 / seconds, rel=0.05)
    assert second.values["login_p99_seconds"] is not None
    assert 0 < second.values["login_p99_seconds"] < 5
    assert second.values["postgres_tps"] is not None and second.values["postgres_tps"] > 0
    assert len(second.history["login_rate"]) == 1


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: auth
    static_configs:
      - targets: ["{target}"]
"""


@pytest.fixture
def prometheus(tmp_path: Path, served: tuple[Served, dict[str, str]]) -> Iterator[str]:
    """Debian's prometheus on 127.0.0.1, scraping the auth service every second."""
    assert PROMETHEUS is not None
    live, _ = served
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(target=live.url.removeprefix("http://")))
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "prometheus did not start"
            time.sleep(0.2)
        # Scraped once before the test's traffic, so that rate() sees the increase.
        _wait_for(url, 'up{job="auth"}', 1)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def _ask(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
    answer = httpx.get(url + "/api/v1/query", params=params, timeout=10).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _number(result: list[dict[str, Any]]) -> float | None:
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def _wait_for(url: str, expr: str, wanted: float, *, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while _number(_ask(url, expr)) != wanted:
        assert time.monotonic() < deadline, f"Prometheus never saw {expr} == {wanted}"
        time.sleep(0.3)


# Written here by hand, not taken from the library: what each figure means.
OWN_QUERIES = {
    "request_rate": "sum(rate(atendeai_auth_requests_total[1m]))",
    "error_ratio": 'sum(rate(atendeai_auth_requests_total{status=~"5.."}[1m])) '
    "/ sum(rate(atendeai_auth_requests_total[1m]))",
    "p99_seconds": "histogram_quantile(0.99, "
    "sum by (le) (rate(atendeai_auth_request_duration_seconds_bucket[1m])))",
    "login_p99_seconds": "histogram_quantile(0.99, sum by (le) "
    '(rate(atendeai_auth_request_duration_seconds_bucket{route="/auth/login"}[1m])))',
    "login_rate": "sum(rate(atendeai_auth_logins_total[1m]))",
    "rate_limited_rate": 'sum(rate(atendeai_auth_requests_total{status="429"}[1m]))',
    "postgres_connections": "sum(pg_stat_database_numbackends)",
    "postgres_tps": "sum(rate(pg_stat_database_xact_commit[1m])) "
    "+ sum(rate(pg_stat_database_xact_rollback[1m]))",
    "redis_ops_rate": "sum(rate(redis_commands_processed_total[1m]))",
    "redis_memory_bytes": "sum(redis_memory_used_bytes)",
}
ZERO_WHEN_NONE = {"error_ratio", "rate_limited_rate"}
"""No 5xx/429 series yet: Prometheus answers nothing, top answers 0 (the service counts)."""


def _agree(
    env: dict[str, str], prometheus: str, *args: str, settle: float = 1.5
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """`top --once --json` and Prometheus's own answers to OWN_QUERIES at top's instant: equal.

    A scrape that started before that instant but was stored after top asked changes the
    answer at it; that is rare (milliseconds in a scrape interval), so it is tried again then.
    `settle`: seconds for every scrape begun before the instant to be stored.
    """
    for _ in range(3):
        document = _top(env, *args)
        time.sleep(settle)
        at = document["at"]
        theirs = {key: _number(_ask(prometheus, expr, at)) for key, expr in OWN_QUERIES.items()}
        ours = {key: document["metrics"][key]["value"] for key in KEYS}
        for key in ZERO_WHEN_NONE:
            if theirs[key] is None and ours[key] == 0:
                theirs[key] = 0.0
        if ours == pytest.approx(theirs, rel=1e-9):
            break
    assert ours == pytest.approx(theirs, rel=1e-9)
    return document, ours


@needs_prometheus
def test_top_agrees_with_prometheus(served: tuple[Served, dict[str, str]], prometheus: str) -> None:
    live, env = served
    env = {**env, "ATENDEAI_PROMETHEUS_PORT": prometheus.rsplit(":", 1)[1]}
    # rate() never counts a series' first sample: when the login route's histogram first
    # appears with every login in it, its rate is 0 and the quantile undefined. One login
    # first, seen by Prometheus, then the rest.
    assert _login(live.url) == 200
    login_count = 'sum(atendeai_auth_request_duration_seconds_count{route="/auth/login"})'
    _wait_for(prometheus, login_count, 1)
    assert [_login(live.url) for _ in range(4)] == [200] * 4
    assert _login(live.url, password="wrong password!") == 401
    _wait_for(prometheus, "sum(atendeai_auth_logins_total)", 6)
    _wait_for(prometheus, login_count, 6)
    time.sleep(2.5)  # a few more scrapes: rate() needs two samples after the logins

    document, ours = _agree(env, prometheus, "--source", "prometheus")
    assert document["source"] == "prometheus" and document["errors"] == {}
    assert ours["login_rate"] and ours["login_rate"] > 0 and ours["login_p99_seconds"]
    # No exporters scraped here: no PostgreSQL or Redis figures, and nothing invented.
    assert ours["postgres_tps"] is None and ours["redis_memory_bytes"] is None
    logins = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in _ask(prometheus, "sum by (outcome) (atendeai_auth_logins_total)", document["at"])
    }
    assert document["totals"]["logins"] == logins
    assert {k: v for k, v in logins.items() if v} == {"success": 5, "failure": 1}
    history = document["metrics"]["login_rate"]["history"]
    assert history and max(v for _, v in history if v is not None) > 0


@needs_prometheus
def test_direct_quantile_equals_prometheus_histogram_quantile(
    served: tuple[Served, dict[str, str]], prometheus: str
) -> None:
    """The same cumulative login buckets (scrapes do not touch them): our quantile
    arithmetic and Prometheus's give the same number."""
    live, _ = served
    for _ in range(6):
        assert _login(live.url) == 200
    assert _login(live.url, password="wrong password!") == 401
    _wait_for(prometheus, "sum(atendeai_auth_logins_total)", 7)
    login = 'atendeai_auth_request_duration_seconds_bucket{route="/auth/login"}'
    body = httpx.get(live.url + "/metrics", timeout=10).text
    scrape = ex.parse_exposition(body, time.time())
    ours = ex.buckets(scrape, "atendeai_auth_request_duration_seconds",
                      lambda labels: labels.get("route") == "/auth/login")  # fmt: skip
    for q in (0.5, 0.9, 0.99, 1.0):
        theirs = _number(_ask(prometheus, f"histogram_quantile({q}, sum by (le) ({login}))"))
        assert theirs is not None
        assert ex.histogram_quantile(q, ours) == pytest.approx(theirs, rel=1e-12)


def test_prometheus_down_is_one_error_line(state_dir: Path) -> None:
    port = free_port()  # nothing listens there
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    with pytest.raises(AtendeaiError) as err:
        api.query("up", time.time())
    assert err.value.code == "unavailable" and str(port) in err.value.message
    document = _top(
        _env(state_dir, ATENDEAI_PROMETHEUS_PORT=str(port), ATENDEAI_AUTH_PORT=str(port)),
        "--source",
        "prometheus",
    )
    assert list(document["errors"]) == ["prometheus"]
    assert all(m["value"] is None for m in document["metrics"].values())


# --- the live view on a real pseudo-terminal --------------------------------------------


def _read_until(fd: int, pattern: bytes, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while pattern not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {pattern!r}; got {seen[-400:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def _own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty (stdin), as
    a shell gives it, so the pty's line discipline turns Ctrl-C into SIGINT for it."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # As at a shell's prompt: SIGINT at its default even when this run inherited it ignored
    # (a non-interactive shell's background job does), or Python would keep ignoring Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SGR = re.compile(rb"\x1b\[[0-9;]*m")
"""Select Graphic Rendition: the escape codes of colour and style (not cursor moves)."""


@pytest.mark.parametrize(
    ("key", "no_color"),
    [(b"q", False), (b"\x03", False), (b"q", True)],
    ids=["q", "ctrl-c", "q-no-color"],
)
def test_live_view_quits_and_restores_the_terminal(
    state_dir: Path, key: bytes, no_color: bool
) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    before = termios.tcgetattr(slave)
    env = _env(state_dir, ATENDEAI_AUTH_PORT=str(free_port()), TERM="xterm-256color")
    if no_color:
        env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "atendeai_ctl", "top", "--source", "metrics", "--interval", "0.5"],
        stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=_own_terminal,
    )  # fmt: skip
    try:
        seen = _read_until(master, b"redis memory", 30)
        assert b"\x1b[?1049h" in seen  # the alternate screen
        assert bool(SGR.search(seen)) is not no_color
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ICANON  # cbreak while it runs
        os.write(master, key)  # typed: Ctrl-C becomes SIGINT in the terminal's line discipline
        assert proc.wait(10) == 0
        rest = _read_until(master, b"\x1b[?1049l", 5)  # left the alternate screen
        assert b"Traceback" not in seen + rest
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_an_unknown_source_is_one_line_and_exit_6(state_dir: Path) -> None:
    env = _env(state_dir)
    done = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "top", "--once", "--source", "grafana"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 6 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "Error: unknown source 'grafana' (use one of: auto, prometheus, metrics)"
    ]


def test_help_lists_top() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", "top", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert re.search(r"--once", done.stdout) and "--source" in done.stdout


# --- the whole stack: `up --profile monitoring` on the engine, stand-in images -----------


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_project(
        tmp_path_factory.mktemp("top"), prefix="top", ATENDEAI_PROMETHEUS_PORT=str(free_port())
    )
    try:
        done = project.run("up", "--profile", "monitoring")
        assert done.returncode == 0, done.stderr
        for args, stdin in (
            (("clinic", "create", "Alpha", "--slug", "alpha"), None),
            (("user", "create", "ana@alpha.test", "--clinic", "alpha", "--password-stdin"),
             PASSWORD + "\n"),
        ):  # fmt: skip
            env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
            made = subprocess.run(
                [sys.executable, "-m", "atendeai_ctl", *args], env={**env, **project.env},
                input=stdin, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
        yield project
    finally:
        project.run("down", "--volumes", "--yes", "--no-backup")
        remove_project(project.name)


@pytest.mark.docker
def test_top_on_the_monitoring_profile_reads_prometheus_and_agrees(monitored: Project) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env = {**env, **monitored.env}
    env.pop("NO_COLOR", None)
    auth = f"http://127.0.0.1:{env['ATENDEAI_AUTH_PORT']}"
    prometheus = f"http://127.0.0.1:{env['ATENDEAI_PROMETHEUS_PORT']}"
    _wait_for(prometheus, 'count(up{job=~"auth|postgres|redis"} == 1)', 3, within=60)
    assert [_login(auth) for _ in range(4)] == [200] * 4
    _wait_for(prometheus, 'sum(atendeai_auth_logins_total{outcome="success"})', 4, within=30)
    time.sleep(6)  # one more scrape (every 5 s): rate() sees the logins

    # auto: the `prometheus` service runs, so Prometheus is the source.
    document, ours = _agree(env, prometheus, settle=5.5)
    assert document["source"] == "prometheus" and document["where"] == prometheus
    assert document["errors"] == {}
    assert all(s["ok"] for s in document["services"])
    assert {"prometheus", "postgres-exporter", "redis-exporter", "auth"} <= {
        s["name"] for s in document["services"]
    }
    # The exporters' figures are there (the names top asks for exist in the stand-ins).
    for key in ("postgres_connections", "postgres_tps", "redis_ops_rate", "redis_memory_bytes"):
        assert ours[key] is not None and ours[key] > 0, key
    assert ours["login_rate"] and ours["login_rate"] > 0

    # And without Prometheus, straight from the services on their published ports.
    direct = _top(env, "--source", "metrics", "--interval", "1")
    assert direct["source"] == "metrics" and direct["errors"] == {}
    assert direct["totals"]["logins"]["success"] >= 4
    assert direct["metrics"]["postgres_connections"]["value"] >= 1
    assert direct["metrics"]["redis_memory_bytes"]["value"] > 0

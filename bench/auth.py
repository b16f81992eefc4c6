"""Throughput and latency of the auth service (2 uvicorn workers) on loopback, against a peer.

    python bench/auth.py [--duration 8] [--rounds 3] [--peer ../shared/peers/node-auth]
    python bench/auth.py --baseline /tmp/base   # this tree against another checkout of it

Starts a throwaway PostgreSQL and Redis (tests/servers.py), migrates, seeds a clinic and a
user at the default bcrypt cost (12), runs `atendeai auth serve --workers 2` and drives it
with wrk (bench/wrk/auth.lua; C, so it leaves CPU for the server) at 50 connections.

With --peer, the Node service there is copied to a temp dir, `npm ci`-ed, given its own
database on the same PostgreSQL and Redis and started with WORKERS=2 JWT_KEYOBJECT=1. The same
wrk script, connections, duration and stop condition (wrk's -d) drive both sides.

With --baseline, the other side is this service again, run from another checkout (e.g.
`git worktree add /tmp/base HEAD`: its src/ goes first on PYTHONPATH), with its own database on
the same PostgreSQL and Redis: a before/after comparison of a change in one run, rounds
alternating as with a peer.

Scenarios:
  health               ours GET /health/ready vs the peer's GET /health (both query PostgreSQL
                       and Redis on every request)
  verify_hit           GET /auth/verify with one token on every request: ours answers from its
                       verified-token cache after the first request, the peer verifies each time
  verify_miss          GET /auth/verify over a fresh pool of distinct tokens per run (at least
                       4x the verifier cache's size, and 1.3x what the fastest earlier run would
                       have sent), each wrk thread walking its own slice in order, so no token
                       repeats within a run (`wraps` 0, printed otherwise) and every request of
                       ours pays a full Ed25519 verification
  refresh              POST /auth/refresh, chained rotation (every token presented once)
  login                POST /auth/login at saturation (16 connections)
  verify_under_logins  verify_miss while 4 connections run logins (bcrypt saturates the cores)

Requests/s counts 2xx responses only. For this service (and a --baseline), the CPU time its
processes (the serve process and its workers) used per request is printed too: on a machine
shared with other work, throughput swings with the neighbours' load while CPU per request
barely does, so it is the steadier before/after figure. Non-2xx responses, socket errors
(connect/read/write) and timeouts are printed for every run; a scenario with any of them in any
measured run gets no ratio and no target verdict. A warm-up run of every scenario is discarded,
then `--rounds` rounds alternate the order (ours first, then the peer first, ...). Every run is
printed with the load average, then the medians. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atendeai_ctl.auth.tokens import CACHE_SIZE  # noqa: E402
from tests.servers import PostgresServer, free_port, postgres_server, redis_server  # noqa: E402

LUA = ROOT / "bench" / "wrk" / "auth.lua"
CONNECTIONS = 50
LOGIN_CONNECTIONS = 16
WRK_THREADS = 2
POOL_SIZE = 4 * CACHE_SIZE
EMAIL, PASSWORD = "bench@example.com", "correct horse battery staple"
APP_PASSWORD = "bench-app-password"
# What the peer's bench/mint.js signs with (its defaults), so pool tokens match its own.
PEER_SECRET = "dev-only-secret-change-me-0123456789abcdef0123"
PEER_ISSUER, PEER_AUDIENCE = "auth.peer.local", "api.peer.local"
SCENARIOS = ["health", "verify_hit", "verify_miss", "refresh", "login", "verify_under_logins"]
Result = dict[str, Any]


def errors_of(result: Result) -> int:
    return int(
        result["non2xx"]
        + result["connect_errors"]
        + result["read_errors"]
        + result["write_errors"]
        + result["timeouts"]
    )


def wrk_argv(url: str, *, connections: int, duration: float, timeout: str) -> list[str]:
    threads = min(WRK_THREADS, connections)
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(duration)}s",
        f"--timeout={timeout}",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]


def parse_result(stdout: str, stderr: str) -> Result:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: Result = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"wrk printed no RESULT line:\n{stdout}\n{stderr}")


def wrk(
    url: str, env: dict[str, str], *, connections: int, duration: float, timeout: str
) -> Result:
    proc = subprocess.run(
        wrk_argv(url, connections=connections, duration=duration, timeout=timeout),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return parse_result(proc.stdout, proc.stderr)


def wait_ready(url: str, path: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}{path} did not become ready")


def session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid`."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[int]:
    """Run argv in a new session for the block; yields its pid (= the session id)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bcrypt_rate(cores: int, seconds: float = 3.0) -> tuple[float, float]:
    """(seconds per cost-12 check, checks/s) with one thread per core, measured now: what
    the cores allow at this moment (other load on the machine included)."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12))
    counts = [0] * cores

    def spin(index: int) -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            bcrypt.checkpw(PASSWORD.encode(), hashed)
            counts[index] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=spin, args=(i,)) for i in range(cores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = sum(counts) / (time.perf_counter() - started)
    return cores / rate, rate


@dataclass
class Target:
    """One service under test and how to make the inputs each scenario needs."""

    name: str
    url: str
    token: Callable[[], str]
    pool: Callable[[int], list[str]]
    seeds: Callable[[int], list[str]]
    health_path: str
    login_env: dict[str, str] = field(default_factory=dict)
    # distinct tokens per miss run: 1.3x the most any earlier run sent, so none repeats
    pool_size: int = 0
    cpu_s: Callable[[], float] | None = None
    """CPU seconds used so far by the service's processes (this service only)."""

    def check_token(self, token: str) -> None:
        """A pool token the service refuses would turn the run into a 401 benchmark."""
        got = httpx.get(
            self.url + "/auth/verify", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        if got.status_code != 200:
            raise RuntimeError(f"{self.name} refused a bench token: {got.status_code} {got.text}")

    def env_for(self, scenario: str, tmp: Path) -> tuple[str, dict[str, str]]:
        """(path, wrk env) of one run; inputs that a run uses up are made fresh for each run."""
        if scenario == "health":
            return self.health_path, {"MODE": "health", "HEALTH_PATH": self.health_path}
        if scenario == "verify_hit":
            return "/auth/verify", {"MODE": "verify", "TOKEN": self.token()}
        if scenario in ("verify_miss", "verify_under_logins"):
            size = max(POOL_SIZE, self.pool_size)
            tokens = self.pool(size)
            self.check_token(tokens[-1])
            pool_file = tmp / f"{self.name}-pool-{uuid.uuid4().hex[:6]}.txt"
            pool_file.write_text("\n".join(tokens) + "\n")
            slice_ = str(size // WRK_THREADS)
            env = {"MODE": "verify", "TOKEN_FILE": str(pool_file), "TOKENS_PER_THREAD": slice_}
            return "/auth/verify", env
        if scenario == "refresh":
            per_thread = 400
            seed_file = tmp / f"{self.name}-seeds-{uuid.uuid4().hex[:6]}.txt"
            seed_file.write_text("\n".join(self.seeds(WRK_THREADS * per_thread)) + "\n")
            env = {"MODE": "refresh", "SEED_FILE": str(seed_file)}
            return "/auth/refresh", env | {"SEEDS_PER_THREAD": str(per_thread)}
        if scenario == "login":
            return "/auth/login", {"MODE": "login", **self.login_env}
        raise ValueError(scenario)

    def run(self, scenario: str, tmp: Path, duration: float) -> tuple[Result, Result | None]:
        """(the scenario's result, the background logins' result for verify_under_logins)."""
        return self.execute(scenario, self.env_for(scenario, tmp), duration)

    def execute(
        self, scenario: str, prepared: tuple[str, dict[str, str]], duration: float
    ) -> tuple[Result, Result | None]:
        """run() with its inputs made already (env_for), so paired runs start together."""
        path, env = prepared
        pool = int(env.get("TOKENS_PER_THREAD", 0)) * WRK_THREADS
        connections = LOGIN_CONNECTIONS if scenario == "login" else CONNECTIONS
        timeout = "30s" if scenario == "login" else "5s"
        if scenario != "verify_under_logins":
            cpu_before = self.cpu_s() if self.cpu_s else 0.0
            result = wrk(self.url + path, env, connections=connections, duration=duration,
                         timeout=timeout)  # fmt: skip
            if self.cpu_s and result["requests"]:
                used = self.cpu_s() - cpu_before
                result["cpu_us"] = used / result["requests"] * 1e6
            return result | ({"pool": pool} if pool else {}), None
        login_env = {**os.environ, "MODE": "login", **self.login_env}
        argv = wrk_argv(self.url + "/auth/login", connections=4, duration=duration + 2,
                        timeout="30s")  # fmt: skip
        login = subprocess.Popen(argv, env=login_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            time.sleep(1)
            verify = wrk(self.url + path, env, connections=connections, duration=duration,
                         timeout=timeout)  # fmt: skip
        finally:
            out, err = login.communicate()
        return verify | {"pool": pool}, parse_result(out, err)


def our_service(
    pg: PostgresServer, redis_url: str, tmp: Path, name_: str = "ours", src: Path | None = None
) -> Iterator[Target]:
    """This service (or, with `src`, the copy of it in another checkout's src/)."""
    from atendeai_ctl.auth import clinics, ensure_signing_key, users
    from atendeai_ctl.auth.keys import KeyRing
    from atendeai_ctl.auth.sessions import issue_token
    from atendeai_ctl.auth.settings import AuthSettings
    from atendeai_ctl.auth.tokens import issue_access_token, refresh_token_hash
    from atendeai_ctl.db.migrations import upgrade

    name = pg.create_database()
    admin = pg.url(name)
    upgrade(admin, app_password=APP_PASSWORD)
    settings = AuthSettings()
    with psycopg.connect(admin) as conn:
        clinic = clinics.create_clinic(conn, slug="bench", name="Bench", actor="cli:bench")
        user = users.create_user(
            conn, settings, clinic="bench", email=EMAIL, password=PASSWORD, actor="cli:bench"
        )
    keys = tmp / "jwt"
    ensure_signing_key(keys)
    ring = KeyRing(directory=keys)

    def token() -> str:
        with psycopg.connect(admin) as conn:
            return issue_token(
                conn, ring, settings, clinic="bench", email=EMAIL, ttl_s=3600, actor="cli:bench"
            )[0]

    def pool(count: int) -> list[str]:
        """Distinct tokens (own jti, same live session), signed as the service signs them."""
        with psycopg.connect(admin) as conn:
            _, claims = issue_token(
                conn, ring, settings, clinic="bench", email=EMAIL, ttl_s=3600, actor="cli:bench"
            )
        return [
            issue_access_token(
                ring,
                settings,
                user_id=claims["sub"],
                clinic_id=claims["clinic_id"],
                session_id=claims["sid"],
                role=claims["role"],
                ttl_s=3600,
            )[0]
            for _ in range(count)
        ]

    def seeds(count: int) -> list[str]:
        tokens = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(count)]
        sids = [uuid.uuid4() for _ in range(count)]
        with psycopg.connect(admin) as conn:
            conn.execute(
                "INSERT INTO atendeai.sessions (id, clinic_id, user_id, expires_at)"
                " SELECT unnest(%s::uuid[]), %s, %s, now() + interval '30 days'",
                (sids, clinic.id, user.id),
            )
            conn.execute(
                "INSERT INTO atendeai.refresh_tokens"
                " (clinic_id, session_id, token_hash, expires_at)"
                " SELECT %s, s, h, now() + interval '30 days'"
                " FROM unnest(%s::uuid[], %s::bytea[]) AS t(s, h)",
                (clinic.id, sids, [refresh_token_hash(t) for t in tokens]),
            )
        return tokens

    port = free_port()
    env = {
        "ATENDEAI_DATABASE_URL": pg.url(name, user="atendeai_app", password=APP_PASSWORD),
        "ATENDEAI_REDIS_URL": redis_url,
        "ATENDEAI_JWT_KEYS_DIR": str(keys),
        # all load comes from 127.0.0.1: raise the per-IP request limit (it still counts)
        "ATENDEAI_AUTH_REQUESTS_PER_IP": "1000000000",
    }
    if src is not None:
        env["PYTHONPATH"] = str(src)
    argv = [sys.executable, "-m", "atendeai_ctl", "auth", "serve", "--port", str(port),
            "--workers", "2"]  # fmt: skip
    with process(argv, env, ROOT, tmp / f"{name_}.log") as sid:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health/ready")
        target = Target(name_, url, token, pool, seeds, "/health/ready")
        target.cpu_s = lambda: session_cpu_s(sid)
        yield target


def peer_service(peer: Path, pg: PostgresServer, redis_url: str, tmp: Path) -> Iterator[Target]:
    work = tmp / "peer"
    shutil.copytree(peer, work, ignore=shutil.ignore_patterns("node_modules"))
    for path in [work, *work.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    print("  npm ci (peer) ...", file=sys.stderr)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        check=True,
        capture_output=True,
    )
    name = pg.create_database()
    db_url = pg.url(name)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute((work / "schema.sql").read_text())
    peer_redis = redis_url.rsplit("/", 1)[0] + "/1"
    env = {
        "DATABASE_URL": db_url,
        "REDIS_URL": peer_redis,
        "BENCH_EMAIL": EMAIL,
        "BENCH_PASSWORD": PASSWORD,
    }
    subprocess.run(
        ["node", "bench/seed.js", "users", "100"],
        cwd=work,
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )

    def token() -> str:
        out = subprocess.run(
            ["node", "bench/mint.js", "3600"], cwd=work, check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    def pool(count: int) -> list[str]:
        """The claims bench/mint.js signs (HS256, same secret, issuer, audience), each distinct."""
        now = int(time.time())
        return [
            jwt.encode(
                {
                    "clinic_id": str(uuid.uuid4()),
                    "sub": str(uuid.uuid4()),
                    "jti": str(uuid.uuid4()),
                    "iss": PEER_ISSUER,
                    "aud": PEER_AUDIENCE,
                    "iat": now,
                    "exp": now + 3600,
                },
                PEER_SECRET,
                algorithm="HS256",
            )
            for _ in range(count)
        ]

    def seeds(count: int) -> list[str]:
        out = subprocess.run(
            ["node", "bench/seed.js", "refresh", str(count)],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        return out.stdout.split()

    port = free_port()
    server_env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "WORKERS": "2",
                  "JWT_KEYOBJECT": "1"}  # fmt: skip
    with process(["node", "server.js"], server_env, work, tmp / "peer.log"):
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health")
        yield Target(
            "peer", url, token, pool, seeds, "/health", {"EMAIL": EMAIL, "PASSWORD": PASSWORD}
        )


def describe(result: Result) -> str:
    return (
        f"{result['ok_rps']:8.1f} 2xx/s  p50 {result['p50_ms']:6.1f} ms"
        f"  p99 {result['p99_ms']:6.1f} ms  non2xx {result['non2xx']}  socket errors"
        f" {result['connect_errors']}/{result['read_errors']}/{result['write_errors']}"
        f" (connect/read/write)  timeouts {result['timeouts']}"
        + (f"  pool {result['pool']} wraps {result['wraps']}" if result.get("pool") else "")
        + (f"  cpu {result['cpu_us']:.0f} us/req" if "cpu_us" in result else "")
    )


@dataclass
class Tally:
    """Every measured run, by (target, scenario); the background logins kept apart."""

    runs: dict[tuple[str, str], list[Result]] = field(default_factory=dict)
    logins: dict[str, list[Result]] = field(default_factory=dict)
    bcrypt: list[tuple[float, float]] = field(default_factory=list)

    def errors(self, target: str, scenario: str) -> int:
        total = sum(errors_of(r) for r in self.runs.get((target, scenario), []))
        if scenario == "verify_under_logins":
            total += sum(errors_of(r) for r in self.logins.get(target, []))
        return total

    def median(self, target: str, scenario: str) -> Result | None:
        results = self.runs.get((target, scenario))
        if not results:
            return None
        keys = ("ok_rps", "p50_ms", "p99_ms", "cpu_us")
        return {k: statistics.median(r[k] for r in results) for k in keys if k in results[0]}


def measure(
    targets: list[Target],
    scenarios: list[str],
    rounds: int,
    duration: float,
    tmp: Path,
    *,
    paired: bool = False,
) -> Tally:
    """Every run of every round; with `paired`, both targets of a scenario are driven at the
    same time (each by its own wrk), so both see the same load from outside the bench."""
    cores = os.cpu_count() or 1
    tally = Tally()
    for round_ in range(rounds + 1):
        warmup = round_ == 0
        order = targets if round_ % 2 == 1 or warmup else list(reversed(targets))
        label = "warm-up" if warmup else f"round {round_}"
        print(f"{label}: order {' then '.join(t.name for t in order)}", flush=True)
        for scenario in scenarios:
            seconds = min(duration, 3) if warmup else duration
            together: dict[str, tuple[Result, Result | None]] = {}
            if paired and scenario not in ("login", "verify_under_logins"):
                prepared = [t.env_for(scenario, tmp) for t in order]
                with ThreadPoolExecutor(len(order)) as pool:
                    futures = [
                        pool.submit(t.execute, scenario, inputs, seconds)
                        for t, inputs in zip(order, prepared, strict=True)
                    ]
                    together = {t.name: f.result() for t, f in zip(order, futures, strict=True)}
            for target in order:
                if scenario == "login" and not warmup:
                    tally.bcrypt.append(bcrypt_rate(cores))
                if target.name in together:
                    result, logins = together[target.name]
                else:
                    result, logins = target.run(scenario, tmp, seconds)
                if scenario in ("verify_miss", "verify_under_logins"):
                    rate = result["requests"] / result["duration_s"]
                    target.pool_size = max(target.pool_size, int(rate * duration * 1.3))
                if not warmup:
                    tally.runs.setdefault((target.name, scenario), []).append(result)
                    if logins is not None:
                        tally.logins.setdefault(target.name, []).append(logins)
                    if scenario == "login":
                        tally.bcrypt.append(bcrypt_rate(cores))
                print(
                    f"  {label:<8} {scenario:<20} {target.name:<5} {describe(result)}"
                    f"  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                if logins is not None:
                    print(
                        f"  {'':<8} {'(logins meanwhile)':<20} {target.name:<5} {describe(logins)}"
                    )
    return tally


def report(tally: Tally, scenarios: list[str], rounds: int, *, other: str | None) -> None:
    cores = os.cpu_count() or 1
    print(
        f"\nmedians of {rounds} rounds; auth service 2 workers, {cores} cores, {CONNECTIONS}"
        f" connections (login {LOGIN_CONNECTIONS}); verify_miss pool >= {POOL_SIZE} tokens"
        f" (verifier cache {CACHE_SIZE} per worker); load now {os.getloadavg()[0]:.2f}"
    )
    header = f"{'scenario':<21}{'ours 2xx/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}"
    if other:
        header += (
            f"{other + ' 2xx/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}{'ours/' + other:>11}"
        )
    print(header)
    ratios: dict[str, float] = {}
    for scenario in scenarios:
        ours = tally.median("ours", scenario)
        if ours is None:
            continue
        ours_errors = tally.errors("ours", scenario)
        line = (
            f"{scenario:<21}{ours['ok_rps']:>11.1f}{ours['p50_ms']:>8.1f}{ours['p99_ms']:>8.1f}"
            f"{ours_errors:>8}"
        )
        theirs = tally.median(other, scenario) if other else None
        if other and theirs is not None:
            peer_errors = tally.errors(other, scenario)
            line += (
                f"{theirs['ok_rps']:>12.1f}{theirs['p50_ms']:>8.1f}{theirs['p99_ms']:>8.1f}"
                f"{peer_errors:>8}"
            )
            if ours_errors or peer_errors:
                line += f"{'withheld':>11}"
            elif theirs["ok_rps"]:
                ratios[scenario] = ours["ok_rps"] / theirs["ok_rps"]
                line += f"{ratios[scenario]:>11.2f}"
            else:
                line += f"{'n/a':>11}"
        print(line)
    print("errors = non-2xx + socket errors + timeouts summed over the measured runs")
    for name, logins in tally.logins.items():
        rate = statistics.median(r["ok_rps"] for r in logins)
        print(f"  ({name}: logins/s during verify_under_logins, median {rate:.2f})")
    allowed = None
    if tally.bcrypt:
        per = statistics.median(s[0] for s in tally.bcrypt)
        allowed = statistics.median(s[1] for s in tally.bcrypt)
        print(
            f"bcrypt cost 12, {cores} threads, measured before and after each login run:"
            f" {per * 1000:.0f} ms per check per core -> {allowed:.2f} logins/s allowed"
        )
    for scenario in scenarios:
        mine_runs, their_runs = (
            tally.runs.get(("ours", scenario)),
            tally.runs.get((other or "", scenario)),
        )
        if mine_runs and their_runs and len(mine_runs) == len(their_runs):
            per_round = [
                a["ok_rps"] / b["ok_rps"]
                for a, b in zip(mine_runs, their_runs, strict=True)
                if b["ok_rps"]
            ]
            if per_round:
                print(
                    f"  ours/{other} per round, {scenario}: median"
                    f" {statistics.median(per_round):.3f} of {[round(r, 2) for r in per_round]}"
                )
    for scenario in scenarios:
        mine, theirs = tally.median("ours", scenario), tally.median(other or "", scenario)
        if mine and "cpu_us" in mine:
            line = f"  cpu per request, {scenario}: ours {mine['cpu_us']:.0f} us"
            if theirs and "cpu_us" in theirs:
                change = mine["cpu_us"] / theirs["cpu_us"] - 1
                line += f", {other} {theirs['cpu_us']:.0f} us ({change:+.1%})"
            print(line)
    targets(tally, ratios if other == "peer" else {}, allowed)


def targets(tally: Tally, ratios: dict[str, float], allowed: float | None) -> None:
    """Verdicts only where every measured run of the scenario was free of errors."""
    checks: list[tuple[str, str, bool]] = []

    def clean(scenario: str) -> Result | None:
        med = tally.median("ours", scenario)
        return med if med is not None and not tally.errors("ours", scenario) else None

    if allowed is not None and (login := clean("login")):
        got = login["ok_rps"]
        checks.append(
            ("login", f"logins/s {got:.2f} >= 88% of {allowed:.2f}", got >= 0.88 * allowed)
        )
    for scenario, goal in (("refresh", 1.3), ("verify_miss", 1.2), ("verify_hit", 2.0)):
        if scenario in ratios:
            got = ratios[scenario]
            checks.append((scenario, f"{scenario} ours/peer {got:.2f} >= {goal}", got >= goal))
    if hit := clean("verify_hit"):
        checks.append(("verify_hit", f"verify p99 {hit['p99_ms']:.1f} ms < 50", hit["p99_ms"] < 50))
    if refresh := clean("refresh"):
        p99 = refresh["p99_ms"]
        checks.append(("refresh", f"refresh p99 {p99:.1f} ms < 100", p99 < 100))
    if under := clean("verify_under_logins"):
        p99 = under["p99_ms"]
        text = f"verify (miss) p99 while logins saturate {p99:.1f} ms < 50"
        checks.append(("verify_under_logins", text, p99 < 50))
    print("\ntargets (measured here, not asserted; none for a scenario that had errors):")
    for _, text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def main() -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0],
        epilog="\n".join(doc.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per run (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--peer", type=Path, help="the Node peer service directory")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout of this repository to compare against"
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="drive both sides at once (not login scenarios): same outside load for both",
    )
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=SCENARIOS)
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if s in args.only]
    with (
        tempfile.TemporaryDirectory(prefix="atendeai-bench-") as tmp_name,
        postgres_server() as pg,
        redis_server() as rs,
    ):
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        ours_cm = contextmanager(our_service)(pg, rs.url(), tmp)
        if args.peer and args.baseline:
            parser.error("--peer and --baseline are exclusive")
        peer_cm = (
            contextmanager(peer_service)(args.peer.resolve(), pg, rs.url(), tmp)
            if args.peer
            else contextmanager(our_service)(
                pg, rs.url(), tmp, "base", args.baseline.resolve() / "src"
            )
            if args.baseline
            else _nothing()
        )
        with ours_cm as ours, peer_cm as peer:
            targets_ = [t for t in (ours, peer) if t is not None]
            tally = measure(
                targets_, scenarios, args.rounds, args.duration, tmp, paired=args.paired
            )
    other = "peer" if args.peer else "base" if args.baseline else None
    report(tally, scenarios, args.rounds, other=other)


if __name__ == "__main__":
    main()

"""Throughput and latency of the auth service (2 uvicorn workers) on loopback, with wrk.

    python bench/auth.py [--duration 8] [--runs 1] [--peer ../shared/peers/node-auth]

Starts a throwaway PostgreSQL and Redis (tests/servers.py), migrates, seeds a clinic and a
user at the default bcrypt cost (12), runs `atendeai auth serve --workers 2` and drives it
with wrk (bench/wrk/auth.lua; C, so it leaves CPU for the server) at 50 connections:
/health/live, /auth/verify, /auth/refresh (chained rotation), /auth/login at saturation, and
/auth/verify while 4 logins run. bcrypt's cost-12 hash time is measured in the same run, to
say what login rate the cores allow.

With --peer, the Node service there is copied to a temp dir, `npm ci`-ed, given its own
database on the same PostgreSQL and Redis, started with WORKERS=2 JWT_KEYOBJECT=1, and driven
by its own bench/wrk.lua with the same load, alternating with ours; ratios are ours/peer.
Everything is bounded: `--duration` seconds per scenario, `--runs` rounds. Figures are
printed, never asserted.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import PostgresServer, free_port, postgres_server, redis_server  # noqa: E402

OUR_LUA = ROOT / "bench" / "wrk" / "auth.lua"
CONNECTIONS = 50
EMAIL, PASSWORD = "bench@example.com", "correct horse battery staple"
APP_PASSWORD = "bench-app-password"
Result = dict[str, Any]


def wrk(
    url: str,
    lua: Path,
    env: dict[str, str],
    *,
    connections: int,
    duration: int,
    timeout: str = "5s",
) -> Result:
    threads = min(2, connections)
    proc = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            f"--timeout={timeout}",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: Result = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"wrk printed no RESULT line:\n{proc.stdout}\n{proc.stderr}")


def wait_ready(url: str, path: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}{path} did not become ready")


@contextmanager
def process(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[None]:
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
        yield
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
    """One service under test: how to make a token, refresh seeds, and which lua to use."""

    name: str
    url: str
    lua: Path
    token: Callable[[], str]
    seeds: Callable[[int], list[str]]
    health_path: str
    login_env: dict[str, str] = field(default_factory=dict)

    def run(self, mode: str, tmp: Path, duration: int, connections: int = CONNECTIONS) -> Result:
        env = {"MODE": mode, **self.login_env}
        timeout = "5s"
        if mode == "verify":
            env["TOKEN"] = self.token()
        elif mode == "health":
            env["HEALTH_PATH"] = self.health_path
        elif mode == "refresh":
            per_thread = 400
            seed_file = tmp / f"{self.name}-seeds-{uuid.uuid4().hex[:6]}.txt"
            seed_file.write_text("\n".join(self.seeds(2 * per_thread)) + "\n")
            env |= {"SEED_FILE": str(seed_file), "SEEDS_PER_THREAD": str(per_thread)}
        elif mode == "login":
            timeout = "30s"
        path = {"verify": "/auth/verify", "refresh": "/auth/refresh", "login": "/auth/login"}
        url = self.url + path.get(mode, self.health_path)
        return wrk(url, self.lua, env, connections=connections, duration=duration, timeout=timeout)

    def verify_under_logins(self, tmp: Path, duration: int) -> tuple[Result, Result]:
        """Logins from 4 connections saturate bcrypt while verify runs at 50 connections."""
        env = {"MODE": "login", **self.login_env}
        with tempfile.TemporaryFile("w+") as out:
            login = subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    "-c4",
                    f"-d{duration + 2}s",
                    "--timeout=30s",
                    "-s",
                    str(self.lua),
                    self.url + "/auth/login",
                ],
                env={**os.environ, **env},
                stdout=out,
                text=True,
            )
            time.sleep(1)
            verify = self.run("verify", tmp, duration)
            login.wait()
            out.seek(0)
            line = next(x for x in out.read().splitlines() if x.startswith("RESULT "))
        return verify, json.loads(line[len("RESULT ") :])


def our_service(pg: PostgresServer, redis_url: str, tmp: Path) -> Iterator[Target]:
    from atendeai_ctl.auth import clinics, ensure_signing_key, users
    from atendeai_ctl.auth.keys import KeyRing
    from atendeai_ctl.auth.settings import AuthSettings
    from atendeai_ctl.auth.tokens import refresh_token_hash
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
            from atendeai_ctl.auth.sessions import issue_token

            return issue_token(
                conn, ring, settings, clinic="bench", email=EMAIL, ttl_s=3600, actor="cli:bench"
            )[0]

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
    argv = [
        sys.executable,
        "-m",
        "atendeai_ctl",
        "auth",
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    with process(argv, env, ROOT, tmp / "ours.log"):
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health/ready")
        yield Target("ours", url, OUR_LUA, token, seeds, "/health/live")


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
    env = {"DATABASE_URL": db_url, "REDIS_URL": peer_redis, "EMAIL": EMAIL, "PASSWORD": PASSWORD}
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
    server_env = {
        **env,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WORKERS": "2",
        "JWT_KEYOBJECT": "1",
    }
    with process(["node", "server.js"], server_env, work, tmp / "peer.log"):
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health")
        yield Target(
            "peer",
            url,
            work / "bench" / "wrk.lua",
            token,
            seeds,
            "/health",
            {"EMAIL": EMAIL, "PASSWORD": PASSWORD},
        )


SCENARIOS = ["health", "verify", "refresh", "login", "verify_under_logins"]


def median_result(results: list[Result]) -> Result:
    keys = ("rps", "p50_ms", "p99_ms")
    merged = {k: statistics.median(r[k] for r in results) for k in keys}
    merged["non2xx"] = sum(r["non2xx"] for r in results)
    merged["errors"] = sum(r["sock_errors"] + r["timeouts"] for r in results)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per scenario")
    parser.add_argument("--runs", type=int, default=1, help="alternating rounds (medians)")
    parser.add_argument("--peer", type=Path, help="the Node peer service directory")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=SCENARIOS)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results: dict[tuple[str, str], list[Result]] = {}
    extra: dict[str, list[Result]] = {}
    bcrypt_samples: list[tuple[float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="atendeai-bench-") as tmp_name,
        postgres_server() as pg,
        redis_server() as rs,
    ):
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        ours_cm = contextmanager(our_service)(pg, rs.url(), tmp)
        peer_cm = (
            contextmanager(peer_service)(args.peer.resolve(), pg, rs.url(), tmp)
            if args.peer
            else _nothing()
        )
        with ours_cm as ours, peer_cm as peer:
            targets = [t for t in (ours, peer) if t is not None]
            for round_ in range(args.runs):
                for scenario in args.only:
                    for target in targets:
                        print(f"  round {round_ + 1} {scenario:<20} {target.name}", file=sys.stderr)
                        if scenario == "login":
                            bcrypt_samples.append(bcrypt_rate(cores))
                            result = target.run(scenario, tmp, args.duration, 16)
                            results.setdefault((target.name, scenario), []).append(result)
                            bcrypt_samples.append(bcrypt_rate(cores))
                        elif scenario == "verify_under_logins":
                            verify, login = target.verify_under_logins(tmp, args.duration)
                            results.setdefault((target.name, scenario), []).append(verify)
                            extra.setdefault(target.name, []).append(login)
                        else:
                            result = target.run(scenario, tmp, args.duration)
                            results.setdefault((target.name, scenario), []).append(result)
                        _progress(results[(target.name, scenario)][-1])
    report(results, extra, bcrypt_samples, cores, peer=args.peer is not None)


def _progress(result: Result) -> None:
    print(
        f"    {result['rps']:.1f} req/s  p50 {result['p50_ms']:.1f} ms"
        f"  p99 {result['p99_ms']:.1f} ms  non2xx {result['non2xx']}"
        f"  (load average {os.getloadavg()[0]:.2f})",
        file=sys.stderr,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def report(
    results: dict[tuple[str, str], list[Result]],
    extra: dict[str, list[Result]],
    bcrypt_samples: list[tuple[float, float]],
    cores: int,
    *,
    peer: bool,
) -> None:
    med = {key: median_result(value) for key, value in results.items()}
    print(f"\nauth service, 2 workers, {cores} cores, {CONNECTIONS} connections (login: 16)")
    header = f"{'scenario':<22}{'ours req/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'non2xx':>7}"
    if peer:
        header += f"{'peer req/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}"
    print(header)
    for scenario in SCENARIOS:
        ours = med.get(("ours", scenario))
        if ours is None:
            continue
        line = (
            f"{scenario:<22}{ours['rps']:>11.1f}{ours['p50_ms']:>8.1f}{ours['p99_ms']:>8.1f}"
            f"{ours['non2xx']:>7}"
        )
        other = med.get(("peer", scenario))
        if other is not None:
            ratio = ours["rps"] / other["rps"] if other["rps"] else float("inf")
            line += (
                f"{other['rps']:>12.1f}{other['p50_ms']:>8.1f}{other['p99_ms']:>8.1f}{ratio:>7.2f}"
            )
        print(line)
    for name, logins in extra.items():
        m = median_result(logins)
        print(f"  ({name}: logins/s during verify_under_logins {m['rps']:.1f})")
    if bcrypt_samples:
        per = statistics.median(s[0] for s in bcrypt_samples)
        allowed = statistics.median(s[1] for s in bcrypt_samples)
        print(
            f"bcrypt cost 12, {cores} threads, measured before and after each login run: "
            f"{per * 1000:.0f} ms per check per core -> {allowed:.2f} logins/s allowed"
        )
    print("\ntargets (measured here, not asserted):")
    checks = []
    if bcrypt_samples and ("ours", "login") in med:
        got = med[("ours", "login")]["rps"]
        checks.append((f"logins/s {got:.2f} >= 88% of {allowed:.2f}", got >= 0.88 * allowed))
    if ("ours", "verify") in med:
        v = med[("ours", "verify")]
        checks.append((f"verify {v['rps']:.0f} req/s >= 4500", v["rps"] >= 4500))
        checks.append((f"verify p99 {v['p99_ms']:.1f} ms < 50", v["p99_ms"] < 50))
        if ("peer", "verify") in med:
            p = med[("peer", "verify")]["rps"]
            checks.append((f"verify >= peer JWT_KEYOBJECT=1 ({p:.0f})", v["rps"] >= p))
    if ("ours", "refresh") in med:
        r = med[("ours", "refresh")]
        checks.append((f"refresh {r['rps']:.0f} req/s >= 900", r["rps"] >= 900))
        checks.append((f"refresh p99 {r['p99_ms']:.1f} ms < 100", r["p99_ms"] < 100))
    if ("ours", "verify_under_logins") in med:
        u = med[("ours", "verify_under_logins")]
        checks.append(
            (f"verify p99 while logins saturate {u['p99_ms']:.1f} ms < 50", u["p99_ms"] < 50)
        )
    for text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")


if __name__ == "__main__":
    main()

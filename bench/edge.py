"""The gateway's cost: `GET /auth/verify` through HAProxy against one auth replica direct.

    python bench/edge.py [--runtime docker|local] [--duration 8] [--rounds 3] [--connections 50]
                         [--tokens N] [--views shared,split]

Brings up one throwaway project with `atendeai up --profile edge` (Docker with the stand-in
images by default, or the local runtime's system haproxy and processes), seeds a clinic and a
user, logs in once, and drives four configurations with wrk (bench/wrk/auth.lua, MODE=verify,
one token) in the same run:

  direct   auth replica 1 on its published port, 1 replica running
  gw1      the gateway, 1 replica behind it
  bare     the peer: the same HAProxy (binary, or the gateway's image on Docker, published the
           same way) with a bare config (BARE_CFG: one frontend, one server, no rules, no log,
           no checks) in front of replica 1, started for its run only. It is the floor: what
           the extra hop costs on this machine with any HAProxy config, so `gw1/bare` is what
           the gateway's own work (routing, limit, ids, CORS, gzip filter, access log) costs
  gw2      the gateway, 2 replicas behind it (`up --scale auth=2`)

Between phases the project is scaled with `up --scale auth=N` and the bench waits until the
gateway's exporter counts N servers up (health-checked) and every replica answers. A warm-up
run of each configuration is discarded; then `--rounds` rounds alternate the order (direct,
gw1, bare, gw2; then gw2, bare, gw1, direct; ...). The gateway's outer limit is set far above
the load.

Two views of the cores (`--views`, both by default, one after the other):

  shared   every process may run on every core: wrk, the gateway and the replica compete, so
           throughput measures the CPU a request costs in all (the gateway's hop included)
  split    the auth replicas on the last core, everything else (wrk, the gateway, the peer,
           docker-proxy, the shims, the engine) on the others: how much of one replica's
           throughput survives the gateway when the gateway does not eat the replica's CPU,
           as on a host where they have cores of their own. On two cores the "others" are one
           core that wrk shares with all of that, so the split view can be limited by that
           core instead (its CPU figures show it)

Affinity is set per thread before every run (scaling starts new processes) and put back to
every core at the end, the engine's included.

The auth service limits requests per client address, and all load comes from 127.0.0.1:
the bench runs a copy of the project (compose/, configs/, migrations/) whose auth service gets
ATENDEAI_AUTH_REQUESTS_PER_IP=1000000000 (the limit still counts), with a bench-only auth
image tag on Docker (removed at the end).

Fairness: both sides are reached the same way, through the port the engine publishes on
127.0.0.1 (on Docker that is docker-proxy for the replica and for the gateway alike), by the
same wrk command (threads, connections, duration, script, token); only the URL differs.

A second view, `--tokens N`: one token on every request is the verifier's best case (its
cache answers after the first request, so the gateway's share looks large). With `--tokens N`
every configuration of every round is also run over a pool of N distinct tokens (verify_miss
in bench/auth.py), and the medians and ratios of those runs are printed apart. The pool is made
once, through the auth service as a client would get them: a few logins, then a chain of
refreshes each (every refresh hands out a new access token, without a bcrypt hash). Each wrk
thread walks its slice of the pool in order, and every run continues where the previous one
stopped (bench/wrk/auth.lua TOKEN_START), so no token is sent twice until N requests have been
sent in all; `fresh` is the share of a run's requests whose token was never sent before (certain
cache misses). A repeat is a miss too when the worker that gets it has cached 8192 other tokens
since (its cache is cleared when full): with N at least 4 x 8192 (bench/auth.py's pool) that
holds for the auth service's 2 workers per replica; a smaller N prints a warning.

Requests/s counts 2xx only; non-2xx, socket errors and timeouts are printed for every run and
a configuration with any of them gets no ratio. Prints every run with the load average, the
medians, and the ratios against direct (target: gw1 >= 0.8x direct). Figures, never
assertions.

CPU per request: on a machine shared with other work, requests/s swings with the neighbours'
load while the CPU each request costs barely does, so every run also prints the CPU time
(microseconds per 2xx response) of what serves it: the auth replicas and the gateway (their
processes and children; on Docker the containers' processes), the docker-proxy processes of
their published ports and their containerd shims (which carry their stdout), and wrk itself.
The engine (dockerd, which writes the containers' logs) is shared with every other project on
it, so its figure is printed apart as `engine*` and left out of the total; read it only on a
quiet machine. On two cores the requests/s a side can reach is roughly 2 s / (its CPU per
request), so `cpu ratio` (direct's total over the gateway's) is what the throughput ratio
would be on an otherwise idle machine.

Everything it creates is removed at the end (`down --volumes`, then a sweep by label on
Docker), also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from auth import POOL_SIZE, WRK_THREADS, Result, errors_of, wait_ready, wrk  # noqa: E402

from tests.servers import free_port  # noqa: E402

CONFIGS = ["direct", "gw1", "bare", "gw2"]
REPLICAS = {"direct": 1, "gw1": 1, "bare": 1, "gw2": 2}
VIEWS = {
    "shared": "every process on every core",
    "split": "auth replicas on their own core, everything else on the others",
}
# The peer: the same HAProxy with nothing but a proxy in it (no rules, no log, no checks),
# in front of replica 1. What any HAProxy gateway costs on this machine, whatever its config.
BARE_CFG = """global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bare
    bind {bind}
    default_backend auth
backend auth
    server auth1 {server}
"""
EMAIL, PASSWORD = "bench@alpha.test", "correct horse battery staple 42"
NO_ENGINE = "unix:///nonexistent.sock"


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


Cpu = dict[str, float]  # component -> CPU seconds used so far
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of all its threads) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def _with_descendants(roots: dict[int, str]) -> dict[int, str]:
    """Every process under the given ones (uvicorn's workers, haproxy's worker)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _proc_cpu(int(entry.name))) is not None:
            parents[int(entry.name)] = found[0]
    owned = dict(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if pid not in owned and parent in owned:
                owned[pid] = owned[parent]
                grew = True
    return owned


def project_copy(source: Path, dest: Path) -> None:
    """The project without the per-address request limit of the auth service."""
    for sub in ("compose", "migrations", "configs"):
        shutil.copytree(source / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(source / "alembic.ini", dest / "alembic.ini")
    compose = dest / "compose" / "docker-compose.yml"
    spec = yaml.safe_load(compose.read_text())
    spec["services"]["auth"]["environment"]["ATENDEAI_AUTH_REQUESTS_PER_IP"] = "1000000000"
    # Pool tokens are made before the first run and must outlive the whole bench.
    spec["services"]["auth"]["environment"]["ATENDEAI_AUTH_ACCESS_TTL"] = "7200"
    compose.write_text(yaml.safe_dump(spec, sort_keys=False))


class Stack:
    """One project driven through the real CLI, as an operator would."""

    def __init__(self, runtime: str, state: Path) -> None:
        self.runtime = runtime
        self.name = f"bedge{uuid.uuid4().hex[:8]}"
        project_copy(ROOT, state / "project")
        self.env = {
            "ATENDEAI_PROJECT": self.name,
            "ATENDEAI_PROJECT_DIR": str(state / "project"),
            "ATENDEAI_STATE_DIR": str(state / "state"),
            "ATENDEAI_RUNTIME": runtime,
            "ATENDEAI_POSTGRES_PORT": str(free_port()),
            "ATENDEAI_REDIS_PORT": str(free_port()),
            "ATENDEAI_AUTH_PORT": str(free_port(2)),  # replica k publishes port + k - 1
            "ATENDEAI_GATEWAY_PORT": str(free_port()),
            "ATENDEAI_GATEWAY_METRICS_PORT": str(free_port()),
            "ATENDEAI_GATEWAY_ADMIN_PORT": str(free_port()),
            "ATENDEAI_GATEWAY_RATE_LIMIT": str(10**9),
            "ATENDEAI_TIMEOUT": "180",
        }
        if runtime == "docker":
            from tests.stack_helpers import image_env, unique_subnet

            self.env |= {"ATENDEAI_SUBNET": unique_subnet(), **image_env()}
            self.env["ATENDEAI_AUTH_IMAGE"] = f"atendeai-auth:bench-edge-{self.name}"
        else:
            self.env["DOCKER_HOST"] = NO_ENGINE
        self.bare_pids: list[int] = []

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
        done = subprocess.run(
            [sys.executable, "-m", "atendeai_ctl", *args],
            env={**env, **self.env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"atendeai {' '.join(args)} failed:\n{done.stderr}")
        return done

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.env['ATENDEAI_AUTH_PORT']}"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.env['ATENDEAI_GATEWAY_PORT']}"

    def metrics_url(self) -> str:
        if self.runtime == "local":
            return f"http://127.0.0.1:{self.env['ATENDEAI_GATEWAY_METRICS_PORT']}/metrics"
        import docker

        container = docker.from_env().containers.get(f"{self.name}-gateway-1")
        address = container.attrs["NetworkSettings"]["Networks"][f"{self.name}-network"]
        return f"http://{address['IPAddress']}:8405/metrics"

    def scale(self, replicas: int, token: str) -> None:
        """`up --scale auth=N`, then wait until the gateway's pool and every replica serve."""
        self.run("up", "--profile", "edge", "--scale", f"auth={replicas}")
        base = int(self.env["ATENDEAI_AUTH_PORT"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._active_servers() == replicas and all(
                _verifies(f"http://127.0.0.1:{base + k}", token) for k in range(replicas)
            ):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the gateway did not get {replicas} healthy auth servers")

    def _active_servers(self) -> int:
        try:
            text = httpx.get(self.metrics_url(), timeout=5).text
        except (httpx.HTTPError, KeyError):
            return -1
        for line in text.splitlines():
            if line.startswith('haproxy_backend_active_servers{proxy="auth"}'):
                return int(float(line.split()[-1]))
        return -1

    def serving_processes(self) -> dict[int, str]:
        """pid -> component for everything that serves a request: see the module docstring."""
        if self.runtime == "local":
            roots = {pid: "gateway" for pid in self.bare_pids}
            for record in Path(self.env["ATENDEAI_STATE_DIR"]).glob("**/local/run/*.json"):
                service = record.stem.split("-")[0]
                if service in ("auth", "gateway"):
                    roots[int(json.loads(record.read_text())["pid"])] = service
            return _with_descendants(roots)
        import docker

        client = docker.from_env()
        label = {"label": f"com.docker.compose.project={self.name}"}
        roots, ids, ports = {}, {}, set()
        for container in client.containers.list(filters=label):
            service = container.labels.get("com.docker.compose.service", "")
            service = "gateway" if service == "bare" else service
            if service not in ("auth", "gateway"):
                continue
            roots[int(container.attrs["State"]["Pid"])] = service
            ids[container.id] = service
            for bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).values():
                ports |= {b["HostPort"] for b in bindings or ()}
        owned = _with_descendants(roots)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            argv = _cmdline(int(entry.name))
            program = Path(argv[0]).name if argv else ""
            if program == "docker-proxy" and "-host-port" in argv:
                if argv[argv.index("-host-port") + 1] in ports:
                    owned[int(entry.name)] = "proxy"
            elif program.startswith("containerd-shim") and "-id" in argv:
                owned |= {int(entry.name): "shim"} if argv[argv.index("-id") + 1] in ids else {}
        # This engine's daemon (not another one's, e.g. a Docker-in-Docker node).
        with contextlib.suppress(OSError, ValueError):
            owned[int(Path("/var/run/docker.pid").read_text())] = "engine*"
        return owned

    @contextmanager
    def bare(self) -> Iterator[str]:
        """The peer (BARE_CFG) for one run: its URL, on 127.0.0.1 like the others (on Docker
        a container of the gateway's image on the project's network, published by the
        engine, so docker-proxy is on its path too)."""
        port = free_port()
        cfg = Path(self.env["ATENDEAI_STATE_DIR"]) / "bare.cfg"
        stop: Callable[[], object]
        if self.runtime == "local":
            server = self.direct.removeprefix("http://")
            cfg.write_text(BARE_CFG.format(bind=f"127.0.0.1:{port}", server=server))
            proc = subprocess.Popen([shutil.which("haproxy") or "haproxy", "-f", str(cfg)])
            self.bare_pids = [proc.pid]

            def stop() -> None:
                self.bare_pids = []
                proc.terminate()
                proc.wait(10)
        else:
            import docker

            cfg.write_text(BARE_CFG.format(bind=":8080", server=f"{self.name}-auth-1:3001"))
            container = docker.from_env().containers.run(
                self.env.get("ATENDEAI_HAPROXY_IMAGE", "haproxy:2.8"),
                detach=True,
                name=f"{self.name}-bare",
                network=f"{self.name}-network",
                ports={"8080/tcp": ("127.0.0.1", port)},
                volumes={str(cfg): {"bind": "/usr/local/etc/haproxy/haproxy.cfg", "mode": "ro"}},
                labels={
                    "com.docker.compose.project": self.name,
                    "com.docker.compose.service": "bare",
                },
            )
            stop = functools.partial(container.remove, force=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, "/health/live", 30)  # through the peer to the replica
            yield url
        finally:
            stop()

    def down(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
        subprocess.run(
            [sys.executable, "-m", "atendeai_ctl", "down", "--volumes", "--yes", "--no-backup"],
            env={**env, **self.env},
            capture_output=True,
            timeout=300,
            check=False,
        )
        if self.runtime == "docker":
            from tests.stack_helpers import remove_project

            remove_project(self.name)
            subprocess.run(["docker", "image", "rm", "-f", self.env["ATENDEAI_AUTH_IMAGE"]],
                           capture_output=True, check=False)  # fmt: skip


def _verifies(url: str, token: str) -> bool:
    try:
        got = httpx.get(url + "/auth/verify", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        return False
    return got.status_code == 200


@contextmanager
def stack(runtime: str) -> Iterator[tuple[Stack, str]]:
    state = Path(tempfile.mkdtemp(prefix="atendeai-bench-edge-"))
    project = Stack(runtime, state)
    try:
        project.run("up", "--profile", "edge", "--scale", "auth=1")
        project.run("clinic", "create", "Alpha", "--slug", "alpha")
        project.run("user", "create", EMAIL, "--clinic", "alpha", "--password-stdin",
                    stdin=PASSWORD + "\n")  # fmt: skip
        body = {"clinic": "alpha", "email": EMAIL, "password": PASSWORD}
        login = httpx.post(project.direct + "/auth/login", json=body, timeout=30)
        login.raise_for_status()
        yield project, str(login.json()["access_token"])
    finally:
        project.down()
        shutil.rmtree(state, ignore_errors=True)


def token_pool(url: str, count: int, chains: int = 8) -> list[str]:
    """`count` distinct access tokens of the bench user. One login per chain, then refreshes:
    each rotation returns a new access token (its own jti) for the price of a database write,
    where a login per token would cost a bcrypt hash each."""
    body = {"clinic": "alpha", "email": EMAIL, "password": PASSWORD}

    def chain(size: int) -> list[str]:
        with httpx.Client(base_url=url, timeout=30) as http:
            got = http.post("/auth/login", json=body)
            got.raise_for_status()
            tokens = [str(got.json()["access_token"])]
            refresh = str(got.json()["refresh_token"])
            while len(tokens) < size:
                got = http.post("/auth/refresh", json={"refresh_token": refresh})
                got.raise_for_status()
                tokens.append(str(got.json()["access_token"]))
                refresh = str(got.json()["refresh_token"])
        return tokens

    sizes = [count // chains + (1 if k < count % chains else 0) for k in range(chains)]
    with ThreadPoolExecutor(chains) as workers:
        tokens = list(itertools.chain.from_iterable(workers.map(chain, [s for s in sizes if s])))
    if len(set(tokens)) != count:
        raise RuntimeError(f"the token pool has {len(set(tokens))} distinct tokens, not {count}")
    return tokens


class Pool:
    """The `--tokens` pool and how far the walk has gone: runs continue it (TOKEN_START)."""

    def __init__(self, path: Path, tokens: list[str], threads: int) -> None:
        path.write_text("\n".join(tokens) + "\n")
        self.path, self.size, self.threads = path, len(tokens), threads
        self.sent = 0

    def env(self) -> dict[str, str]:
        return {
            "MODE": "verify",
            "TOKEN_FILE": str(self.path),
            "TOKENS_PER_THREAD": str(self.size // self.threads),
            "TOKEN_START": str(self.sent // self.threads),
        }

    def advance(self, requests: int) -> float:
        """Count a run's requests; the share of them whose token had never been sent."""
        fresh = max(0, min(requests, self.size - self.sent))
        self.sent += requests
        return fresh / max(1, requests)


def cpu_of(processes: dict[int, str]) -> Cpu:
    used: Cpu = {}
    for pid, component in processes.items():
        if (found := _proc_cpu(pid)) is not None:
            used[component] = used.get(component, 0.0) + found[1]
    return used


ALL_CORES = frozenset(os.sched_getaffinity(0))


def pin(processes: dict[int, str], view: str) -> None:
    """Sets where every serving process (and wrk, a child of this one) may run: anywhere in
    the shared view; in the split view the auth replicas on the last core and the rest (the
    gateway, the peer, docker-proxy, shims, the engine, wrk) on the others. Set again before
    every run: scaling starts new replicas."""
    cores = sorted(ALL_CORES)
    everywhere, replicas, others = set(ALL_CORES), {cores[-1]}, set(cores[:-1])
    for pid, component in processes.items():
        where = everywhere if view == "shared" else replicas if component == "auth" else others
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), where)
    os.sched_setaffinity(0, everywhere if view == "shared" else others)


def measure(
    project: Stack,
    url: str,
    token: str,
    args: argparse.Namespace,
    view: str,
    pool: Pool | None = None,
) -> Result:
    """One wrk run (one token, or the pool's next stretch); the result gains `cpu_us`: CPU
    microseconds per 2xx response, by component (`total` leaves out the shared engine)."""
    processes = project.serving_processes()
    pin(processes, view)
    env = pool.env() if pool is not None else {"MODE": "verify", "TOKEN": token}
    before, children = cpu_of(processes), os.times()
    result = wrk(url, env, connections=args.connections, duration=args.duration, timeout="5s")
    if pool is not None:
        result["fresh"] = pool.advance(int(result["requests"]))
    after, children_after = cpu_of(processes), os.times()
    used = {c: after[c] - before.get(c, 0.0) for c in after}
    used["wrk"] = (children_after.children_user + children_after.children_system) - (
        children.children_user + children.children_system
    )
    ok = max(1, int(result.get("ok", 0)) or round(result["ok_rps"] * args.duration))
    cpu_us = {c: seconds * 1e6 / ok for c, seconds in used.items()}
    cpu_us["total"] = sum(v for c, v in cpu_us.items() if not c.endswith("*"))
    result["cpu_us"] = cpu_us
    return result


def order(round_index: int) -> list[str]:
    return CONFIGS if round_index % 2 == 0 else list(reversed(CONFIGS))


def describe(config: str, result: Result) -> str:
    errors = errors_of(result)
    return (
        f"{config:7} {result['ok_rps']:9.1f} req/s  p50 {result['p50_ms']:6.2f} ms"
        f"  p99 {result['p99_ms']:7.2f} ms  errors {errors}"
        + (
            f" (non2xx {result['non2xx']}, connect {result['connect_errors']}, read "
            f"{result['read_errors']}, write {result['write_errors']}, timeouts "
            f"{result['timeouts']})"
            if errors
            else ""
        )
        + (f"  fresh {result['fresh']:.0%}" if "fresh" in result else "")
        + "\n          cpu us/req "
        + " ".join(f"{c} {v:.0f}" for c, v in sorted(result["cpu_us"].items(), key=_cpu_order))
    )


def _cpu_order(item: tuple[str, float]) -> tuple[int, str]:
    component = item[0]
    return (2 if component == "total" else 1 if component.endswith("*") else 0, component)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["docker", "local"], default="docker")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--tokens", type=int, default=0, metavar="N",
        help="also run every configuration over a pool of N distinct tokens (cache misses)",
    )  # fmt: skip
    parser.add_argument(
        "--views", default="shared,split", help="core views to run, comma-separated: shared, split"
    )
    args = parser.parse_args()
    views = [v for v in args.views.split(",") if v]
    if shutil.which("wrk") is None:
        sys.exit("bench/edge.py needs wrk (apt-get install wrk)")
    if not views or set(views) - set(VIEWS):
        sys.exit(f"--views takes {', '.join(VIEWS)} (comma-separated)")
    if "split" in views and len(ALL_CORES) < 2:
        sys.exit("the split view needs at least two cores")
    threads = min(WRK_THREADS, args.connections)
    if args.tokens and args.tokens < threads:
        sys.exit(f"--tokens needs at least {threads} tokens (one slice per wrk thread)")
    runs = {view: {c: [] for c in CONFIGS} for view in views}
    misses = {view: {c: [] for c in CONFIGS} for view in views}
    with stack(args.runtime) as (project, token):
        pool = None
        if args.tokens:
            started = time.monotonic()
            tokens = token_pool(project.direct, args.tokens)
            pool = Pool(Path(project.env["ATENDEAI_STATE_DIR"]) / "pool.txt", tokens, threads)
            print(f"pool of {args.tokens} distinct tokens made in "
                  f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
            if args.tokens < POOL_SIZE:
                print(f"warning: --tokens below {POOL_SIZE}: once `fresh` drops below 100%, "
                      "some requests may be answered from the verifier's cache")  # fmt: skip
        tokens_view = "one token" + (f", then {args.tokens} distinct tokens (miss)" if pool else "")
        print(f"runtime {args.runtime}, {len(ALL_CORES)} cores, {args.connections} connections,"
              f" {args.duration:.0f} s per run, verify with {tokens_view}; load {load()}",
              flush=True)  # fmt: skip
        replicas = 1
        try:
            for view in views:
                print(f"view {view}: {VIEWS[view]}", flush=True)
                for round_index in range(args.rounds + 1):
                    label = "warm-up (discarded)" if round_index == 0 else f"round {round_index}"
                    print(f"{label}: {' '.join(order(round_index))}", flush=True)
                    for config in order(round_index):
                        if REPLICAS[config] != replicas:
                            replicas = REPLICAS[config]
                            project.scale(replicas, token)
                        with contextlib.ExitStack() as peer:
                            url = project.direct if config == "direct" else project.gateway
                            if config == "bare":
                                url = peer.enter_context(project.bare())
                            for tokens in (None, pool) if pool is not None else (None,):
                                result = measure(project, url, token, args, view, tokens)
                                name = config + (" miss" if tokens is not None else "")
                                print(f"  {describe(name, result)}  load {load()}", flush=True)
                                if round_index:
                                    (runs if tokens is None else misses)[view][config].append(
                                        result
                                    )
        finally:
            pin(project.serving_processes(), "shared")
    for view in views:
        report(runs[view], f"medians, {view} cores (one token):")
        if pool is not None:
            # The second view: figures only, the target is the one-token figure.
            report(misses[view], f"medians, {view} cores ({args.tokens} distinct tokens, "
                   "cache misses):", target=False)  # fmt: skip


def report(runs: dict[str, list[Result]], title: str, target: bool = True) -> None:
    medians: dict[str, dict[str, Any]] = {}
    print(title)
    for config, results in runs.items():
        errors = sum(errors_of(r) for r in results)
        medians[config] = {
            "rps": statistics.median(r["ok_rps"] for r in results),
            "p99": statistics.median(r["p99_ms"] for r in results),
            "errors": errors,
            "cpu_us": {
                c: round(statistics.median(r["cpu_us"].get(c, 0.0) for r in results), 1)
                for c in results[0]["cpu_us"]
            },
        }
        m = medians[config]
        print(f"  {config:7} {m['rps']:9.1f} req/s  p99 {m['p99']:7.2f} ms  errors {errors}"
              f"  cpu {m['cpu_us']['total']:.0f} us/req")  # fmt: skip
    direct = medians["direct"]
    for config in ("gw1", "bare", "gw2"):
        m = medians[config]
        if m["errors"] or direct["errors"]:
            print(f"  {config}/direct: no ratio (errors in a measured run)")
            continue
        rps, p99 = m["rps"] / direct["rps"], m["p99"] / direct["p99"]
        cpu = direct["cpu_us"]["total"] / m["cpu_us"]["total"]
        verdict = ""
        if config == "gw1" and target:
            verdict = "  target >= 0.80: " + ("met" if rps >= 0.8 else "NOT met")
        elif config == "bare":
            verdict = "  (the peer: a bare HAProxy, no rules, no log)"
        print(f"  {config}/direct: throughput {rps:.2f}x, p99 {p99:.2f}x, "
              f"cpu ratio {cpu:.2f}x{verdict}")  # fmt: skip
    gateway, bare = medians["gw1"], medians["bare"]
    if not gateway["errors"] and not bare["errors"]:
        print(f"  gw1/bare: throughput {gateway['rps'] / bare['rps']:.2f}x, cpu ratio "
              f"{bare['cpu_us']['total'] / gateway['cpu_us']['total']:.2f}x"
              "  (what the gateway's own work costs beyond the hop)")  # fmt: skip
    print(json.dumps({"view": title, "medians": medians, "load": load()}))


if __name__ == "__main__":
    main()

"""The edge and monitoring profiles without Docker: system haproxy, prometheus and exporters.

One stack (`up --runtime local --profile edge,monitoring --scale auth=2`) is taken through the
gateway's promises: login, CORS, gzip, the outer 429, forged X-Forwarded-For, both replicas in
the health-checked pool; Prometheus scrapes every target; then `down`. Clients bind other
loopback addresses (127.0.0.2, .3...) so the gateway sees distinct real clients: what the
auth service records then tells a trusted gateway (127.0.0.2) from a gateway it ignores
(127.0.0.1, its own source) or a forged header.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from atendeai_ctl.config import load_config
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack import local_binaries, processes
from atendeai_ctl.stack.project import load_stack
from atendeai_ctl.stack.spec import Service
from tests.servers import free_port
from tests.stack_helpers import Project, admin_url, new_project, secrets

HAPROXY = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
NO_ENGINE = "unix:///nonexistent.sock"
ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "haproxy" / "haproxy.cfg"
ORIGIN = "https://app.clinic.test"
PASSWORD = "correct horse battery staple 42"
RATE_LIMIT = 100

NO_HAPROXY = "needs haproxy (apt-get install haproxy)"
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason=NO_HAPROXY)


def local_edge_project(base: Path, **extra: str) -> Project:
    return new_project(
        base,
        prefix="e",
        images=False,
        DOCKER_HOST=NO_ENGINE,
        ATENDEAI_RUNTIME="local",
        ATENDEAI_AUTH_PORT=str(free_port(2)),
        ATENDEAI_GATEWAY_PORT=str(free_port()),
        ATENDEAI_GATEWAY_METRICS_PORT=str(free_port()),
        ATENDEAI_GATEWAY_ADMIN_PORT=str(free_port()),
        ATENDEAI_PROMETHEUS_PORT=str(free_port()),
        ATENDEAI_POSTGRES_EXPORTER_PORT=str(free_port()),
        ATENDEAI_REDIS_EXPORTER_PORT=str(free_port()),
        **{
            "ATENDEAI_CORS_ORIGINS": f"https://other.test,{ORIGIN}",
            "ATENDEAI_GATEWAY_RATE_LIMIT": str(RATE_LIMIT),
            **extra,
        },
    )


def kill_leftovers(project: Project) -> None:
    """Whatever `down` left (a test failed half-way) is killed by its recorded pid."""
    project.run("down", "--volumes", "--yes", "--no-backup")
    records = processes.Records(project.state_dir / project.name / "local" / "run")
    for name in records.names():
        record = records.load(name)
        if record is not None:
            processes.stop(record, signal.SIGKILL, 1.0)


def cli(project: Project, *args: str, stdin: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(project.env)
    done = subprocess.run([sys.executable, "-m", "atendeai_ctl", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def edge() -> Iterator[Project]:
    if HAPROXY is None:
        pytest.skip(NO_HAPROXY)
    # Outside pytest's tmp dirs: a concurrent session resets them to 0700, which would lock
    # the unprivileged PostgreSQL user out (as in test_local_runtime.py).
    base = Path(tempfile.mkdtemp(prefix="atendeai-local-edge-"))
    project = local_edge_project(base)
    try:
        done = project.run("up", "--profile", "edge,monitoring", "--scale", "auth=2")
        assert done.returncode == 0, done.stdout + done.stderr
        cli(project, "clinic", "create", "Alpha", "--slug", "alpha")
        cli(project, "user", "create", "ana@alpha.test", "--clinic", "alpha",
            "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        yield project
    finally:
        kill_leftovers(project)
        shutil.rmtree(base, ignore_errors=True)


def gateway(project: Project, client_address: str = "127.0.0.1") -> httpx.Client:
    """A client of the gateway from `client_address` (any 127/8 address is ours on Linux)."""
    return httpx.Client(
        base_url=f"http://127.0.0.1:{project.env['ATENDEAI_GATEWAY_PORT']}",
        transport=httpx.HTTPTransport(local_address=client_address),
        timeout=15,
    )


def login(http: httpx.Client, email: str = "ana@alpha.test", **headers: str) -> httpx.Response:
    body = {"clinic": "alpha", "email": email, "password": PASSWORD}
    return http.post("/auth/login", json=body, headers=headers)


def services(project: Project) -> dict[str, dict[str, object]]:
    return {s["name"]: s for s in project.json("status")["services"]}


@pytest.mark.local
def test_login_through_the_local_gateway_anything_else_json_404(edge: Project) -> None:
    with gateway(edge) as http:
        done = login(http)
        assert done.status_code == 200, done.text
        token = done.json()["access_token"]
        verified = http.get("/auth/verify", headers={"Authorization": f"Bearer {token}"})
        assert verified.status_code == 200
        assert http.get("/.well-known/jwks.json").json()["keys"]
        missing = http.get("/health/ready")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    status = edge.json("status")
    assert status["runtime"] == "local"
    gateway_row = services(edge)["gateway"]
    assert gateway_row["health"] == "healthy"
    exe = os.readlink(f"/proc/{gateway_row['id']}/exe")
    assert Path(exe).name == "haproxy"


@pytest.mark.local
def test_both_replicas_are_in_the_health_checked_pool(edge: Project) -> None:
    """The exporter (the internal frontend, on its own loopback port) counts two auth servers
    up by the active /health/ready check, and requests reach both."""
    url = f"http://127.0.0.1:{edge.env['ATENDEAI_GATEWAY_METRICS_PORT']}/metrics"
    metrics = httpx.get(url, timeout=10).text
    active = [line for line in metrics.splitlines()
              if line.startswith('haproxy_backend_active_servers{proxy="auth"}')]  # fmt: skip
    assert active and active[0].split()[-1] == "2", active
    with gateway(edge, "127.0.0.4") as http:
        for _ in range(20):
            assert http.get("/.well-known/jwks.json").status_code == 200
    log = edge.run("logs", "gateway").stdout.splitlines()
    used = {json.loads(line)["server"] for line in log if line.startswith("{")}
    assert {"auth1", "auth2"} <= used, used
    # The runtime API (what rollouts drain replicas through) on its own loopback port.
    with socket.create_connection(("127.0.0.1", int(edge.env["ATENDEAI_GATEWAY_ADMIN_PORT"]))) as s:
        s.sendall(b"show servers state auth\n")
        state = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    assert " auth1 " in state and " auth2 " in state, state
    # A third slot, empty (so not counted active above) until `rollout` starts its spare there.
    assert " auth3 " in state and " auth4 " not in state, state


@pytest.mark.local
def test_prometheus_scrapes_every_target_locally(edge: Project) -> None:
    """Both auth replicas directly, the gateway's exporter, both exporters and itself, all up
    within 30 s; the exporters reach PostgreSQL (as atendeai_monitor) and Redis."""
    url = f"http://127.0.0.1:{edge.env['ATENDEAI_PROMETHEUS_PORT']}/api/v1"
    auth = int(edge.env["ATENDEAI_AUTH_PORT"])
    wanted = {
        ("auth", f"127.0.0.1:{auth}"), ("auth", f"127.0.0.1:{auth + 1}"),
        ("gateway", f"127.0.0.1:{edge.env['ATENDEAI_GATEWAY_METRICS_PORT']}"),
        ("postgres", f"127.0.0.1:{edge.env['ATENDEAI_POSTGRES_EXPORTER_PORT']}"),
        ("redis", f"127.0.0.1:{edge.env['ATENDEAI_REDIS_EXPORTER_PORT']}"),
        ("prometheus", f"127.0.0.1:{edge.env['ATENDEAI_PROMETHEUS_PORT']}"),
    }  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        targets = httpx.get(f"{url}/targets", timeout=10).json()["data"]["activeTargets"]
        up = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets if t["health"] == "up"}
        if wanted <= up or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= up, (wanted - up, targets)
    for query in ("pg_up", "redis_up"):
        result = httpx.get(f"{url}/query", params={"query": query}, timeout=10).json()
        assert [r["value"][1] for r in result["data"]["result"]] == ["1"], (query, result)


@pytest.mark.local
def test_cors_preflight_allowed_and_refused_origins(edge: Project) -> None:
    ask = {"Access-Control-Request-Method": "POST"}
    with gateway(edge) as http:
        allowed = http.options("/auth/login", headers={"Origin": ORIGIN, **ask})
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        refused = http.options("/auth/login", headers={"Origin": "https://evil.test", **ask})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        plain = http.get("/.well-known/jwks.json", headers={"Origin": ORIGIN})
        assert plain.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.local
def test_json_is_gzipped(edge: Project) -> None:
    url = f"http://127.0.0.1:{edge.env['ATENDEAI_GATEWAY_PORT']}/.well-known/jwks.json"
    with httpx.Client() as http, http.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["keys"]


@pytest.mark.local
def test_forged_forwarded_for_spray_is_limited_per_real_client(edge: Project) -> None:
    """From 127.0.0.2, each attempt forging another X-Forwarded-For: auth's per-address limit
    (50 failures) still trips, and the audit rows name 127.0.0.2: not a forged address (auth
    would, trusting anyone), nor 127.0.0.1 (the gateway's own, if auth trusted nobody)."""
    with gateway(edge, "127.0.0.2") as http:
        codes = [
            login(
                http, f"nobody{i}@alpha.test", **{"X-Forwarded-For": f"203.0.113.{i}"}
            ).status_code
            for i in range(60)
        ]
    assert 429 in codes, codes
    assert codes.index(429) <= 51
    with psycopg.connect(admin_url(edge)) as conn:
        ips = {row[0] for row in conn.execute(
            "SELECT host(ip) FROM atendeai.audit_log WHERE action = 'login'"
            " AND host(ip) <> '127.0.0.1'"
        )}  # fmt: skip
    assert ips == {"127.0.0.2"}, ips


@pytest.mark.local
def test_outer_limit_answers_429_with_retry_after(edge: Project) -> None:
    """A client address no other test used (127.0.0.3): the gateway's own limit, not auth's."""
    with gateway(edge, "127.0.0.3") as http:
        codes = [http.get("/.well-known/jwks.json").status_code for _ in range(RATE_LIMIT + 10)]
        refused = http.get("/.well-known/jwks.json")
    assert codes[: RATE_LIMIT - 5].count(200) == RATE_LIMIT - 5
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    assert refused.json()["error"] == "rate_limited"
    with gateway(edge, "127.0.0.5") as http:  # another client is not limited
        assert http.get("/.well-known/jwks.json").status_code == 200


@pytest.mark.local
def test_secrets_stay_off_the_gateway_and_auth_argv(edge: Project) -> None:
    secrets = (edge.state_dir / edge.name / "secrets.env").read_text()
    values = [line.split("=", 1)[1] for line in secrets.splitlines() if "=" in line]
    for name, row in services(edge).items():
        if row["state"] != "running":
            continue
        argv = Path(f"/proc/{row['id']}/cmdline").read_bytes().decode()
        assert not [v for v in values if v and v in argv], name


@pytest.mark.local
def test_down_stops_the_gateway(edge: Project) -> None:
    rows = services(edge)
    pids = [int(str(rows[name]["id"])) for name in ("gateway", "auth", "auth-2")]
    done = edge.run("down")
    assert done.returncode == 0, done.stderr
    for pid in pids:
        found = processes.proc_stat(pid)
        assert found is None or found.state in ("Z", "X"), pid
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(edge.env["ATENDEAI_GATEWAY_PORT"])))


def test_missing_haproxy_fails_before_anything_starts(tmp_path: Path) -> None:
    project = local_edge_project(tmp_path, ATENDEAI_HAPROXY_BIN="/nonexistent")
    done = project.run("up", "--profile", "edge")
    assert done.returncode == 4, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "apt-get install haproxy" in errors[0]
    assert "ATENDEAI_HAPROXY_BIN=/nonexistent" in errors[0]
    run = project.state_dir / project.name / "local" / "run"
    assert not list(run.glob("*.json")) if run.exists() else True


def test_every_missing_program_is_named_in_one_line(tmp_path: Path) -> None:
    project = local_edge_project(
        tmp_path, ATENDEAI_HAPROXY_BIN="/nonexistent", ATENDEAI_PROMETHEUS_BIN="/nonexistent"
    )
    done = project.run("up", "--profile", "edge", "--profile", "monitoring")
    assert done.returncode == 4, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "apt-get install haproxy prometheus" in errors[0], errors
    run = project.state_dir / project.name / "local" / "run"
    assert not list(run.glob("*.json")) if run.exists() else True


@pytest.mark.parametrize(("profiles", "trusted"), [("edge", "127.0.0.1"), ("", "")])
def test_local_auth_trusts_loopback_only_with_the_edge(
    tmp_path: Path, profiles: str, trusted: str
) -> None:
    """The local auth's ATENDEAI_AUTH_TRUSTED_PROXIES follows the derived setting: the local
    gateway's address (loopback) while edge is active, nobody otherwise."""
    environ = {"ATENDEAI_PROJECT_DIR": str(ROOT), "ATENDEAI_STATE_DIR": str(tmp_path),
               "ATENDEAI_PROJECT": "p", "ATENDEAI_PROFILES": profiles}  # fmt: skip
    config = load_config(environ=environ).with_secrets(generate=True)
    local = load_stack(config).services["auth"].extensions["x-atendeai"]["local"]
    assert local["environment"]["ATENDEAI_AUTH_TRUSTED_PROXIES"] == trusted


@needs_haproxy
@pytest.mark.parametrize("runtime", ["docker", "local"])
def test_one_haproxy_cfg_passes_the_check_for_both_runtimes(runtime: str) -> None:
    """The file the image and the system haproxy read, with each runtime's environment; the
    local one has static servers, the Docker one the DNS template (both named auth<n>)."""
    assert HAPROXY is not None
    env = {"PATH": os.defpath, "GATEWAY_RATE_LIMIT": "5", "CORS_ORIGINS": ORIGIN}
    if runtime == "local":
        env |= {"GATEWAY_BIND": "127.0.0.1:1", "GATEWAY_INTERNAL_BIND": "127.0.0.1:2",
                "AUTH_SERVER_1": "127.0.0.1:3", "AUTH_SERVER_2": "127.0.0.1:4"}  # fmt: skip
    done = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    resolve_warnings = "could not resolve address 'auth'" in done.stderr
    assert resolve_warnings == (runtime == "docker"), done.stderr


def until(seconds: float, condition: Callable[[], bool]) -> None:
    """Poll `condition` (an error counts as not yet) until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, redis.RedisError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s (last error: {last})")


@pytest.mark.local
def test_local_ha_failover_and_the_old_primary_returns_as_a_replica() -> None:
    """`--profile ha` locally: redis-replica and three Sentinels from the same redis-server.
    The primary killed, the Sentinels promote the replica and auth answers again through
    them; the next `up` brings the old primary back as a replica of the new one (it needs
    masterauth for that)."""
    base = Path(tempfile.mkdtemp(prefix="atendeai-local-ha-"))
    sentinel_ports = {f"ATENDEAI_REDIS_SENTINEL_PORT_{n}": str(free_port()) for n in (1, 2, 3)}
    project = new_project(base, prefix="h", images=False, DOCKER_HOST=NO_ENGINE,
                          ATENDEAI_RUNTIME="local", ATENDEAI_REDIS_REPLICA_PORT=str(free_port()),
                          **sentinel_ports)  # fmt: skip
    try:
        done = project.run("up", "--profile", "ha")
        assert done.returncode == 0, done.stdout + done.stderr
        password = secrets(project)["ATENDEAI_REDIS_PASSWORD"]
        primary = int(project.env["ATENDEAI_REDIS_PORT"])
        replica = int(project.env["ATENDEAI_REDIS_REPLICA_PORT"])
        sentinel = redis.Redis(port=int(sentinel_ports["ATENDEAI_REDIS_SENTINEL_PORT_1"]),
                               password=password, decode_responses=True)  # fmt: skip
        assert sentinel.sentinel_get_master_addr_by_name("atendeai") == ("127.0.0.1", primary)
        auth_pid = int(str(services(project)["auth"]["id"]))
        environ = Path(f"/proc/{auth_pid}/environ").read_bytes().split(b"\0")
        assert any(e.startswith(b"ATENDEAI_REDIS_SENTINELS=127.0.0.1:") for e in environ)
        # Sentinels learn of replicas from the primary's INFO (every 10 s): a kill before that
        # has no replica to promote. Every Sentinel must know it, and know the others.
        for key in sentinel_ports.values():
            one = redis.Redis(port=int(key), password=password, decode_responses=True)
            until(30, lambda one=one: [r["port"] for r in one.sentinel_slaves("atendeai")
                                       if "disconnected" not in r["flags"]] == [replica]
                  and len(one.sentinel_sentinels("atendeai")) == 2)  # fmt: skip
        os.kill(int(str(services(project)["redis"]["id"])), signal.SIGKILL)
        # Generous bounds: the machine may be loaded; the drill measures the real timings.
        until(30, lambda: sentinel.sentinel_get_master_addr_by_name("atendeai")
              == ("127.0.0.1", replica))  # fmt: skip
        auth = f"http://127.0.0.1:{project.env['ATENDEAI_AUTH_PORT']}/health/ready"
        until(30, lambda: httpx.get(auth, timeout=5).status_code == 200)
        done = project.run("up", "--profile", "ha")
        assert done.returncode == 0, done.stderr
        old = redis.Redis(port=primary, password=password, decode_responses=True)
        until(60, lambda: old.info("replication").get("master_link_status") == "up")
        info = old.info("replication")
        assert info["role"] == "slave" and info["master_port"] == replica
    finally:
        kill_leftovers(project)
        shutil.rmtree(base, ignore_errors=True)


NAMES = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,12}\Z")
TEXT = st.text(alphabet=st.characters(exclude_characters="{}"), max_size=40)


@given(st.lists(st.tuples(TEXT, NAMES), max_size=5), TEXT, st.dictionaries(NAMES, TEXT))
def test_render_substitutes_every_placeholder_and_nothing_else(
    parts: list[tuple[str, str]], tail: str, values: dict[str, str]
) -> None:
    """What the compose file's local blocks carry (argv, config templates) renders exactly:
    known names are replaced, text without `{{...}}` is kept byte for byte, an unknown name
    is one AtendeaiError naming it (never an empty string in a password or an address)."""
    template = "".join(f"{text}{{{{{name}}}}}" for text, name in parts) + tail
    missing = [name for _, name in parts if name not in values]
    if missing:
        with pytest.raises(AtendeaiError) as raised:
            local_binaries.render(template, values, "here")
        assert "{{" + missing[0] + "}}" in raised.value.message
        return
    expected = "".join(text + values[name] for text, name in parts) + tail
    assert local_binaries.render(template, values, "here") == expected


BLOCK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from([*sorted(local_binaries.BLOCK_KEYS), "bogus"]),
                       BLOCK_VALUES, max_size=6))  # fmt: skip
def test_a_malformed_binary_block_is_one_invalid_error(block: dict[str, object]) -> None:
    """Any content in a service's x-atendeai.local block parses or is refused with one line
    naming the service and the key: never a traceback from deeper in `up`."""
    service = Service(name="svc", image="img")
    try:
        parsed = local_binaries.binary(service, {**block, "kind": "binary"})
    except AtendeaiError as exc:
        assert exc.code == "invalid" and exc.message.startswith("service svc: x-atendeai.local.")
        assert "\n" not in exc.message
    else:
        assert parsed.program and parsed.package


@needs_haproxy
def test_a_bad_gateway_setting_stops_the_start_with_the_config_line(tmp_path: Path) -> None:
    """The check the local runtime runs before starting haproxy: a rate limit that is not a
    number is one line naming haproxy.cfg and its line, and the whole output is in the log."""
    assert HAPROXY is not None
    env = {"GATEWAY_RATE_LIMIT": "abc", "CORS_ORIGINS": "", "AUTH_SERVER_1": "127.0.0.1:1"}
    log = tmp_path / "gateway.log"
    with pytest.raises(AtendeaiError) as raised:
        local_binaries.run_check((HAPROXY, "-c", "-f", str(CONFIG)), env, tmp_path, log, "gateway")
    message = raised.value.message
    assert message.startswith("haproxy refused the configuration of gateway: config : parsing")
    assert f"[{CONFIG}:" in message and "'abc'" in message and "\n" not in message
    assert "Error(s) found" in log.read_text()
    env["GATEWAY_RATE_LIMIT"] = "10"
    local_binaries.run_check((HAPROXY, "-c", "-f", str(CONFIG)), env, tmp_path, log, "gateway")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
def test_the_local_blocks_keep_the_file_readable_by_docker_compose(tmp_path: Path) -> None:
    """docker-compose 1.29 interpolates extension fields too, and knows no `${VAR:+alt}`:
    every x-atendeai.local block must stay within what it reads, with every profile on."""
    environ = {"ATENDEAI_PROJECT_DIR": str(ROOT), "ATENDEAI_STATE_DIR": str(tmp_path),
               "ATENDEAI_PROJECT": "p", "ATENDEAI_PROFILES": "all"}  # fmt: skip
    config = load_config(environ=environ).with_secrets(generate=True)
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in config.interpolation_env().items()
                                if k.startswith("ATENDEAI_")))  # fmt: skip
    done = subprocess.run(
        ["docker-compose", "-p", "p", "--env-file", str(env_file), "-f",
         str(ROOT / "compose" / "docker-compose.yml"), "--profile", "edge", "--profile",
         "monitoring", "--profile", "ha", "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.local
@needs_haproxy
def test_a_gateway_config_haproxy_refuses_never_starts(tmp_path: Path) -> None:
    """`up` runs `haproxy -c` on the gateway's configuration when it is created or changed,
    before anything of the gateway runs: a bad setting is one line naming haproxy.cfg's line."""
    base = Path(tempfile.mkdtemp(prefix="atendeai-local-edge-bad-"))
    project = local_edge_project(base, ATENDEAI_GATEWAY_RATE_LIMIT="abc")
    try:
        done = project.run("up", "--profile", "edge")
        assert done.returncode == 1, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, done.stderr
        assert "gateway" in errors[0] and "haproxy.cfg:" in errors[0] and "'abc'" in errors[0]
        run = project.state_dir / project.name / "local" / "run"
        assert not (run / "gateway.json").exists()
    finally:
        kill_leftovers(project)
        shutil.rmtree(base, ignore_errors=True)

"""Auth replicas without Docker (N processes on consecutive ports), rollouts, and the auth
service's graceful stop on SIGTERM, all with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.auth_helpers import PASSWORD, AuthDb
from tests.servers import free_port
from tests.stack_helpers import Project
from tests.test_local_runtime import force_cleanup, local_dir, local_project, running, scratch

SPAN = 4


@pytest.fixture(scope="module")
def stack() -> Iterator[Project]:
    with scratch() as base:
        project = local_project(base, ATENDEAI_AUTH_PORT=str(free_port(SPAN)))
        try:
            yield project
        finally:
            force_cleanup(project)


def _auth(project: Project) -> dict[str, dict[str, Any]]:
    done = project.run("status", "--json")
    assert done.stdout, done.stderr
    services = json.loads(done.stdout)["services"]
    return {s["name"]: s for s in services if s["service"] == "auth"}


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.local
def test_local_scale_1_to_3_to_2_consecutive_ports_highest_removed(stack: Project) -> None:
    base = int(stack.env["ATENDEAI_AUTH_PORT"])
    done = stack.run("up", "--scale", "auth=3")
    assert done.returncode == 0, done.stderr
    rows = _auth(stack)
    assert list(rows) == ["auth", "auth-2", "auth-3"]
    assert [r["ports"][0]["port"] for r in rows.values()] == [base, base + 1, base + 2]
    assert all(r["state"] == "running" for r in rows.values()), rows
    assert all(_ready(base + k) for k in range(3))
    records = sorted(p.name for p in (local_dir(stack) / "run").glob("auth*.json"))
    assert records == ["auth-2.json", "auth-3.json", "auth.json"]
    third = int(rows["auth-3"]["id"])

    done = stack.run("up", "--scale", "auth=2")
    assert done.returncode == 0, done.stderr
    rows = _auth(stack)
    assert list(rows) == ["auth", "auth-2"]
    assert not running(third)
    assert not _ready(base + 2)


@pytest.mark.local
def test_local_rollout_replaces_each_replica_on_its_port(stack: Project) -> None:
    base = int(stack.env["ATENDEAI_AUTH_PORT"])
    assert stack.run("up", "--scale", "auth=2").returncode == 0
    before = {name: int(r["id"]) for name, r in _auth(stack).items()}
    done = stack.run("rollout", "auth", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["runtime"] == "local"
    assert [r["replica"] for r in report["replaced"]] == [1, 2]
    after = _auth(stack)
    assert list(after) == ["auth", "auth-2"]  # the surge copy (auth-3) is gone again
    assert all(int(after[name]["id"]) != pid for name, pid in before.items())
    assert not any(running(pid) for pid in before.values())
    assert _ready(base) and _ready(base + 1) and not _ready(base + 2)


@pytest.mark.local
def test_local_rollout_to_a_broken_config_keeps_the_old_replicas(stack: Project) -> None:
    assert stack.run("up", "--scale", "auth=2").returncode == 0
    before = {name: int(r["id"]) for name, r in _auth(stack).items()}
    done = stack.run("rollout", "auth", "--json", extra_env={"ATENDEAI_AUTH_WORKERS": "0"})
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["failure"]["service"] == "auth-3" and report["replaced"] == []
    assert {name: int(r["id"]) for name, r in _auth(stack).items()} == before
    assert all(running(pid) for pid in before.values())


def _send_partial_login(port: int) -> tuple[socket.socket, bytes]:
    """A login whose body is only half sent: the request is in flight in a worker."""
    body = json.dumps({"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD})
    head = (
        f"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    half = len(body) // 2
    sock.sendall(head + body[:half].encode())
    return sock, body[half:].encode()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _refused(port: int) -> bool:
    """A new connection is refused or closed unanswered; one that hangs (taken by the kernel,
    never accepted) is not: a gateway would wait on it instead of trying another replica."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
            probe.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            return probe.recv(100) == b""
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_closes_pools(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any, state_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(
        ATENDEAI_STATE_DIR=str(state_dir),
        ATENDEAI_DATABASE_URL=auth_db.app_url,
        ATENDEAI_REDIS_URL=redis_url,
        ATENDEAI_JWT_KEYS_DIR=str(keys_dir),
        ATENDEAI_AUTH_BCRYPT_COST="10",
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "atendeai_ctl", "auth", "serve", "--port", str(port),
         "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        sock, rest = _send_partial_login(port)
        time.sleep(0.5)
        # What `docker stop` and the local runtime do: SIGTERM to the serving process only.
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused(port):  # no new connection is taken while the old one finishes
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.1)
        assert proc.poll() is None  # still running: the request is not answered yet
        sock.sendall(rest)
        answer = _read_response(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"access_token" in answer
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("started") == 2
    assert names.count("stopped") == 2, err  # each worker closed its pools
    assert names.index("login") < max(i for i, n in enumerate(names) if n == "stopped")


# Parsers and the replica rule (no processes) ---------------------------------------------

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr "
    "srv_agent_addr srv_agent_port"
)
SERVERS_STATE = (
    "1\n"
    + HEADER
    + """
3 auth 1 auth1 10.233.7.6 2 0 1 1 4 15 3 4 6 0 0 0 auth 3001 - 0 0 - - 0
3 auth 2 auth2 10.233.7.4 1 0 1 1 0 15 3 4 6 0 0 0 auth 3001 - 0 0 - - 0
3 auth 3 auth3 10.233.7.5 2 8 1 1 2 15 3 4 6 0 0 0 auth 3001 - 0 0 - - 0
3 auth 4 auth4 - 0 32 1 1 144 1 0 0 14 0 0 0 auth 3001 - 0 0 - - 0
"""
)  # what HAProxy 2.6.12 answered `show servers state auth` in this project's gateway
STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot
auth,auth1,0,0,3,5,,10
auth,auth2,0,0,0,0,,0
"""


def test_servers_state_as_haproxy_2_6_writes_it() -> None:
    from atendeai_ctl.stack.rollout import parse_servers_state, parse_sessions

    members = parse_servers_state(SERVERS_STATE)
    assert [(m.name, m.address, m.serving) for m in members] == [
        ("auth1", "10.233.7.6:3001", True),
        ("auth2", "10.233.7.4:3001", True),  # up, in its slow start
        ("auth3", "10.233.7.5:3001", False),  # draining
        ("auth4", "-:3001", False),  # no address (resolution maintenance)
    ]
    assert parse_sessions(STAT) == {"auth1": 3, "auth2": 0}


@given(st.text())
def test_runtime_api_parsers_never_raise(text: str) -> None:
    from atendeai_ctl.stack.rollout import parse_servers_state, parse_sessions

    parse_servers_state(text)
    parse_sessions(text)


@given(
    st.dictionaries(
        st.from_regex(r"\A[a-z][a-z0-9_-]{0,10}\Z"), st.integers(1, 10), min_size=1, max_size=4
    )
)
def test_scale_flags_round_trip(counts: dict[str, int]) -> None:
    from atendeai_ctl.stack.scale import parse_scale

    assert parse_scale(f"{name}={n}" for name, n in counts.items()) == counts


@given(st.text(max_size=20).filter(lambda t: not re.fullmatch(r"\s*[0-9]+\s*", t) or
                                   not 1 <= int(t) <= 10))  # fmt: skip
def test_a_bad_count_is_one_invalid_error(text: str) -> None:
    from atendeai_ctl.errors import AtendeaiError
    from atendeai_ctl.stack.scale import parse_scale, settings_scale

    with pytest.raises(AtendeaiError) as err:
        parse_scale([f"auth={text}"])
    assert err.value.code == "invalid"
    if text.strip():
        with pytest.raises(AtendeaiError):
            settings_scale({"ATENDEAI_AUTH_REPLICAS": text}.get)


@given(st.integers(1, 10), st.integers(1, 10), st.integers(1024, 60000))
def test_replica_k_publishes_base_plus_k_minus_1_and_keeps_its_hash(
    first: int, second: int, base: int
) -> None:
    from dataclasses import replace

    from atendeai_ctl.stack.spec import Port, Service

    service = Service("auth", "img", ports=(Port("127.0.0.1", base, 3001),))
    copy = service.instance(first)
    assert copy.ports[0].host_port == base + first - 1
    assert copy.instance(second) == service.instance(second)  # from any copy, the same rule
    assert copy.instance_name == ("auth" if first == 1 else f"auth-{first}")
    assert replace(service, replicas=second).config_hash() == service.config_hash()


def test_rollout_takes_the_project_lock_like_up(tmp_path: Path) -> None:
    """No stack needed: the lock comes before anything else, as for `up`."""
    from tests.stack_helpers import new_project
    from tests.test_stack_lock import Holder

    project = new_project(tmp_path, images=False)
    holder = Holder(project, 30)
    try:
        done = project.run("rollout", "auth", "--no-wait")
        assert done.returncode == 5, done.stderr
        assert f"another atendeai command is changing project {project.name}" in done.stderr
        assert f"pid {holder.pid}" in done.stderr
    finally:
        holder.proc.kill()
        holder.wait()

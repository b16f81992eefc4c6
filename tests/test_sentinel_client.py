"""The Sentinel-aware Redis clients against real processes: a primary, a replica and three
Sentinels from Debian's redis-server and redis-sentinel (apt-get install redis-sentinel), on
loopback, with the stack's timings (down-after 1 s, failover-timeout 5 s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from atendeai_ctl.admin.target import redis_target
from atendeai_ctl.auth._resp import PipelinedRedis
from atendeai_ctl.auth.redis_ha import (
    RedisTarget,
    ReplicationUnconfirmed,
    SentinelResolver,
    parse_sentinels,
    parse_switch,
)
from atendeai_ctl.auth.sessions import DENY_JTI, Denylist
from atendeai_ctl.errors import AtendeaiError
from tests.auth_helpers import AuthDb, live_server
from tests.servers import free_port

SENTINEL_BIN = os.environ.get("ATENDEAI_TEST_REDIS_SENTINEL") or shutil.which("redis-sentinel")
MASTER = "atendeai"


def _server_bin() -> str:
    if SENTINEL_BIN is None:
        pytest.fail("redis-sentinel is not installed (apt-get install redis-sentinel)")
    # Debian's redis-server beside it: the same version as the Sentinels.
    return str(Path(SENTINEL_BIN).parent / "redis-server")


@dataclass
class Cluster:
    password: str
    primary: int
    replica: int
    sentinels: list[int]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.primary}/0"

    def target(self, **changes: Any) -> RedisTarget:
        values: dict[str, Any] = {
            "url": self.url,
            "sentinels": tuple(("127.0.0.1", port) for port in self.sentinels),
            "master": MASTER,
            "wait_replicas": 1,
            "wait_timeout_ms": 300,
        }
        values.update(changes)
        return RedisTarget(**values)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=3)

    def role(self, port: int) -> str:
        with self.client(port) as client:
            return str(client.execute_command("ROLE")[0].decode())

    def named_primary(self) -> int:
        with self.client(self.sentinels[0]) as sentinel:
            _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(port)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    server = _server_bin()
    base = Path(tempfile.mkdtemp(prefix="atendeai-sentinel-"))
    password = uuid.uuid4().hex
    found = Cluster(password, free_port(), free_port(), [free_port() for _ in range(3)])
    try:
        roles = [(found.primary, ""), (found.replica, f"replicaof 127.0.0.1 {found.primary}\n")]
        for port, extra in roles:
            (base / str(port)).mkdir()
            conf = (
                f"port {port}\nbind 127.0.0.1\nrequirepass {password}\nmasterauth {password}\n"
                f'dir {base / str(port)}\nsave ""\nappendonly no\n{extra}'
            )
            proc = subprocess.Popen([server, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            assert proc.stdin is not None
            proc.stdin.write(conf.encode())
            proc.stdin.close()
            found.procs[port] = proc
        _wait(lambda: found.client(found.replica).info("replication")["master_link_status"] == "up",
              15, "the replica to sync")  # fmt: skip
        for port in found.sentinels:
            conf_file = base / f"sentinel-{port}.conf"
            conf_file.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {base}\nrequirepass {password}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {found.primary} 2\n"
                f"sentinel auth-pass {MASTER} {password}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            found.procs[port] = subprocess.Popen(
                [SENTINEL_BIN or "", str(conf_file)], stdout=subprocess.DEVNULL
            )
        for port in found.sentinels:

            def quorum(port: int = port) -> bool:
                with found.client(port) as sentinel:
                    ok = sentinel.execute_command("SENTINEL", "CKQUORUM", MASTER)
                    replicas = sentinel.execute_command("SENTINEL", "REPLICAS", MASTER)
                return str(ok).find("OK") >= 0 and len(replicas) == 1

            _wait(quorum, 20, f"Sentinel {port} to see its peers and the replica")
        yield found
    finally:
        for proc in found.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def test_switch_master_moves_the_pipelined_client_before_any_write_fails(
    cluster: Cluster,
) -> None:
    """A graceful failover breaks no connection: only +switch-master tells the client."""

    async def scenario() -> tuple[Any, Any, int]:
        fast = PipelinedRedis(cluster.url, resolver=cluster.target().resolver(timeout=1.0))
        try:
            assert await fast.call("SET", "k", "1") == b"OK"
            await asyncio.sleep(0.3)  # the subscription is up
            with cluster.client(cluster.sentinels[1]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)
            deadline = time.monotonic() + 15
            while fast.switches == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            written = await fast.call("SET", "k", "2")
            role = await fast.call("ROLE")
            return written, role[0], fast.switches
        finally:
            await fast.aclose()

    written, role, switches = asyncio.run(scenario())
    assert switches == 1
    assert written == b"OK"
    assert role == b"master"
    assert cluster.named_primary() == cluster.replica


def test_readonly_reply_makes_the_pipelined_client_resolve_again(cluster: Cluster) -> None:
    """A server that answers READONLY (a demoted primary, a stale answer) is left at once and
    the next call asks the Sentinels again. (A failover itself kills the demoted server's
    client connections: Sentinel sends CLIENT KILL, so a stale first answer is how a client
    ends up there.)"""

    class StaleFirst(SentinelResolver):
        asked = 0

        async def address(self) -> tuple[str, int]:
            self.asked += 1
            if self.asked == 1:
                return "127.0.0.1", cluster.replica
            return await super().address()

    async def scenario() -> tuple[str, Any, Any, int]:
        resolver = StaleFirst(cluster.target())
        fast = PipelinedRedis(cluster.url, resolver=resolver)
        try:
            try:
                await fast.call("SET", "k", "1")
                first = "accepted"
            except redis.ReadOnlyError:
                first = "readonly"
            second = await fast.call("SET", "k", "2")
            return first, second, (await fast.call("ROLE"))[0], resolver.asked
        finally:
            await fast.aclose()

    first, second, role, asked = asyncio.run(scenario())
    assert first == "readonly"
    assert second == b"OK"
    assert role == b"master"
    assert asked == 2


def test_clients_write_again_within_seconds_of_the_primary_being_killed(cluster: Cluster) -> None:
    """SIGKILL the primary under a write every 50 ms: the pipelined client and redis-py's
    Sentinel client both reach the promoted replica, well within the 5 s target."""
    target = cluster.target()

    async def scenario() -> float:
        fast = PipelinedRedis(cluster.url, resolver=target.resolver(timeout=0.5), timeout=0.5)
        try:
            assert await fast.call("SET", "k", "0") == b"OK"
            cluster.procs[cluster.primary].kill()
            killed = time.monotonic()
            while time.monotonic() - killed < 20:
                with contextlib.suppress(redis.RedisError):
                    if await fast.call("INCR", "k") is not None:
                        return time.monotonic() - killed
                await asyncio.sleep(0.05)
            raise AssertionError("no write succeeded within 20 s of the kill")
        finally:
            await fast.aclose()

    outage = asyncio.run(scenario())
    assert outage < 5.0, outage
    with cluster.client(cluster.replica) as promoted:
        assert promoted.execute_command("ROLE")[0] == b"master"
    sync = target.sync_client(socket_timeout=2, connect_timeout=1)
    try:
        assert sync.set("via-sentinel", "1")
        assert sync.connection_pool.get_master_address() == ("127.0.0.1", cluster.replica)
    finally:
        sync.close()


def test_a_revocation_returns_only_once_the_replica_holds_it(cluster: Cluster) -> None:
    target = cluster.target()
    denylist = Denylist(target.sync_client(socket_timeout=2, connect_timeout=1),
                        wait_replicas=1, wait_timeout_ms=2000)  # fmt: skip
    denylist.deny_jti("j-confirmed", 60)
    with cluster.client(cluster.replica) as replica:
        assert replica.get(DENY_JTI + "j-confirmed") == b"1"


def test_an_unconfirmed_revocation_raises(cluster: Cluster) -> None:
    target = cluster.target()
    denylist = Denylist(target.sync_client(socket_timeout=2, connect_timeout=1),
                        wait_replicas=1, wait_timeout_ms=300)  # fmt: skip
    os.kill(cluster.procs[cluster.replica].pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(ReplicationUnconfirmed):
        denylist.deny_sessions([("s-1", 60.0)])
    assert time.monotonic() - started < 1.5


def test_logout_answers_503_when_no_replica_confirms_and_204_once_one_does(
    cluster: Cluster, auth_db: AuthDb, keys_dir: Path, clinic_user: tuple[str, str]
) -> None:
    with live_server(auth_db, cluster.url, keys_dir, redis_target=cluster.target()) as live:
        token = live.login()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        with live.client() as http:
            assert http.get("/auth/verify", headers=auth).status_code == 200
            os.kill(cluster.procs[cluster.replica].pid, signal.SIGSTOP)
            refused = http.post("/auth/logout", headers=auth, json={})
            os.kill(cluster.procs[cluster.replica].pid, signal.SIGCONT)
            _wait(
                lambda: cluster.client(cluster.primary).info("replication")["connected_slaves"],
                10,
                "the replica to answer again",
            )
            accepted = http.post("/auth/logout", headers=auth, json={})
            after = http.get("/auth/verify", headers=auth)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "unavailable"
    assert accepted.status_code == 204, accepted.text
    assert after.status_code == 401


def test_the_cli_exits_non_zero_when_no_replica_confirms_a_revocation(
    cluster: Cluster, auth_db: AuthDb, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env.update(
        {
            "ATENDEAI_STATE_DIR": str(tmp_path / "state"),
            "ATENDEAI_DATABASE_URL": auth_db.admin_url,
            "ATENDEAI_REDIS_URL": cluster.url,
            "ATENDEAI_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in cluster.sentinels),
            "ATENDEAI_REDIS_MASTER": MASTER,
            "ATENDEAI_REDIS_WAIT_TIMEOUT_MS": "300",
        }
    )
    jti = str(uuid.uuid4())

    def revoke() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atendeai_ctl", "token", "revoke", "--jti", jti],
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    os.kill(cluster.procs[cluster.replica].pid, signal.SIGSTOP)
    refused = revoke()
    os.kill(cluster.procs[cluster.replica].pid, signal.SIGCONT)
    assert refused.returncode == 1, refused.stderr
    assert "no replica confirmed" in refused.stderr
    assert cluster.password not in refused.stderr
    assert "Traceback" not in refused.stderr
    _wait(
        lambda: cluster.client(cluster.primary).info("replication")["connected_slaves"],
        10,
        "the replica to answer again",
    )
    done = revoke()
    assert done.returncode == 0, done.stderr
    with cluster.client(cluster.replica) as replica:
        assert replica.exists(DENY_JTI + jti)


def test_the_cli_on_the_host_maps_announced_names_to_published_ports(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atendeai_ctl.config import load_config

    for key, value in {
        "ATENDEAI_PROFILES": "edge,ha",
        "ATENDEAI_REDIS_PORT": "7001",
        "ATENDEAI_REDIS_REPLICA_PORT": "7002",
        "ATENDEAI_REDIS_SENTINEL_PORT_1": "7101",
        "ATENDEAI_REDIS_SENTINEL_PORT_2": "7102",
        "ATENDEAI_REDIS_SENTINEL_PORT_3": "7103",
        "ATENDEAI_REDIS_PASSWORD": "pw",
    }.items():
        monkeypatch.setenv(key, value)
    config = load_config()
    target = redis_target(config)
    assert target.sentinels == (("127.0.0.1", 7101), ("127.0.0.1", 7102), ("127.0.0.1", 7103))
    assert target.address_map == {
        ("redis", 6379): ("127.0.0.1", 7001),
        ("redis-replica", 6379): ("127.0.0.1", 7002),
    }
    assert target.wait_replicas == 1
    # The auth container gets the Sentinels' names on the project network.
    assert config.get("ATENDEAI_STACK_SENTINELS") == (
        "redis-sentinel-1:26379,redis-sentinel-2:26379,redis-sentinel-3:26379"
    )
    monkeypatch.setenv("ATENDEAI_PROFILES", "edge")
    plain = load_config()
    assert redis_target(plain).sentinels == ()
    assert redis_target(plain).wait_replicas == 0
    assert plain.get("ATENDEAI_STACK_SENTINELS") == ""


HOSTS = st.one_of(
    st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,2}\Z"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)


@given(
    st.lists(st.tuples(HOSTS, st.integers(1, 65535)), max_size=5), st.sampled_from([",", " ", ", "])
)
def test_sentinel_lists_round_trip(entries: list[tuple[str, int]], sep: str) -> None:
    text = sep.join(f"{host}:{port}" for host, port in entries)
    expected = tuple((host.strip("[]"), port) for host, port in entries)
    assert parse_sentinels(text) == expected


@given(st.text(max_size=80))
def test_any_sentinel_text_parses_or_is_one_invalid_error(text: str) -> None:
    try:
        parsed = parse_sentinels(text)
    except AtendeaiError as exc:
        assert exc.code == "invalid"
        assert "\n" not in exc.message
    else:
        assert all(0 < port < 65536 and host for host, port in parsed)


@pytest.mark.parametrize(
    ("text", "why"),
    [("redis-sentinel-1", "no port"), ("h:0", "port 0"), ("h:70000", "port too big"),
     (":26379", "no host"), ("h:\uff12\uff16", "non-ASCII digits")],
)  # fmt: skip
def test_bad_sentinel_entries_are_refused(text: str, why: str) -> None:
    with pytest.raises(AtendeaiError) as err:
        parse_sentinels(text)
    assert err.value.code == "invalid", why


def test_switch_messages_for_other_masters_or_malformed_are_ignored() -> None:
    message = {"type": "message", "data": b"atendeai redis 6379 redis-replica 6379"}
    assert parse_switch(message, "atendeai") == ("redis-replica", 6379)
    assert parse_switch(message, "other") is None
    assert parse_switch({"type": "subscribe", "data": 1}, "atendeai") is None
    assert parse_switch({"type": "message", "data": b"atendeai a b"}, "atendeai") is None
    assert parse_switch(None, "atendeai") is None


def test_an_unreachable_sentinel_set_is_a_connection_error() -> None:
    target = RedisTarget(url="redis://:pw@127.0.0.1:1/0", sentinels=(("127.0.0.1", free_port()),))

    async def scenario() -> None:
        fast = PipelinedRedis(target.url, resolver=target.resolver(timeout=0.5))
        try:
            with pytest.raises(redis.ConnectionError):
                await fast.call("PING")
        finally:
            await fast.aclose()

    asyncio.run(scenario())

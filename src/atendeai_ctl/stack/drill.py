"""`atendeai drill redis-failover`: kill the Redis primary of a running `ha` stack and measure.

Everyone says failover is "prepared"; this rehearses it and prints figures. Under a small,
bounded load (a verify every 50 ms, a login every 500 ms, from this host to the published
auth port) it kills the current primary's container (SIGKILL, as a crash would), then records
how long until login and verify succeed again and stay up, whether tokens revoked just before
the kill are still refused afterwards, and whether every revocation the service acknowledged
(HTTP 204 to a logout) is on the new primary. Then it starts the old primary again and waits
until it has rejoined as a replica, so the stack is whole when the drill ends.

The drill logs in as its own user (clinic `atendeai-drill`, created on first use; a fresh
password each run, set through the admin library, which also ends the previous run's
sessions): nobody's real sessions are touched.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from atendeai_ctl.admin.target import redis_target
from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    from atendeai_ctl.config import Config

DRILL_CLINIC = "atendeai-drill"
DRILL_EMAIL = "drill@atendeai-drill.example"
TARGET_S = 5.0
REVOKED_BEFORE_KILL = 5
VERIFY_EVERY_S = 0.05
LOGIN_EVERY_S = 0.5
STABLE_S = 2.0  # recovered = this long without a failure of either kind
MAX_WAIT_S = 30.0
REJOIN_WAIT_S = 30.0


@dataclass
class Load:
    """Outcomes of one kind of request, with the times (since the kill) of failures."""

    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    last_failure_s: float | None = None
    first_success_after_failure_s: float | None = None

    def record(self, status: int, at: float) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            self.ok += 1
            if self.last_failure_s is not None and self.first_success_after_failure_s is None:
                self.first_success_after_failure_s = at
        else:  # one sent just before the kill failed because of it: counted from the kill
            at = max(at, 0.0)
            self.failed += 1
            self.last_failure_s = at
            self.first_success_after_failure_s = None

    def recovered_s(self) -> float | None:
        """Seconds from the kill to the first success after the last failure (0: none failed)."""
        if self.last_failure_s is None:
            return 0.0
        return self.first_success_after_failure_s


@dataclass
class DrillReport:
    killed: str
    new_primary: str | None
    failover_s: float | None
    login_recovered_s: float | None
    verify_recovered_s: float | None
    auth_recovered_s: float | None
    target_s: float
    revoked_before_kill: int
    revoked_tokens_accepted: int
    acknowledged_revocations: int
    acknowledged_revocations_lost: int
    old_primary_rejoined_as_replica: bool
    rejoin_s: float | None
    login: Load
    verify: Load
    ok: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, **asdict(self)}


class _Auth:
    """The auth service's HTTP API on its published port (stdlib, short timeouts)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        token: str = "",
        timeout: float = 3.0,
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        except (OSError, TimeoutError):
            return 0, {}
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        return status, parsed if isinstance(parsed, dict) else {}

    def login(self, password: str) -> tuple[int, str]:
        status, body = self.request(
            "POST",
            "/auth/login",
            body={"clinic": DRILL_CLINIC, "email": DRILL_EMAIL, "password": password},
            timeout=15.0,  # bcrypt on a busy machine can take seconds; that is not an outage
        )
        return status, str(body.get("access_token", ""))

    def verify(self, token: str) -> int:
        return self.request("GET", "/auth/verify", token=token)[0]

    def logout(self, token: str) -> int:
        return self.request("POST", "/auth/logout", body={}, token=token)[0]


def _drill_user(config: Config) -> str:
    """The drill's clinic and user (made on first use) with a fresh password; returns it."""
    from atendeai_ctl.admin import clinics, users
    from atendeai_ctl.admin.target import open_admin

    password = users.generate_password()
    with open_admin(config=config, need_redis=True) as admin:
        clinics.create(admin, name="AtendeAI failover drill", slug=DRILL_CLINIC, if_not_exists=True)
        made = users.create(
            admin,
            clinic=DRILL_CLINIC,
            email=DRILL_EMAIL,
            password=password,
            role="staff",
            name=None,
            if_not_exists=True,
        )
        if not made.created:
            users.set_password(admin, clinic=DRILL_CLINIC, email=DRILL_EMAIL, password=password)
    return password


def _check_failover_possible(config: Config) -> None:
    """Never kill a primary that nothing can replace: the Sentinels must agree (quorum) and
    know a replica that is up and linked to it."""
    import redis

    target = redis_target(config)
    problems = []
    for host, port in target.sentinels:
        client = redis.Redis(
            host=host, port=port, password=target.password, socket_timeout=2,
            socket_connect_timeout=2, decode_responses=True,
        )  # fmt: skip
        try:
            client.execute_command("SENTINEL", "CKQUORUM", target.master)
            replicas = client.sentinel_slaves(target.master)
        except (redis.RedisError, OSError) as exc:
            problems.append(f"Sentinel {host}:{port}: {(str(exc).splitlines() or ['?'])[0]}")
            continue
        finally:
            client.close()
        good = [
            r for r in replicas
            if not (r.get("is_sdown") or r.get("is_odown") or r.get("is_disconnected"))
            and r.get("master-link-status") == "ok"
        ]  # fmt: skip
        if good:
            return
        problems.append(f"Sentinel {host}:{port} knows no healthy replica")
    raise AtendeaiError(
        "not_ready",
        "a failover is not possible now, so the primary was not killed: " + "; ".join(problems),
        "wait until `atendeai status` shows redis-replica and the Sentinels healthy",
    )


def _sentinel_primary(config: Config) -> str | None:
    """The primary's service name as the Sentinels announce it (None: they know none)."""
    import redis
    import redis.sentinel

    target = redis_target(config)
    manager = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=target._sentinel_kwargs(1.0)
    )
    try:
        host, _ = manager.discover_master(target.master)
    except (redis.RedisError, OSError):
        return None
    finally:
        manager.close()
    return str(host)


def _container(config: Config, service: str) -> Any:
    import docker

    client = docker.from_env(timeout=30)
    found = client.containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={config.project}",
                f"com.docker.compose.service={service}",
            ]
        },
    )
    if not found:
        raise AtendeaiError(
            "not_found",
            f"no container for service {service!r} in project {config.project!r}",
            "start the stack with `atendeai up --profile ha`",
        )
    return found[0]


def _role(config: Config, service: str) -> str | None:
    import redis

    from atendeai_ctl.config import REDIS_SERVER_PORT_KEYS, connect_host

    target = redis_target(config)
    client = redis.Redis(
        host=connect_host(config.require("ATENDEAI_BIND")),
        port=config.port(REDIS_SERVER_PORT_KEYS[service]),
        password=target.password,
        socket_timeout=1,
        socket_connect_timeout=1,
    )
    try:
        role = client.execute_command("ROLE")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    first = role[0]
    return first.decode() if isinstance(first, bytes) else str(first)


def _missing_denials(config: Config, session_ids: list[str]) -> int:
    """How many of these sessions' denylist entries the current primary lacks."""
    import redis

    from atendeai_ctl.auth.sessions import DENY_SID

    client = redis_target(config).sync_client(socket_timeout=2, connect_timeout=2)
    try:
        present = client.exists(*(DENY_SID + sid for sid in session_ids)) if session_ids else 0
    except (redis.RedisError, OSError) as exc:
        raise AtendeaiError(
            "unavailable", f"cannot read the denylist from the new primary: {exc}"
        ) from exc
    finally:
        client.close()
    return len(session_ids) - int(present)


def _claims_sid(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(data["sid"])


def redis_failover(config: Config) -> DrillReport:
    from atendeai_ctl.config import REDIS_SERVER_PORT_KEYS, connect_host, ha_active

    if not ha_active(config.settings):
        raise AtendeaiError(
            "invalid",
            "the drill needs the `ha` profile (a Redis replica and three Sentinels)",
            "start it with `atendeai up --profile ha`, or set ATENDEAI_PROFILES=ha",
        )
    config = config.with_secrets(generate=False)
    primary = _sentinel_primary(config)
    if primary not in REDIS_SERVER_PORT_KEYS:
        raise AtendeaiError(
            "not_ready",
            "the Sentinels name no primary of this stack"
            + (f" (they say {primary!r})" if primary else ""),
            "check `atendeai status`; the drill needs a healthy `ha` stack",
        )
    _check_failover_possible(config)
    auth = _Auth(f"http://{connect_host(config.require('ATENDEAI_BIND'))}:"
                 f"{config.port('ATENDEAI_AUTH_PORT')}")  # fmt: skip
    password = _drill_user(config)
    status, token = auth.login(password)
    if status != 200:
        raise AtendeaiError(
            "not_ready", f"the auth service refused the drill's login before the kill ({status})"
        )
    # Revocations acknowledged just before the kill: each must hold afterwards.
    revoked: list[str] = []
    for _ in range(REVOKED_BEFORE_KILL):
        s, victim = auth.login(password)
        if s == 200 and auth.logout(victim) == 204:
            revoked.append(victim)
    if not revoked:
        raise AtendeaiError("not_ready", "no logout was acknowledged before the kill")

    login_load, verify_load = Load(), Load()
    accepted_during: list[int] = [0]  # a revoked token answered 200 while the drill ran
    stop = threading.Event()
    killed_at = [0.0]

    def since_kill() -> float:
        return time.monotonic() - killed_at[0] if killed_at[0] else -1.0

    # Each outcome is timed when its request was sent: recovery is when the service answered
    # again, not when a slow bcrypt round finished.
    def verifier() -> None:
        turn = 0
        while not stop.is_set():
            sent = since_kill()
            verify_load.record(auth.verify(token), sent)
            # Every other round, one of the revoked tokens: never accepted, not even mid-failover.
            if turn % 2 and auth.verify(revoked[turn // 2 % len(revoked)]) == 200:
                accepted_during[0] += 1
            turn += 1
            stop.wait(VERIFY_EVERY_S)

    def logger_in() -> None:
        while not stop.is_set():
            sent = since_kill()
            login_status, _ = auth.login(password)
            login_load.record(login_status, sent)
            stop.wait(LOGIN_EVERY_S)

    threads = [threading.Thread(target=f, daemon=True) for f in (verifier, logger_in)]
    for thread in threads:
        thread.start()
    container = _container(config, primary)
    failover_s = None
    new_primary = None
    try:
        time.sleep(1.0)  # a baseline under load
        killed_at[0] = time.monotonic()
        container.kill()
        deadline = killed_at[0] + MAX_WAIT_S
        while time.monotonic() < deadline:
            now = since_kill()
            if failover_s is None:
                named = _sentinel_primary(config)
                if named and named != primary:
                    failover_s, new_primary = now, named
            settled = [
                load.last_failure_s is None
                or (
                    load.first_success_after_failure_s is not None
                    and now - load.first_success_after_failure_s >= STABLE_S
                )
                for load in (login_load, verify_load)
            ]
            if failover_s is not None and all(settled) and now >= STABLE_S:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
    accepted = accepted_during[0] + sum(1 for victim in revoked if auth.verify(victim) == 200)
    lost = _missing_denials(config, [_claims_sid(victim) for victim in revoked])
    rejoin_s = None
    rejoined = False
    started = time.monotonic()
    container.start()
    while time.monotonic() - started < REJOIN_WAIT_S:
        if _role(config, primary) == "slave":
            rejoined, rejoin_s = True, round(time.monotonic() - started, 3)
            break
        time.sleep(0.2)
    login_s, verify_s = login_load.recovered_s(), verify_load.recovered_s()
    both = None if login_s is None or verify_s is None else max(login_s, verify_s)
    report = DrillReport(
        killed=primary,
        new_primary=new_primary,
        failover_s=None if failover_s is None else round(failover_s, 3),
        login_recovered_s=None if login_s is None else round(login_s, 3),
        verify_recovered_s=None if verify_s is None else round(verify_s, 3),
        auth_recovered_s=None if both is None else round(both, 3),
        target_s=TARGET_S,
        revoked_before_kill=len(revoked),
        revoked_tokens_accepted=accepted,
        acknowledged_revocations=len(revoked),
        acknowledged_revocations_lost=lost,
        old_primary_rejoined_as_replica=rejoined,
        rejoin_s=rejoin_s,
        login=login_load,
        verify=verify_load,
    )
    report.ok = (
        both is not None
        and both <= TARGET_S
        and accepted == 0
        and lost == 0
        and rejoined
        and new_primary is not None
    )
    return report

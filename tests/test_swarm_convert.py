"""Compose -> Swarm service specs (stack/swarm_convert.py), on the real compose file, no engine."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atendeai_ctl.config import load_config
from atendeai_ctl.stack.profiles import select_profiles
from atendeai_ctl.stack.project import load_stack, prepare_state
from atendeai_ctl.stack.spec import Service, StackSpec
from atendeai_ctl.stack.swarm_convert import objects, publishes, service_spec


def _stack(tmp_path: Path, *profiles: str) -> tuple[StackSpec, dict[str, str]]:
    cfg = prepare_state(
        load_config({"ATENDEAI_PROJECT": "conv", "ATENDEAI_STATE_DIR": str(tmp_path)}, environ={})
    )
    spec = select_profiles(load_stack(cfg), profiles)
    found = {k: v for k, v in cfg.settings.items() if k.endswith("_PASSWORD")}
    return spec, {k: s.value for k, s in found.items() if s.value}


def _spec(spec: StackSpec, secrets: dict[str, str], name: str) -> dict[str, Any]:
    service = spec.services[name]
    blobs, files = objects("conv", secrets, service)
    ids = {b.name: f"id-{b.name}" for b in [*blobs, *files]}
    return service_spec(
        "conv", spec, service, image=service.image, secrets=blobs, configs=files, ids=ids
    )


def test_the_default_stack(tmp_path: Path) -> None:
    spec, secrets = _stack(tmp_path)
    migrate = _spec(spec, secrets, "migrate")
    assert migrate["mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert migrate["task_template"]["RestartPolicy"]["Condition"] == "none"
    assert migrate["task_template"]["Placement"]["Constraints"] == [
        "node.labels.atendeai.data==true"
    ]
    assert "update_config" not in migrate  # jobs refuse update options

    postgres = _spec(spec, secrets, "postgres")
    assert postgres["endpoint_spec"] == {"Mode": "dnsrr"}  # no port: it owns data
    assert postgres["update_config"]["Order"] == "stop-first"
    env = postgres["task_template"]["ContainerSpec"]["Env"]
    assert "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password" in env
    assert not any(secrets["ATENDEAI_POSTGRES_PASSWORD"] in e for e in env)
    [mount] = postgres["task_template"]["ContainerSpec"]["Mounts"]
    assert (mount["Source"], mount["Type"]) == ("conv_pgdata", "volume")

    auth = _spec(spec, secrets, "auth")
    assert auth["endpoint_spec"]["Mode"] == "dnsrr"
    assert auth["endpoint_spec"]["Ports"][0]["PublishMode"] == "host"
    assert auth["update_config"]["Order"] == "stop-first"  # it holds a host-mode port
    assert auth["update_config"]["FailureAction"] == "rollback"
    keys = [
        s for s in auth["task_template"]["ContainerSpec"]["Secrets"] if ".pem" in s["File"]["Name"]
    ]
    assert keys and all(k["File"]["Name"].startswith("/run/atendeai/jwt/") for k in keys)
    assert all(k["File"]["Mode"] == 0o400 for k in keys)
    # Never a secret on a command line.
    for name in spec.services:
        container = _spec(spec, secrets, name)["task_template"]["ContainerSpec"]
        argv = " ".join([*(container.get("Command") or []), *(container.get("Args") or [])])
        assert not any(value in argv for value in secrets.values())


def test_behind_the_gateway_auth_publishes_nothing_and_starts_first(tmp_path: Path) -> None:
    spec, secrets = _stack(tmp_path, "edge")
    assert publishes(spec, spec.services["gateway"])
    assert not publishes(spec, spec.services["auth"])
    auth = _spec(spec, secrets, "auth")
    assert "Ports" not in auth["endpoint_spec"]
    assert auth["update_config"]["Order"] == "start-first"
    gateway = _spec(spec, secrets, "gateway")
    [config] = gateway["task_template"]["ContainerSpec"]["Configs"]
    assert config["File"]["Name"] == "/usr/local/etc/haproxy/haproxy.cfg"


@given(st.text(min_size=1, max_size=64).filter(lambda v: "\x00" not in v))
def test_a_secret_is_named_by_its_content(value: str) -> None:
    """Swarm refuses to change a secret's data: the name must change exactly when it does."""

    def using(secret: str) -> Service:
        return Service(name="app", image="x", environment=(("URL", f"redis://:{secret}@r"),))

    [blob], _ = objects("p", {"ATENDEAI_REDIS_PASSWORD": value}, using(value))
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    assert (blob.name, blob.data, blob.target) == (
        f"p_redis_password_{digest}",
        value.encode(),
        "redis_password",
    )
    [other], _ = objects("p", {"ATENDEAI_REDIS_PASSWORD": value + "x"}, using(value + "x"))
    assert other.name != blob.name


def _env(spec: dict[str, Any]) -> dict[str, str]:
    pairs = (e.split("=", 1) for e in spec["task_template"]["ContainerSpec"]["Env"])
    return dict(pairs)


def test_behind_the_gateway_auth_trusts_the_overlay_subnet(tmp_path: Path) -> None:
    """The gateway cannot hold its fixed address on a swarm: where the file trusts it, the
    swarm trusts the project's subnet; a value set by hand is kept; no edge, no trust."""

    def auth_env(**settings: str) -> tuple[StackSpec, dict[str, str]]:
        cfg = prepare_state(
            load_config(
                {"ATENDEAI_PROJECT": "conv", "ATENDEAI_STATE_DIR": str(tmp_path), **settings},
                environ={},
            )
        )
        spec = select_profiles(load_stack(cfg), ["edge"] if "ATENDEAI_PROFILES" in settings else [])
        found = {k: s.value for k, s in cfg.settings.items() if k.endswith("_PASSWORD") and s.value}
        return spec, _env(_spec(spec, found, "auth"))

    spec, env = auth_env(ATENDEAI_PROFILES="edge", ATENDEAI_SUBNET="10.123.4.0/24")
    assert spec.services["gateway"].ipv4_address == "10.123.4.254"
    assert env["ATENDEAI_AUTH_TRUSTED_PROXIES"] == "10.123.4.0/24" == spec.subnet
    _, env = auth_env(ATENDEAI_PROFILES="edge", ATENDEAI_AUTH_TRUSTED_PROXIES="192.0.2.7")
    assert env["ATENDEAI_AUTH_TRUSTED_PROXIES"] == "192.0.2.7"
    _, env = auth_env()
    assert env["ATENDEAI_AUTH_TRUSTED_PROXIES"] == ""

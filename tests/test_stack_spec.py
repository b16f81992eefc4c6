"""The compose model: interpolation rules and one clear line for each kind of broken file."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from atendeai_ctl.config import load_config
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.graph import levels
from atendeai_ctl.stack.interpolate import InterpolationError, interpolate
from atendeai_ctl.stack.profiles import select_profiles
from atendeai_ctl.stack.spec import Logging, load_spec, parse_duration

ENV = {"A": "1", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "1"),
        ("$A-x", "1-x"),
        ("$$A", "$A"),
        ("${B:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${A:+alt}", "alt"),
        ("${B:+alt}", ""),
        ("${B:-${A}}", "1"),
        ("pre ${A} post $$ end", "pre 1 post $ end"),
    ],
)
def test_interpolation_follows_compose_rules(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${B}", "variable B is not set"),
        ("${B:?give me B}", "give me B"),
        ("${EMPTY:?must not be empty}", "must not be empty"),
        ("cost $5", "invalid interpolation"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message):
        interpolate(text, ENV)


def test_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration(3) == 3
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 seconds")


def test_bundled_compose_file_loads(state_dir: Path) -> None:
    cfg = load_config().with_secrets(generate=True)
    # The core, with no profile active (tests/test_profiles.py covers the gateway's `edge`).
    spec = select_profiles(load_spec(cfg.compose_file, cfg.interpolation_env(), cfg.project), [])
    assert set(spec.services) == {"postgres", "redis", "migrate", "auth"}
    assert levels(spec) == [["postgres", "redis"], ["migrate"], ["auth"]]
    assert spec.network == "atendeai-network"
    assert all(p.host_ip == "127.0.0.1" for s in spec.services.values() for p in s.ports)
    postgres = spec.services["postgres"]
    assert postgres.env["POSTGRES_PASSWORD"] == cfg.get("ATENDEAI_POSTGRES_PASSWORD")
    # Secrets never travel on a command line.
    for service in spec.services.values():
        argv = " ".join((service.command or ()) + (service.entrypoint or ()))
        for secret in ("ATENDEAI_POSTGRES_PASSWORD", "ATENDEAI_REDIS_PASSWORD"):
            assert str(cfg.get(secret)) not in argv


def test_config_hash_changes_only_with_config(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def redis_hash() -> str:
        cfg = load_config().with_secrets(generate=True)
        spec = load_spec(cfg.compose_file, cfg.interpolation_env(), cfg.project)
        return spec.services["redis"].config_hash()

    first = redis_hash()
    assert redis_hash() == first
    monkeypatch.setenv("ATENDEAI_REDIS_PORT", "6390")
    assert redis_hash() != first


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AtendeaiError:
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    with pytest.raises(AtendeaiError) as caught:
        load_spec(path, env or {}, "p")
    assert caught.value.code == "invalid"
    assert str(path) in caught.value.message
    assert "\n" not in caught.value.message
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: [unclosed", "not valid YAML"),
        ("services:\n  db:\n    image: x\n    imagee: y\n", "services.db.imagee: unknown key"),
        ("services:\n  db:\n    image: x\n    ports: 5432\n", "services.db.ports: must be a list"),
        ("services:\n  db:\n    image: x\n    ports: ['99999:1']\n", "not a port number"),
        (
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n"
            "    depends_on: [a]\n",
            "dependency cycle: a -> b -> a",
        ),
        ("services:\n  a:\n    image: x\n    depends_on: [ghost]\n", "unknown service 'ghost'"),
        ("services:\n  a:\n    image: ${NOPE}\n", "services.a.image: variable NOPE is not set"),
        (
            "services:\n  a:\n    image: x\n    volumes: ['data:/d']\n",
            "volume 'data' is not declared",
        ),
        (
            "services:\n  a:\n    image: x\n    healthcheck: {test: [CMD], interval: soon}\n",
            "services.a.healthcheck",
        ),
        (
            "services:\n  a:\n    image: x\n    depends_on: {b: {condition: service_happy}}\n"
            "  b:\n    image: x\n",
            "condition: must be one of",
        ),
        ("servics:\n  a:\n    image: x\n", "servics: unknown top-level key"),
        ("services:\n  a:\n    image: x\n    logging: local\n", "a.logging: must be a mapping"),
        (
            "services:\n  a:\n    image: x\n    logging: {drivr: local}\n",
            "services.a.logging.drivr: unknown key",
        ),
        (
            "services:\n  a:\n    image: x\n    logging: {options: {max-size: [1]}}\n",
            "services.a.logging.options.max-size",
        ),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_broken_compose_files_give_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    err = _load(tmp_path, text)
    assert err.code == "invalid"
    assert expected in err.message


def test_extension_keys_are_kept_not_rejected(tmp_path: Path) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text("x-top: 1\nservices:\n  a:\n    image: x\n    x-atendeai: {bundle: true}\n")
    spec = load_spec(path, {}, "p")
    assert spec.extensions == {"x-top": 1}
    assert spec.services["a"].extensions == {"x-atendeai": {"bundle": True}}


def test_logging_is_part_of_the_service_and_its_hash(tmp_path: Path) -> None:
    """Compose's `logging: {driver, options}` reaches the model; adding it recreates the
    service (hash changes), a file without it keeps its old hash."""
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  a:\n    image: x\n")
    plain = load_spec(path, {}, "p").services["a"]
    assert plain.logging is None
    path.write_text(
        "services:\n  a:\n    image: x\n    logging:\n      driver: ${DRIVER:-local}\n"
        "      options: {max-size: 20m, max-file: 5}\n"
    )
    logged = load_spec(path, {}, "p").services["a"]
    assert logged.logging == Logging("local", (("max-file", "5"), ("max-size", "20m")))
    assert logged.config_hash() != plain.config_hash()
    assert load_spec(path, {"DRIVER": "json-file"}, "p").services["a"].config_hash() != (
        logged.config_hash()
    )


def test_the_gateway_keeps_its_access_log_with_the_local_driver(state_dir: Path) -> None:
    """One access-log line per request: the gateway's logs go to the engine's `local` driver
    (compact, rotated), not json-file's unbounded file; rotated files stay uncompressed (the
    engine would gzip 20 MB at each rotation)."""
    cfg = load_config().with_secrets(generate=True)
    spec = select_profiles(
        load_spec(cfg.compose_file, cfg.interpolation_env(), cfg.project), ["edge"]
    )
    gateway = spec.services["gateway"]
    assert gateway.logging is not None
    assert gateway.logging.driver == "local"
    assert dict(gateway.logging.options) == {
        "max-size": "20m",
        "max-file": "5",
        "compress": "false",
    }
    assert gateway.env["GATEWAY_THREADS"] == "1"


@pytest.mark.docker
def test_the_docker_runtime_creates_the_container_with_its_log_driver(tmp_path: Path) -> None:
    """The engine gets the driver and options, and `logs` still reads what the container
    wrote (the `local` driver keeps `docker logs` working)."""
    import docker

    from atendeai_ctl.stack.docker_runtime import DockerRuntime
    from tests.stack_helpers import image_env, remove_project, unique_subnet

    name = f"tlog{uuid.uuid4().hex[:8]}"
    path = tmp_path / "docker-compose.yml"
    path.write_text(
        "networks:\n  default:\n    ipam:\n      config: [{subnet: " + unique_subnet() + "}]\n"
        "services:\n  a:\n    image: ${IMAGE}\n"
        "    command: [sh, -c, 'echo line-one; echo line-two; sleep 60']\n"
        "    logging: {driver: local, options: {max-size: 1m, max-file: '2'}}\n"
    )
    spec = load_spec(path, {"IMAGE": image_env()["ATENDEAI_PYTHON_IMAGE"]}, name)
    runtime = DockerRuntime(name)
    try:
        runtime.prepare(spec)
        assert runtime.ensure(spec, spec.services["a"]) == "created"
        runtime.start(spec.services["a"])
        attrs = docker.from_env().containers.get(runtime.container_name("a")).attrs
        assert attrs["HostConfig"]["LogConfig"] == {
            "Type": "local",
            "Config": {"max-size": "1m", "max-file": "2"},
        }
        deadline = time.monotonic() + 20
        text = ""
        while "line-two" not in text and time.monotonic() < deadline:
            text = b"".join(runtime.logs("a", tail=None, follow=False)).decode()
            time.sleep(0.2)
        assert text.split() == ["line-one", "line-two"]
    finally:
        remove_project(name)

"""Compose profiles: which services `up` starts, decided once on the spec (no Docker here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atendeai_ctl.config import load_config, project_subnet
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.profiles import PROFILE_NAME, parse_profiles, select_profiles
from atendeai_ctl.stack.spec import load_spec

ROOT = Path(__file__).parent.parent

FILE = """
services:
  db: {image: postgres}
  api:
    image: api
    depends_on: [db]
  gateway:
    image: haproxy
    profiles: [edge]
    depends_on: [api]
  prometheus:
    image: prom
    profiles: [monitoring, ha]
  dashboard:
    image: dash
    profiles: [dash]
    depends_on: [prometheus]
"""


def _spec(tmp_path: Path, text: str = FILE):  # type: ignore[no-untyped-def]
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    return load_spec(path, {}, "p")


def test_services_without_profiles_are_always_on(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert set(spec.services) == {"db", "api", "gateway", "prometheus", "dashboard"}
    assert list(select_profiles(spec, []).services) == ["db", "api"]


def test_an_active_profile_adds_its_services(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert list(select_profiles(spec, ["edge"]).services) == ["db", "api", "gateway"]
    assert "prometheus" in select_profiles(spec, ["ha"]).services
    assert set(select_profiles(spec, ["all"]).services) == set(spec.services)


def test_a_dependency_in_an_inactive_profile_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AtendeaiError) as caught:
        select_profiles(_spec(tmp_path), ["dash"])
    message = str(caught.value.message)
    assert "dashboard depends on prometheus" in message and "'monitoring' or 'ha'" in message
    assert "\n" not in message


def test_bad_profiles_key_names_the_service(tmp_path: Path) -> None:
    with pytest.raises(AtendeaiError, match=r"services\.x\.profiles"):
        _spec(tmp_path, "services:\n  x: {image: a, profiles: edge}\n")
    with pytest.raises(AtendeaiError, match=r"services\.x\.profiles"):
        _spec(tmp_path, "services:\n  x: {image: a, profiles: [all]}\n")


def test_profiles_do_not_change_a_service_config_hash(tmp_path: Path) -> None:
    plain = _spec(tmp_path, "services:\n  x: {image: a}\n").services["x"]
    tagged = _spec(tmp_path, "services:\n  x: {image: a, profiles: [edge]}\n").services["x"]
    assert plain.config_hash() == tagged.config_hash()


def test_the_project_file_puts_the_gateway_in_edge(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env["ATENDEAI_STATE_DIR"] = str(tmp_path)
    cfg = load_config({"ATENDEAI_PROJECT_DIR": str(ROOT)}, env).with_secrets(generate=True)
    env_in = cfg.interpolation_env()
    spec = load_spec(cfg.compose_file, env_in, cfg.project)
    gateway = spec.services["gateway"]
    assert gateway.profiles == ("edge",)
    assert "gateway" not in select_profiles(spec, []).services
    assert spec.subnet == project_subnet(cfg.project)
    assert gateway.ipv4_address == cfg.get("ATENDEAI_GATEWAY_ADDRESS")
    # The auth service trusts nobody unless the edge is on; then the gateway only.
    assert spec.services["auth"].env["ATENDEAI_AUTH_TRUSTED_PROXIES"] == ""
    edge = load_config(
        {"ATENDEAI_PROJECT_DIR": str(ROOT), "ATENDEAI_PROFILES": "edge"}, env
    ).with_secrets(generate=True)
    auth = load_spec(edge.compose_file, edge.interpolation_env(), edge.project).services["auth"]
    assert auth.env["ATENDEAI_AUTH_TRUSTED_PROXIES"] == gateway.ipv4_address


def test_cors_origins_take_commas_or_spaces(tmp_path: Path) -> None:
    env = {
        "ATENDEAI_STATE_DIR": str(tmp_path),
        "ATENDEAI_CORS_ORIGINS": "https://a.test, https://b.test",
    }
    cfg = load_config({"ATENDEAI_PROJECT_DIR": str(ROOT)}, env)
    assert cfg.get("ATENDEAI_CORS_ORIGINS") == "https://a.test https://b.test"


def test_a_bad_subnet_is_one_line(tmp_path: Path) -> None:
    env = {"ATENDEAI_STATE_DIR": str(tmp_path), "ATENDEAI_SUBNET": "10.0.0.0/30"}
    with pytest.raises(AtendeaiError, match="too small"):
        load_config({"ATENDEAI_PROJECT_DIR": str(ROOT)}, env)


_names = st.from_regex(PROFILE_NAME, fullmatch=True).filter(lambda n: len(n) < 30)


@given(st.lists(_names, max_size=6), st.sampled_from([",", " ", ", ", " ,\t"]))
def test_parse_profiles_round_trips_any_separators(names: list[str], sep: str) -> None:
    expected = tuple(dict.fromkeys(names))
    assert parse_profiles(sep.join(names)) == expected
    assert parse_profiles(f"{sep}{sep.join(names)}{sep}") == expected


@given(st.text(min_size=1, max_size=20))
def test_parse_profiles_refuses_or_returns_valid_names(text: str) -> None:
    try:
        names = parse_profiles(text)
    except AtendeaiError as exc:
        assert exc.code == "invalid" and "\n" not in exc.message
        return
    assert all(PROFILE_NAME.match(n) for n in names)


def test_a_mounted_config_file_is_part_of_the_config_hash(tmp_path: Path) -> None:
    """Editing haproxy.cfg must recreate the gateway on the next `up`."""
    conf = tmp_path / "gw.cfg"
    text = "services:\n  gw: {image: a, volumes: ['./gw.cfg:/etc/gw.cfg:ro']}\n"
    conf.write_text("one\n")
    first = _spec(tmp_path, text).services["gw"]
    conf.write_text("two\n")
    assert first.config_hash() != _spec(tmp_path, text).services["gw"].config_hash()


def test_services_without_the_new_fields_keep_their_hash(tmp_path: Path) -> None:
    """No recreation on upgrade: this hash is what the code before profiles, fixed addresses
    and file digests computed for the same service."""
    text = (
        "services:\n"
        '  db: {image: b, volumes: ["data:/d"], environment: {A: "1"},'
        ' ports: ["127.0.0.1:5000:5432"]}\n'
        "volumes:\n  data:\n"
    )
    assert (
        _spec(tmp_path, text).services["db"].config_hash()
        == "86a7e6ae6ac77395e0edf9628e4f8afbbd5718a16c3d81968dfb5962acb000b7"
    )


@pytest.mark.docker
def test_build_makes_only_the_active_profiles_images(tmp_path: Path) -> None:
    """`build` with no profile needs no grafana image (none exists where there is no
    registry); with --profile grafana it asks for it, and fails naming it when absent."""
    from tests.stack_helpers import new_project

    project = new_project(tmp_path, ATENDEAI_GRAFANA_IMAGE="atendeai-test/no-such-grafana:0")
    plain = project.run("build")
    assert plain.returncode == 0, plain.stderr
    assert "grafana" not in plain.stdout
    asked = project.run("build", "--profile", "monitoring", "--profile", "grafana")
    assert asked.returncode != 0
    assert "atendeai-test/no-such-grafana:0" in asked.stderr

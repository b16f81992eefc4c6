"""The shipped Prometheus config, rules and Grafana dashboard, checked offline with promtool.

promtool comes from Debian's `prometheus` package (.ci/run installs it). Without it these tests
are skipped with the reason; with ATENDEAI_TEST_REQUIRE_DOCKER=1 (CI) that is an error
instead, as for the tests that need Docker, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from atendeai_ctl.config import load_config
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.profiles import select_profiles
from atendeai_ctl.stack.spec import load_spec

ROOT = Path(__file__).parent.parent
PROMETHEUS = ROOT / "configs" / "prometheus"
GRAFANA = ROOT / "configs" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "atendeai.json"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTS = [
    rule["alert"]
    for path in RULE_FILES
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
]
REQUIRED_ALERTS = {
    "AtendeaiTargetDown",
    "AtendeaiAuthErrorRatioHigh",
    "AtendeaiAuthLoginLatencyHigh",
    "AtendeaiPostgresDown",
    "AtendeaiRedisDown",
    "AtendeaiAuthDbPoolSaturated",
    "AtendeaiNoRedisReplica",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("ATENDEAI_TEST_PROMTOOL") or shutil.which("promtool")
    if found:
        return found
    reason = "promtool is missing (Debian: apt-get install prometheus)"
    if os.environ.get("ATENDEAI_TEST_REQUIRE_DOCKER", "") not in ("", "0"):
        pytest.fail(f"ATENDEAI_TEST_REQUIRE_DOCKER is set, but {reason}")
    pytest.skip(reason)


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_config_passes_check_config_with_every_rule_file(promtool: str) -> None:
    done = run(promtool, "check", "config", "--lint-fatal", PROMETHEUS / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # A rule_files glob that matches nothing passes too: insist on the files being found.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in done.stdout, done.stdout
    assert len(RULE_FILES) >= 2


def test_the_rules_pass_check_rules_with_lint_fatal(promtool: str) -> None:
    done = run(promtool, "check", "rules", "--lint-fatal", *RULE_FILES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rule_unit_tests_pass(promtool: str) -> None:
    done = run(promtool, "test", "rules", *TEST_FILES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TEST_FILES)


def _alert_cases() -> dict[str, list[list[Any]]]:
    cases: dict[str, list[list[Any]]] = {}
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


def test_every_alert_is_shipped_and_has_a_firing_and_a_quiet_case() -> None:
    assert set(ALERTS) >= REQUIRED_ALERTS
    cases = _alert_cases()
    for alert in ALERTS:
        assert any(cases.get(alert, [])), f"{alert}: no promtool case where it fires"
        assert any(not c for c in cases.get(alert, [])), f"{alert}: no case where it stays quiet"


def _mutated_rules(tmp_path: Path, alert: str, expr: str) -> Path:
    """A copy of configs/prometheus with `alert`'s expression replaced, for the tests to catch."""
    copy_dir = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy_dir)
    path = copy_dir / "rules" / "alerts.yml"
    document = yaml.safe_load(path.read_text())
    changed = copy.deepcopy(document)
    for group in changed["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
    assert changed != document
    path.write_text(yaml.safe_dump(changed))
    return copy_dir


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
@pytest.mark.parametrize("expr", ["vector(1) == 2", "vector(1)"], ids=["never", "always"])
def test_the_unit_tests_catch_an_alert_that_never_or_always_fires(
    promtool: str, tmp_path: Path, alert: str, expr: str
) -> None:
    """Each alert's cases have teeth: one that never fires, or fires all the time, fails."""
    copy_dir = _mutated_rules(tmp_path, alert, expr)
    done = run(promtool, "test", "rules", *sorted((copy_dir / "tests").glob("*.yml")))
    assert done.returncode != 0, done.stdout
    assert alert in done.stdout + done.stderr


# The Grafana dashboard: hand-written JSON (see configs/grafana/README.md), checked here.


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target, with Grafana's $__rate_interval made concrete."""
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", "1m"))
        for panel in panels()
        for target in panel["targets"]
    ]


def test_the_dashboard_is_a_provisionable_classic_model() -> None:
    doc = dashboard()
    assert 8 <= len(doc["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", doc["uid"])
    assert doc["title"] and isinstance(doc["schemaVersion"], int)
    assert doc["templating"] == {"list": []}, "a variable would need substituting in the tests"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uid = datasources[0]["uid"]
    cells: set[tuple[int, int]] = set()
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()


def test_the_dashboard_covers_the_stack() -> None:
    text = "\n".join(expr for _, expr in panel_queries())
    for needed in (
        "atendeai_auth_requests_total",
        "job:atendeai_auth_errors:ratio_rate5m",
        "job:atendeai_auth_login_latency_seconds:p50_5m",
        "job:atendeai_auth_login_latency_seconds:p99_5m",
        "atendeai_auth_logins_total",
        'status="429"',
        "pg_stat_database_numbackends",
        "pg_stat_database_xact_commit",
        "redis_memory_used_bytes",
        "redis_commands_processed_total",
    ):
        assert needed in text, needed


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    """promtool has no PromQL parser command of its own in 2.42: each query becomes a recording
    rule, which `check rules` parses (a bad one fails with its line and column)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel{i}", "expr": expr}
                    for i, (_, expr) in enumerate(panel_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = run(promtool, "check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The check has teeth: a broken query fails it.
    rules["groups"][0]["rules"][0]["expr"] = "sum by (route (rate(x[1m]))"
    path.write_text(yaml.safe_dump(rules))
    assert run(promtool, "check", "rules", path).returncode != 0


# The compose side of the monitoring profile, as `atendeai up` reads it.


def _spec(tmp_path: Path, **settings: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
    env["ATENDEAI_STATE_DIR"] = str(tmp_path)
    cfg = load_config({"ATENDEAI_PROJECT_DIR": str(ROOT), **settings}, env)
    cfg = cfg.with_secrets(generate=True)
    return cfg, load_spec(cfg.compose_file, cfg.interpolation_env(), cfg.project)


def test_the_monitoring_services_mount_the_shipped_files_where_the_images_read_them(
    tmp_path: Path,
) -> None:
    _, spec = _spec(tmp_path)
    services = spec.services
    for name in ("prometheus", "postgres-exporter", "redis-exporter"):
        assert services[name].profiles == ("monitoring",), name
    assert services["grafana"].profiles == ("grafana",)
    mounts = {m.target: m for m in services["prometheus"].mounts}
    assert Path(mounts["/etc/prometheus/prometheus.yml"].source) == PROMETHEUS / "prometheus.yml"
    assert Path(mounts["/etc/prometheus/rules"].source) == PROMETHEUS / "rules"
    assert all(m.read_only for m in mounts.values() if m.kind == "bind")
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yml"]  # relative to /etc/prometheus
    [port] = services["prometheus"].ports
    assert (port.host_ip, port.target) == ("127.0.0.1", 9090)
    grafana = {m.target: m for m in services["grafana"].mounts}
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "atendeai.yml").read_text()
    )["providers"][0]
    assert Path(grafana[provider["options"]["path"]].source) == DASHBOARD.parent
    assert Path(grafana["/etc/grafana/provisioning"].source) == GRAFANA / "provisioning"
    # Every job Prometheus scrapes names a service of the file (Docker DNS resolves those).
    hosts = {
        target.split(":")[0]
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    } | {
        name
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert hosts - {"localhost"} <= set(services) | {"redis-replica"}
    assert {"auth", "gateway", "postgres-exporter", "redis-exporter"} <= hosts


def test_the_monitoring_volumes_exist_only_with_their_profiles(tmp_path: Path) -> None:
    _, spec = _spec(tmp_path)
    assert {"promdata", "grafanadata"} <= set(spec.volumes)
    core = select_profiles(spec, []).volumes
    assert "promdata" not in core and "grafanadata" not in core and "pgdata" in core
    assert "promdata" in select_profiles(spec, ["monitoring"]).volumes
    assert "grafanadata" in select_profiles(spec, ["monitoring", "grafana"]).volumes


def test_grafana_needs_the_monitoring_profile(tmp_path: Path) -> None:
    _, spec = _spec(tmp_path)
    assert "grafana" not in select_profiles(spec, ["monitoring"]).services
    with pytest.raises(AtendeaiError, match="prometheus") as refused:
        select_profiles(spec, ["grafana"])
    assert refused.value.hint and "--profile monitoring" in refused.value.hint
    both = select_profiles(spec, ["monitoring", "grafana"]).services
    assert {"grafana", "prometheus", "postgres-exporter", "redis-exporter"} <= set(both)


def test_exporter_credentials_are_in_the_environment_not_argv(tmp_path: Path) -> None:
    cfg, spec = _spec(tmp_path)
    monitor = cfg.get("ATENDEAI_MONITOR_DB_PASSWORD")
    redis = cfg.get("ATENDEAI_REDIS_PASSWORD")
    assert monitor and redis and monitor != cfg.get("ATENDEAI_APP_DB_PASSWORD")
    pg = spec.services["postgres-exporter"]
    assert pg.env["DATA_SOURCE_USER"] == "atendeai_monitor"
    assert pg.env["DATA_SOURCE_PASS"] == monitor
    assert spec.services["redis-exporter"].env["REDIS_PASSWORD"] == redis
    assert spec.services["migrate"].env["ATENDEAI_MONITOR_DB_PASSWORD"] == monitor
    for name in ("prometheus", "postgres-exporter", "redis-exporter", "grafana"):
        service = spec.services[name]
        argv = " ".join((service.entrypoint or ()) + (service.command or ()))
        assert monitor not in argv and redis not in argv, name

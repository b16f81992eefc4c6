"""Secrets never reach what operators paste into tickets: failure reports, service logs,
status documents. Checked where a leak is most likely - when things fail.

On the local runtime (no engine needed): Redis dies under a running auth service (which then
answers 503 and logs why), and `up` is run against a data directory initialised with another
PostgreSQL password (what a changed state dir does), so it fails with a full report. Every
generated secret - the old and the new password included - is looked for in all of it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.secret_helpers import leaked, mask, project_secrets
from tests.test_local_runtime import (
    force_cleanup,
    local_dir,
    local_project,
    pids,
    running,
    scratch,
    up_ok,
)

NEW_PASSWORD = "a-new-postgres-password-" + os.urandom(12).hex()


def _replace_secret(state: Path, key: str, value: str) -> None:
    path = state / "secrets.env"
    lines = [
        f"{key}={value}" if line.startswith(f"{key}=") else line
        for line in path.read_text().splitlines()
    ]
    assert f"{key}={value}" in lines
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.local
def test_failure_reports_and_logs_hold_no_secret() -> None:
    with scratch() as base:
        project = local_project(base)
        try:
            up_ok(project)
            secrets = project_secrets(project.state_dir, project.name)
            texts: dict[str, str] = {}

            # Redis dies: auth fails closed, answers 503 and logs it
            redis_pid = pids(project)["redis"]
            os.kill(redis_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while running(redis_pid):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            url = f"http://127.0.0.1:{project.env['ATENDEAI_AUTH_PORT']}"
            with httpx.Client(base_url=url, timeout=10) as http:
                assert http.get("/health/ready").status_code == 503
                login = http.post(
                    "/auth/login",
                    json={"clinic": "x", "email": "a@x.test", "password": "wrong password!"},
                )
                assert login.status_code == 503
                texts["503 answer"] = login.text
            up_ok(project)  # heals redis

            # the data directory was initialised with another password: `up` fails, reports
            _replace_secret(project.state_dir / project.name, "ATENDEAI_POSTGRES_PASSWORD",
                            NEW_PASSWORD)  # fmt: skip
            secrets["ATENDEAI_POSTGRES_PASSWORD (new)"] = NEW_PASSWORD
            short = {"ATENDEAI_TIMEOUT": "10"}
            as_json = project.run("up", "--json", extra_env=short)
            assert as_json.returncode == 1, as_json.stderr
            report = json.loads(as_json.stdout)
            failure = report["failure"]
            assert report["ok"] is False and failure is not None
            assert failure["logs"] or failure["health_output"]  # something to leak through
            texts["up --json stdout"] = as_json.stdout
            texts["up --json stderr"] = as_json.stderr
            human = project.run("up", extra_env=short)
            assert human.returncode == 1
            assert f"service {failure['service']} failed" in human.stderr
            texts["up stdout"] = human.stdout
            texts["up stderr"] = human.stderr

            status = project.run("status", "--json")
            texts["status --json"] = status.stdout + status.stderr
            for service in ("postgres", "redis", "migrate", "auth"):
                logs = project.run("logs", service)
                texts[f"logs {service}"] = logs.stdout + logs.stderr
            assert '"status":503' in texts["logs auth"]  # the outage is in auth's log
            log_files = sorted((local_dir(project) / "logs").glob("*.log"))
            assert {p.stem for p in log_files} >= {"postgres", "redis", "migrate", "auth"}
            for path in log_files:
                texts[str(path)] = path.read_text(errors="replace")

            for where, text in texts.items():
                assert leaked(text, secrets) == [], f"{where}: {mask(text, secrets)[-2000:]}"
        finally:
            force_cleanup(project)

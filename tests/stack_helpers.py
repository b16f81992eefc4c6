"""Run the real `atendeai` CLI against the real Docker engine, one isolated project per test."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import free_port

STANDINS = {
    "ATENDEAI_POSTGRES_IMAGE": "atendeai-standin/postgres:15",
    "ATENDEAI_REDIS_IMAGE": "atendeai-standin/redis:7",
    "ATENDEAI_PYTHON_IMAGE": "atendeai-standin/python:3.11",
    "ATENDEAI_HAPROXY_IMAGE": "atendeai-standin/haproxy:2.6",
    "ATENDEAI_PROMETHEUS_IMAGE": "atendeai-standin/prometheus:2.42",
    "ATENDEAI_POSTGRES_EXPORTER_IMAGE": "atendeai-standin/postgres-exporter:0.11",
    "ATENDEAI_REDIS_EXPORTER_IMAGE": "atendeai-standin/redis-exporter:1.45",
}


ROOT = Path(__file__).parent.parent


def docker_unavailable() -> str | None:
    """Why the tests marked `docker` cannot run here, in one line; None when they can.

    They need an engine that answers and, for each image setting, the image it names, the
    stand-in or the default image already present: this machine has no registry to pull from.
    """
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        return f"no Docker engine answers at {where}: {detail}"
    defaults = {}
    for line in (ROOT / "configs" / "atendeai.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in STANDINS:
            defaults[key.strip()] = value.strip()
    missing = []
    for key, standin in STANDINS.items():
        names = [os.environ[key]] if os.environ.get(key) else [standin, defaults.get(key, "")]
        if not any(name and _has_image(client, name) for name in names):
            missing.append(names[0])
    if missing:
        return f"images missing: {', '.join(missing)} (scripts/offline-images builds the stand-ins)"
    return None


def _has_image(client: Any, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def image_env() -> dict[str, str]:
    """Stand-in images where the official ones are absent (no registry here)."""
    import docker

    client = docker.from_env()
    env = {}
    for key, standin in STANDINS.items():
        if os.environ.get(key):
            env[key] = os.environ[key]
            continue
        try:
            client.images.get(standin)
            env[key] = standin
        except docker.errors.ImageNotFound:
            pass
    return env


@dataclass
class Project:
    name: str
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATENDEAI_")}
        env.update(self.env)
        env.update(extra_env or {})
        return subprocess.run(
            [sys.executable, "-m", "atendeai_ctl", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.stdout, done.stderr
        return json.loads(done.stdout)


_SUBNETS = itertools.count()


def unique_subnet() -> str:
    """A /24 no other project of this test run holds at the same time. The derived one (a hash
    of the project name into 8192 choices) can meet another live test project's now and then;
    outside 10.96.0.0/11, and per process, so parallel runs on one engine differ too."""
    return f"10.{160 + os.getpid() % 64}.{next(_SUBNETS) % 256}.0/24"


def new_project(tmp_path: Path, *, prefix: str = "t", images: bool = True, **extra: str) -> Project:
    """An isolated project: its own name, state dir and free ports (and the stand-in images
    when `images`; the local runtime needs none)."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    env = {
        "ATENDEAI_PROJECT": name,
        "ATENDEAI_STATE_DIR": str(tmp_path / "state"),
        "ATENDEAI_POSTGRES_PORT": str(free_port()),
        "ATENDEAI_REDIS_PORT": str(free_port()),
        "ATENDEAI_AUTH_PORT": str(free_port(4)),  # replica k publishes port + k - 1
        "ATENDEAI_TIMEOUT": "90",
        "ATENDEAI_SUBNET": unique_subnet(),
        **(image_env() if images else {}),
        **extra,
    }
    return Project(name, tmp_path / "state", env)


def secrets(project: Project) -> dict[str, str]:
    """The project's generated secrets, as `up` wrote them to its state dir."""
    text = (project.state_dir / project.name / "secrets.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def admin_url(project: Project) -> str:
    """The stack's PostgreSQL as its owner, on the published port."""
    password = secrets(project)["ATENDEAI_POSTGRES_PASSWORD"]
    port = project.env["ATENDEAI_POSTGRES_PORT"]
    return f"postgresql://atendeai:{password}@127.0.0.1:{port}/atendeai"


def project_resources(name: str) -> dict[str, list[str]]:
    """Everything on the engine that carries the project's label, sorted by name (the
    engine lists volumes in no fixed order: two reads of one project compared unequal)."""
    import docker

    client = docker.from_env()
    label = {"label": f"com.docker.compose.project={name}"}
    return {
        "containers": sorted(c.name for c in client.containers.list(all=True, filters=label)),
        "networks": sorted(n.name for n in client.networks.list(filters=label)),
        "volumes": sorted(v.name for v in client.volumes.list(filters=label)),
    }


def remove_project(name: str) -> None:
    import docker

    client = docker.from_env()
    label = {"label": f"com.docker.compose.project={name}"}
    for c in client.containers.list(all=True, filters=label):
        c.remove(force=True)
    for n in client.networks.list(filters=label):
        n.remove()
    for v in client.volumes.list(filters=label):
        v.remove(force=True)

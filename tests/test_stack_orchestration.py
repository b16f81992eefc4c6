"""Orchestration rules on a tiny stack of busybox services: readiness that recovers, dependency
conditions, one-shot jobs, failure reports, pulls with progress, two projects side by side."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.stack_helpers import Project, new_project, project_resources, remove_project

pytestmark = pytest.mark.docker
BUSYBOX = "atendeai-test/busybox:1"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """A 2 MB image made from Debian's static busybox: no registry needed."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(BUSYBOX)
        return BUSYBOX
    except docker.errors.ImageNotFound:
        pass
    binary = Path("/bin/busybox").read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
        for applet in ("sh", "sleep", "touch", "test", "echo", "cat", "false", "true"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    client.api.import_image_from_data(buf.getvalue(), repository=BUSYBOX.split(":")[0], tag="1")
    return BUSYBOX


def _project_dir(tmp_path: Path, compose: str) -> Path:
    root = tmp_path / "proj"
    (root / "compose").mkdir(parents=True)
    shutil.copytree(ROOT / "configs", root / "configs")
    (root / "compose" / "docker-compose.yml").write_text(textwrap.dedent(compose))
    return root


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = new_project(tmp_path)
    yield p
    remove_project(p.name)


TINY = """
services:
  slow:
    image: {image}
    command: ["sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 1000"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 30s
      retries: 1
  job:
    image: {image}
    command: ["sh", "-c", "echo migrated"]
    depends_on:
      slow:
        condition: service_healthy
  app:
    image: {image}
    command: ["sleep", "1000"]
    stop_signal: SIGKILL
    ports:
      - "127.0.0.1:${{ATENDEAI_AUTH_PORT}}:8080"
    depends_on:
      job:
        condition: service_completed_successfully
"""


def test_unhealthy_that_recovers_is_not_a_failure_and_order_holds(
    project: Project, tmp_path: Path, busybox_image: str
) -> None:
    root = _project_dir(tmp_path, TINY.format(image=busybox_image))
    started = time.monotonic()
    done = project.run("up", "--project-dir", str(root), "--timeout", "20")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    # Probed actively: ready soon after the 2 s the service needs, not at its 30 s interval.
    assert elapsed < 15
    lines = done.stderr.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(p))
        for p in (
            "slow: healthy",
            "job: starting",
            "job: completed",
            "app: starting",
            "app: started",
        )
    ]
    assert order == sorted(order)
    status = json.loads(project.run("status", "--project-dir", str(root), "--json").stdout)
    states = {s["name"]: (s["state"], s["exit_code"]) for s in status["services"]}
    assert states == {"slow": ("running", None), "job": ("exited", 0), "app": ("running", None)}


def test_failure_reports_exit_code_and_logs_and_leaves_others(
    project: Project, tmp_path: Path, busybox_image: str
) -> None:
    broken = TINY.replace('echo migrated"', 'echo boom-from-job; exit 3"')
    root = _project_dir(tmp_path, broken.format(image=busybox_image))
    done = project.run("up", "--project-dir", str(root), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    failure = report["failure"]
    assert failure["service"] == "job" and failure["exit_code"] == 3
    assert "boom-from-job" in failure["logs"]
    results = {s["name"]: s["result"] for s in report["services"]}
    assert results == {"slow": "healthy", "job": "failed", "app": "skipped"}
    # Left for inspection, not torn down.
    assert f"{project.name}-slow-1" in project_resources(project.name)["containers"]
    human = project.run("up", "--project-dir", str(root))
    assert "boom-from-job" in human.stderr and "exited with code 3" in human.stderr


def test_timeout_reports_the_health_output(
    project: Project, tmp_path: Path, busybox_image: str
) -> None:
    never = TINY.replace(
        '["CMD", "test", "-f", "/tmp/ready"]', '["CMD-SHELL", "echo not-yet; false"]'
    )
    root = _project_dir(tmp_path, never.format(image=busybox_image))
    done = project.run("up", "--project-dir", str(root), "--timeout", "2", "--json")
    assert done.returncode == 1
    failure = json.loads(done.stdout)["failure"]
    assert failure["service"] == "slow"
    assert "not ready after 2s" in failure["reason"]
    assert failure["health_output"] == "not-yet"


def test_two_projects_side_by_side(tmp_path: Path, busybox_image: str) -> None:
    root = _project_dir(tmp_path, TINY.format(image=busybox_image))
    first, second = new_project(tmp_path / "a"), new_project(tmp_path / "b")
    try:
        for p in (first, second):
            assert p.run("up", "--project-dir", str(root)).returncode == 0
        for p in (first, second):
            names = project_resources(p.name)["containers"]
            assert sorted(names) == sorted(f"{p.name}-{s}-1" for s in ("slow", "job", "app"))
        assert first.run("down", "--project-dir", str(root)).returncode == 0
        assert project_resources(first.name)["containers"] == []
        assert second.run("status", "--project-dir", str(root)).returncode == 0
    finally:
        remove_project(first.name)
        remove_project(second.name)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A real local registry (Debian's docker-registry) on 127.0.0.1."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_missing_image_is_pulled_with_progress(
    project: Project, tmp_path: Path, busybox_image: str, registry: str
) -> None:
    import docker

    client = docker.from_env()
    remote = f"{registry}/atendeai/busybox:{project.name}"
    client.images.get(busybox_image).tag(remote)
    for line in client.api.push(remote, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(remote)
    root = _project_dir(tmp_path, TINY.format(image=remote))
    done = project.run("up", "--project-dir", str(root))
    assert done.returncode == 0, done.stderr
    assert f"pull {remote}" in done.stderr
    client.api.inspect_image(remote)
    remove_project(project.name)
    client.images.remove(remote)

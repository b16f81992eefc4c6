"""The locks in requirements/ are one resolution of pyproject.toml: dev.txt (test and local
extras, what CI and README's test command install) and runtime.txt (what the auth image gets).
A dependency changed in pyproject.toml without `scripts/lock` fails here, not on a machine."""

from __future__ import annotations

import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from atendeai_ctl.stack import images
from tests.stack_helpers import new_project, remove_project

ROOT = Path(__file__).parent.parent
LOCKS = ROOT / "requirements"


def _entries(lock: Path) -> dict[str, tuple[str, str, frozenset[str]]]:
    """name -> (version, marker, hashes) for every pin in a hashed requirements file."""
    entries = {}
    for line in lock.read_text().replace("\\\n", " ").splitlines():
        if not line or line[0] in "# -":
            continue
        requirement, *hashes = line.split("--hash=")
        pin, _, marker = requirement.partition(";")
        name, _, version = pin.strip().partition("==")
        assert version and hashes, f"{lock.name}: not a hashed pin: {line[:80]}"
        entries[canonicalize_name(name)] = (
            version,
            marker.strip(),
            frozenset(h.strip() for h in hashes),
        )
    return entries


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _assert_satisfied(
    requirements: list[str], pins: dict[str, tuple[str, str, frozenset[str]]]
) -> None:
    """Each requirement's name is pinned within its range. (That the pins are a closure, extras
    included, is what `pip check` in scripts/venv and the image's own `pip install` verify.)"""
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in the lock: run scripts/lock"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"lock pins {req.name}=={version}, outside {req.specifier}: run scripts/lock"
        )


def test_runtime_lock_is_the_dev_lock_restricted_to_runtime_dependencies() -> None:
    dev, runtime = _entries(LOCKS / "dev.txt"), _entries(LOCKS / "runtime.txt")
    assert runtime, "runtime.txt pins nothing"
    for name, entry in runtime.items():
        assert dev.get(name) == entry, f"{name}: runtime.txt and dev.txt disagree"
    # Test-only tools stay out of the image.
    assert not {"pytest", "schemathesis", "mypy", "ruff", "hatchling"} & set(runtime)


def test_locks_satisfy_pyproject() -> None:
    project = _pyproject()
    runtime = _entries(LOCKS / "runtime.txt")
    dev = _entries(LOCKS / "dev.txt")
    _assert_satisfied(project["dependencies"], runtime)
    extras = project["optional-dependencies"]
    dev_in = [
        line for line in (LOCKS / "dev.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    _assert_satisfied(project["dependencies"] + extras["test"] + extras["local"] + dev_in, dev)


def test_pytest_stays_below_the_release_that_breaks_schemathesis() -> None:
    """pytest 9.2 removed Item._nodeid, which schemathesis's plugin reads (AttributeError in
    tests/test_auth_openapi.py); users installing the test extra must not get it either."""
    test_extra = [Requirement(r) for r in _pyproject()["optional-dependencies"]["test"]]
    pytest_req = next(r for r in test_extra if r.name == "pytest")
    assert not pytest_req.specifier.contains("9.2.0")
    assert pytest_req.specifier.contains(_entries(LOCKS / "dev.txt")["pytest"][0])


def test_image_pins_decide_markers_for_the_image_python_not_the_host() -> None:
    lock = (LOCKS / "runtime.txt").read_text()
    old = images.pinned_requirements(lock, "3.11.2", "x86_64")
    new = images.pinned_requirements(lock, "3.11.7", "x86_64")
    names_old = {line.split("==")[0] for line in old}
    names_new = {line.split("==")[0] for line in new}
    assert names_old - names_new == {"async-timeout"}  # redis: python_full_version < '3.11.3'
    assert names_new <= names_old
    assert not {"colorama", "pywin32", "tzdata"} & names_old  # win32 only
    assert {"uvloop", "psycopg-binary", "redis", "starlette"} <= names_new
    runtime = _entries(LOCKS / "runtime.txt")
    for line in old:
        pin, *hashes = line.split(" --hash=")
        name, _, version = pin.partition("==")
        assert (version, frozenset(hashes)) == runtime[canonicalize_name(name)][::2], line
        assert ";" not in line


def test_the_package_finds_the_runtime_lock() -> None:
    assert images.runtime_lock() == LOCKS / "runtime.txt"


@pytest.mark.docker
def test_auth_image_holds_exactly_the_locked_versions(tmp_path: Path) -> None:
    image = f"atendeai-test/auth-lock-{uuid.uuid4().hex[:8]}:1"
    project = new_project(tmp_path, ATENDEAI_AUTH_IMAGE=image)
    try:
        built = project.run("build")
        assert built.returncode == 0, built.stderr
        python = project.env["ATENDEAI_PYTHON_IMAGE"]
        probe = subprocess.run(
            ["docker", "run", "--rm", image, "python", "-c",
             "import platform; print(platform.python_version(), platform.machine())"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        version, machine = probe.stdout.split()
        base = subprocess.run(
            ["docker", "run", "--rm", python, "python", "-m", "pip", "list", "--format=freeze"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        done = subprocess.run(
            ["docker", "run", "--rm", image, "python", "-m", "pip", "list", "--format=freeze"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        remove_project(project.name)
    installed = set(done.stdout.split()) - set(base.stdout.split())
    lock = (LOCKS / "runtime.txt").read_text()
    wanted = {line.split()[0] for line in images.pinned_requirements(lock, version, machine)}
    normalised = {
        f"{canonicalize_name(n)}=={v}" for n, _, v in (p.partition("==") for p in installed)
    }
    assert normalised == wanted

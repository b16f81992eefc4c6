"""Tests marked `docker` skip with one reason when no engine answers, and CI's
ATENDEAI_TEST_REQUIRE_DOCKER=1 turns that skip into an error, so a green run cannot hide them.

Each test runs pytest in a subprocess on a two-test suite that uses tests/conftest.py's hook,
with DOCKER_HOST pointing at a socket nobody listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SUITE = """
import pytest


@pytest.mark.docker
def test_needs_docker():
    pass


def test_plain():
    pass
"""


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    docker: needs Docker\n")
    (suite / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
    )
    (suite / "test_suite.py").write_text(SUITE)
    full_env = {k: v for k, v in os.environ.items() if k != "ATENDEAI_TEST_REQUIRE_DOCKER"}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", *args],
        cwd=suite, env=full_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def dead_docker_host(tmp_path: Path) -> str:
    """A unix socket that exists but is not listening: connecting is refused at once."""
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return f"unix://{path}"


@pytest.mark.parametrize("require", [None, "0"])
def test_docker_tests_skip_with_one_line_reason_when_no_engine_answers(
    tmp_path: Path, dead_docker_host: str, require: str | None
) -> None:
    extra = {} if require is None else {"ATENDEAI_TEST_REQUIRE_DOCKER": require}
    done = _run(tmp_path, DOCKER_HOST=dead_docker_host, **extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout
    assert f"no Docker engine answers at {dead_docker_host}" in skipped[0]


def test_require_docker_turns_the_skip_into_an_error_before_any_test_runs(
    tmp_path: Path, dead_docker_host: str
) -> None:
    done = _run(tmp_path, DOCKER_HOST=dead_docker_host, ATENDEAI_TEST_REQUIRE_DOCKER="1")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()
    assert len(error) == 1, done.stderr
    assert error[0].startswith(
        "ERROR: ATENDEAI_TEST_REQUIRE_DOCKER is set and 1 selected tests need Docker, "
        f"but no Docker engine answers at {dead_docker_host}: "
    ), done.stderr
    assert "Connection refused" in error[0]
    assert "passed" not in done.stdout and "skipped" not in done.stdout


def test_require_docker_is_satisfied_when_docker_tests_are_deselected(
    tmp_path: Path, dead_docker_host: str
) -> None:
    done = _run(
        tmp_path, "-m", "not docker", DOCKER_HOST=dead_docker_host, ATENDEAI_TEST_REQUIRE_DOCKER="1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 deselected" in done.stdout


@pytest.mark.docker
def test_missing_image_is_named_in_the_skip(tmp_path: Path) -> None:
    done = _run(tmp_path, ATENDEAI_POSTGRES_IMAGE="atendeai-test/no-such-image:0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert "images missing: atendeai-test/no-such-image:0" in done.stdout


@pytest.mark.docker
def test_docker_tests_run_when_the_engine_and_images_are_here(tmp_path: Path) -> None:
    done = _run(tmp_path, ATENDEAI_TEST_REQUIRE_DOCKER="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout and "skipped" not in done.stdout

"""The local runtime reading a one-shot process's exit.

CI once failed `up` with "migrate: failed exited with code None": the job exited between two
reads of its liveness (`Popen.poll()`, then /proc), so its status read as exited with no code.
The tests read a job that is a zombie (exited, not yet reaped), and then let many threads
inspect one exiting job at once: every status that says "exited" must carry the code. The
second test failed on the old code in its first round.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atendeai_ctl.stack.local_runtime import LocalRuntime
from atendeai_ctl.stack.spec import Service, StackSpec, load_spec
from tests.test_local_runtime import scratch


def _job(code: int, delay: float) -> str:
    return json.dumps(
        {
            "x-atendeai": {"schema": 1},
            "services": {
                "job": {
                    "image": "unused:0",
                    "restart": "no",
                    "x-atendeai": {
                        "local": {
                            "kind": "python",
                            "command": [
                                "python",
                                "-c",
                                f"import sys, time; time.sleep({delay}); sys.exit({code})",
                            ],
                        }
                    },
                }
            },
        }
    )


@pytest.fixture
def runtime() -> Iterator[tuple[LocalRuntime, Path]]:
    with scratch() as base:
        yield LocalRuntime("sup", base / "state"), base


def _started(
    runtime: LocalRuntime, base: Path, code: int, delay: float
) -> tuple[StackSpec, Service]:
    (base / "docker-compose.yml").write_text(_job(code, delay))
    spec = load_spec(base / "docker-compose.yml", {}, "sup")
    service = spec.services["job"]
    runtime.prepare(spec)
    runtime.ensure(spec, service)
    runtime.start(service)
    return spec, service


@pytest.mark.local
def test_an_exited_job_not_yet_reaped_reads_as_exited_with_its_code(
    runtime: tuple[LocalRuntime, Path],
) -> None:
    local, base = runtime
    spec, service = _started(local, base, 3, 0.0)
    child = local._children[service.instance_name]
    record = local.records.load(service.instance_name)
    assert record is not None
    deadline = time.monotonic() + 10
    while record.alive():  # now a zombie: exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status = local.inspect(service)
    assert child.returncode == 3  # reaped by inspect itself
    assert (status.state, status.exit_code) == ("exited", 3)
    assert local.inspect(service).exit_code == 3  # and the code was kept
    local.down(spec, volumes=True)


def _watch(local: LocalRuntime, service: Service, seen: list[tuple[str, int | None]]) -> None:
    stop = time.monotonic() + 10
    while time.monotonic() < stop:
        status = local.inspect(service)
        if status.state == "exited":
            seen.append((status.state, status.exit_code))
            return


@pytest.mark.local
def test_many_threads_inspecting_an_exiting_job_all_see_its_code(
    runtime: tuple[LocalRuntime, Path],
) -> None:
    local, base = runtime
    for round_ in range(5):
        spec, service = _started(local, base, 0, 0.2)
        seen: list[tuple[str, int | None]] = []

        threads = [threading.Thread(target=_watch, args=(local, service, seen)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [("exited", 0)] * 8, f"round {round_}: {seen}"
        local.down(spec, volumes=True)
        assert local.records.load(service.instance_name) is None

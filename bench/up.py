"""Time-to-all-healthy of `atendeai up` from cold volumes, against docker-compose (1.29) on the
same compose file (`up -d`, then polling the engine until every container is healthy and the
one-shot job has exited 0). Runs alternate; medians and the ratio are printed. Each run also
times `atendeai up --runtime local` (the embedded runtime) from a cold state dir.

    python bench/up.py [--runs 3] [--local-only]

Needs a Docker engine and the images (scripts/offline-images prints the settings to export),
except with --local-only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
ONE_SHOT = {"migrate"}


def atendeai(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atendeai_ctl", *args],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def compose(*args: str, env: dict[str, str], env_file: Path, project: str) -> None:
    subprocess.run(
        ["docker-compose", "-p", project, "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
         *args],
        env=env, capture_output=True, check=True,
    )  # fmt: skip


def all_healthy(project: str, expected: int) -> bool:
    import docker

    containers = docker.from_env().api.containers(
        all=True, filters={"label": [f"com.docker.compose.project={project}"]}
    )
    if len(containers) < expected:
        return False
    for c in containers:
        service = c["Labels"]["com.docker.compose.service"]
        info = docker.from_env().api.inspect_container(c["Id"])["State"]
        if service in ONE_SHOT:
            if info["Status"] != "exited" or info["ExitCode"] != 0:
                return False
        elif (info.get("Health") or {}).get("Status", "healthy") != "healthy":
            return False
    return True


def time_atendeai(env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = atendeai("up", env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"atendeai up failed:\n{done.stderr}")
    return elapsed


def time_local(env: dict[str, str]) -> float:
    """The local runtime from nothing: a fresh state dir, so initdb is part of the time."""
    with tempfile.TemporaryDirectory() as cold:
        local_env = {**env, "ATENDEAI_STATE_DIR": cold, "ATENDEAI_RUNTIME": "local"}
        try:
            return time_atendeai(local_env)
        finally:
            atendeai("down", "--volumes", "--yes", env=local_env)


def time_compose(env: dict[str, str], env_file: Path, project: str, services: int) -> float:
    started = time.perf_counter()
    compose("up", "-d", env=env, env_file=env_file, project=project)
    deadline = started + 300
    while not all_healthy(project, services):
        if time.perf_counter() > deadline:
            raise SystemExit("docker-compose: not healthy after 300 s")
        time.sleep(0.1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--local-only", action="store_true", help="Only the local runtime.")
    args = parser.parse_args()
    project = "atendeaibench"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "ATENDEAI_PROJECT": project,
            "ATENDEAI_STATE_DIR": tmp,
            "ATENDEAI_POSTGRES_PORT": os.environ.get("ATENDEAI_POSTGRES_PORT", "25432"),
            "ATENDEAI_REDIS_PORT": os.environ.get("ATENDEAI_REDIS_PORT", "26379"),
            "ATENDEAI_AUTH_PORT": os.environ.get("ATENDEAI_AUTH_PORT", "23001"),
        }
        local: list[float] = []
        if args.local_only:
            for run in range(args.runs):
                local.append(time_local(env))
                print(f"run {run + 1}: atendeai --runtime local {local[-1]:.2f}s")
            print(f"atendeai up --runtime local (cold) median {statistics.median(local):.2f}s")
            return
        built = atendeai("build", env=env)  # images are not part of what is timed
        if built.returncode != 0:
            raise SystemExit(built.stderr)
        env_file = Path(tmp) / "compose.env"
        env_file.write_text(atendeai("config", "env", env=env).stdout)
        services = 4
        ours: list[float] = []
        theirs: list[float] = []
        for run in range(args.runs):
            atendeai("down", "--volumes", "--yes", env=env)
            ours.append(time_atendeai(env))
            atendeai("down", "--volumes", "--yes", env=env)
            theirs.append(time_compose(env, env_file, project, services))
            compose("down", "-v", env=env, env_file=env_file, project=project)
            local.append(time_local(env))
            print(
                f"run {run + 1}: atendeai {ours[-1]:.2f}s  docker-compose {theirs[-1]:.2f}s  "
                f"local {local[-1]:.2f}s"
            )
        atendeai("down", "--volumes", "--yes", env=env)
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"atendeai up        median {ours_median:.2f}s")
    print(f"docker-compose up  median {theirs_median:.2f}s")
    print(f"atendeai up --runtime local (cold) median {statistics.median(local):.2f}s")
    print(f"ratio atendeai/docker-compose: {ours_median / theirs_median:.2f} (target <= 0.60)")


if __name__ == "__main__":
    main()

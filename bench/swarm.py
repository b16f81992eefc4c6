"""Time to converged from nothing on a swarm: `atendeai up --runtime swarm` against
`docker stack deploy` of the same stack, same run, as a ratio.

    python bench/swarm.py [--rounds 3]

Starts a one-node throwaway swarm (tests/swarm_helpers.py: Debian's dockerd in a container,
never the host engine) with the stand-in images and this checkout's auth image, then per
round, alternating which goes first:

  atendeai      `atendeai up --runtime swarm` in a fresh project (new secrets, no data), wall
                time of the command, which returns when every service is ready;
  stack-deploy  `docker stack deploy` of the same stack converted to the file format it
                accepts, then polled every 200 ms (as docker/cli's progress.go does) until
                postgres, redis and auth run with every task healthy and the migrate task is
                complete; wall time of both.

Each project is removed (services, network, secrets, volumes) between rounds; the cluster at
the end. Figures, never assertions.

What the file for `docker stack deploy` had to change (this machine's CLI is Debian's 20.10):
- `depends_on` is dropped: the 20.10 CLI's schema takes only the list form and never uses it
  (moby#40364), so auth starts at once and restarts until the migration has run;
- the migrate job is a replicated service with `restart_policy: on-failure` (delay 1 s):
  `replicated-job` is newer than this CLI (PR docker/cli#2907), and with `none` it started
  before PostgreSQL was in DNS, failed, and the stack never converged (tried first); it
  completes once a retry finds the database. `--detach=false` does not exist here (v26), so
  convergence is polled by this script, as the CLI would;
- `profiles`, `build`, `restart`, `x-atendeai` are left out (unsupported or ignored);
- the JWT key directory becomes one `secrets:` entry per file (a host directory cannot be
  bound on a swarm), the passwords stay in the environment (stack deploy has no `_FILE` step);
- ports long syntax `mode: host`, `endpoint_mode: dnsrr`, the data-node constraint and the
  healthcheck interval (at most 2 s, retries scaled), as `atendeai` sets them (no IPVS here),
  so both wait on the same healthchecks and only the orchestration differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack_helpers import Project, new_project  # noqa: E402
from tests.swarm_helpers import Cluster, stack_images, start_cluster  # noqa: E402

POLL_S = 0.2
TIMEOUT_S = 300.0


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _literal(value: Any) -> Any:
    """A value as is: the file is interpolated again by the docker CLI, so `$` is doubled."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def stack_file(project: Project, path: Path) -> dict[str, Any]:
    """The project's stack in the format `docker stack deploy` (20.10) accepts."""
    from atendeai_ctl.config import active_profiles, load_config
    from atendeai_ctl.stack.profiles import select_profiles
    from atendeai_ctl.stack.project import load_stack, prepare_state
    from atendeai_ctl.stack.swarm_convert import (
        DATA_CONSTRAINT,
        HEALTH_INTERVAL_S,
        is_stateful,
        publishes,
    )

    cfg = prepare_state(load_config(environ=project.env))
    spec = select_profiles(load_stack(cfg), active_profiles(cfg))
    services: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for service in spec.services.values():
        job = service.restart == "no"
        out: dict[str, Any] = {"image": service.image, "environment": service.env}
        if service.command is not None:
            out["command"] = list(service.command)
        if service.entrypoint is not None:
            out["entrypoint"] = list(service.entrypoint)
        if service.user:
            out["user"] = service.user
        if service.stop_signal:
            out["stop_signal"] = service.stop_signal
        if service.healthcheck is not None:
            # The interval atendeai uses on a swarm (swarm_convert.HEALTH_INTERVAL_S), so both
            # wait on the same healthchecks and only the orchestration differs.
            hc = service.healthcheck
            interval = min(hc.interval, HEALTH_INTERVAL_S)
            out["healthcheck"] = {
                "test": list(hc.test),
                "interval": _seconds(interval),
                "timeout": _seconds(hc.timeout),
                "retries": max(hc.retries, math.ceil(hc.retries * hc.interval / interval)),
                "start_period": _seconds(hc.start_period),
            }
        volumes, refs = [], []
        for mount in service.mounts:
            if mount.kind == "volume":
                volumes.append(f"{mount.source}:{mount.target}")
                continue
            for key in sorted(Path(mount.source).iterdir()):
                name = f"{service.name}_{key.stem}"
                secrets[name] = {"file": str(key)}
                uid, _, gid = (service.user or "0").partition(":")
                refs.append(
                    {
                        "source": name,
                        "target": f"{mount.target}/{key.name}",
                        "uid": uid,
                        "gid": gid or uid,
                        "mode": 0o400,
                    }
                )
        if volumes:
            out["volumes"] = volumes
        if refs:
            out["secrets"] = refs
        if publishes(spec, service):
            out["ports"] = [
                {"target": p.target, "published": p.host_port, "mode": "host"}
                for p in service.ports
            ]
        deploy: dict[str, Any] = {
            "endpoint_mode": "dnsrr",
            "replicas": service.replicas,
            # The job retries until PostgreSQL is in DNS: with no depends_on, `none` leaves it
            # failed for good (the stack never converges), which is what a first run gave.
            "restart_policy": {"condition": "on-failure", "delay": "1s"}
            if job
            else {"condition": "any"},
        }
        if is_stateful(service) or job:
            deploy["placement"] = {"constraints": [DATA_CONSTRAINT]}
        out["deploy"] = deploy
        services[service.name] = _literal(out)
    document = {
        "version": "3.8",
        "services": services,
        "volumes": {v: {} for v in spec.volumes},
        "networks": {"default": {"driver": "overlay", "attachable": True}},
        "secrets": secrets,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return document


def converged(cluster: Cluster, stack: str, jobs: set[str]) -> bool:
    api = cluster.client().api
    services = api.services(filters={"label": f"com.docker.stack.namespace={stack}"})
    if not services:
        return False
    for service in services:
        name = service["Spec"]["Name"].removeprefix(f"{stack}_")
        tasks = api.tasks(filters={"service": service["ID"]})
        if name in jobs:
            if not any(t["Status"]["State"] == "complete" for t in tasks):
                return False
            continue
        wanted = service["Spec"]["Mode"]["Replicated"]["Replicas"]
        running = [
            t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        ]
        if len(running) < wanted:
            return False
    return True


def run_atendeai(cluster: Cluster, workdir: Path) -> float:
    project = new_project(workdir, prefix="bsa", ATENDEAI_RUNTIME="swarm", **cluster.env())
    t0 = time.monotonic()
    done = project.run("up", "--json", timeout=TIMEOUT_S)
    seconds = time.monotonic() - t0
    report = json.loads(done.stdout)
    project.run("down", "--volumes", "--yes", "--no-backup", timeout=TIMEOUT_S)
    if not report["ok"]:
        raise SystemExit(f"atendeai up failed: {report['failure']}")
    return seconds


def run_stack_deploy(cluster: Cluster, workdir: Path) -> float:
    project = new_project(workdir, prefix="bsd", **cluster.env())
    path = workdir / "stack.yml"
    document = stack_file(project, path)
    jobs = {
        n
        for n, s in document["services"].items()
        if s["deploy"]["restart_policy"]["condition"] == "none"
    }
    env = {**os.environ, "DOCKER_HOST": cluster.docker_host()}
    t0 = time.monotonic()
    subprocess.run(
        ["docker", "stack", "deploy", "-c", str(path), project.name],
        env=env,
        check=True,
        capture_output=True,
    )
    while not converged(cluster, project.name, jobs):
        if time.monotonic() - t0 > TIMEOUT_S:
            raise SystemExit("docker stack deploy did not converge")
        time.sleep(POLL_S)
    seconds = time.monotonic() - t0
    subprocess.run(
        ["docker", "stack", "rm", project.name], env=env, check=True, capture_output=True
    )
    client = cluster.client()
    label = {"label": f"com.docker.stack.namespace={project.name}"}
    deadline = time.monotonic() + 60
    while client.containers.list(filters=label) and time.monotonic() < deadline:
        time.sleep(0.5)
    for container in client.containers.list(all=True, filters=label):
        container.remove(force=True)
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("starting a one-node swarm (docker-in-docker) ...", file=sys.stderr)
    cluster = start_cluster(1, images=stack_images())
    figures: dict[str, list[float]] = {"atendeai": [], "stack-deploy": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.rounds):
                order = ["atendeai", "stack-deploy"] if i % 2 == 0 else ["stack-deploy", "atendeai"]
                for name in order:
                    workdir = Path(tmp) / f"{name}-{i}"
                    workdir.mkdir()
                    run = run_atendeai if name == "atendeai" else run_stack_deploy
                    seconds = run(cluster, workdir)
                    figures[name].append(seconds)
                    load = os.getloadavg()[0]
                    print(f"round {i + 1} {name:13} {seconds:6.1f}s  load {load:.2f}", flush=True)
    finally:
        cluster.remove()
    ours = statistics.median(figures["atendeai"])
    theirs = statistics.median(figures["stack-deploy"])
    print(f"median atendeai {ours:.1f}s, stack deploy {theirs:.1f}s: ratio {theirs / ours:.2f}x")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()

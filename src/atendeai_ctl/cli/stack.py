"""`atendeai up | down | status | logs | build`: the stack commands, at the top level."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from atendeai_ctl.cli.options import JsonOption, ProjectDirOption, YesOption
from atendeai_ctl.cli.render import LiveProgress, confirm, info, print_json, table
from atendeai_ctl.config import Config, load_config
from atendeai_ctl.errors import AtendeaiError

RuntimeOption = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        envvar="ATENDEAI_RUNTIME",
        help="docker, local, or auto (Docker when an engine answers).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", help="Seconds each service may take to become ready [default: 120]."),
]


def _config(project_dir: object) -> Config:
    return load_config({"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None})


def up(
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create and start the stack; wait until every service is ready."""
    from atendeai_ctl.stack import orchestrator
    from atendeai_ctl.stack.project import load_stack, open_runtime, prepare_state

    cfg = prepare_state(_config(project_dir))
    spec = load_stack(cfg)
    engine = open_runtime(cfg, runtime, say=info)
    seconds = timeout if timeout is not None else float(cfg.get("ATENDEAI_TIMEOUT") or 120)
    with LiveProgress(list(spec.services)) as live:
        report = orchestrator.up(
            spec,
            engine,
            project=cfg.project,
            timeout=seconds,
            on_event=live.event,
            progress=live.progress,
        )
    if as_json:
        print_json(report.to_dict())
        if report.failure is not None:
            raise typer.Exit(1)  # the report itself carries the failure: one document
        return
    if report.failure is not None:
        failure = report.failure
        info(f"--- {failure.service}: last {len(failure.logs)} log lines ---")
        for line in failure.logs:
            info(line)
        if failure.health_output:
            info(f"--- {failure.service}: health check output ---\n{failure.health_output}")
        raise AtendeaiError(
            "failed",
            f"service {failure.service} failed: {failure.reason}"
            + (
                f" (exit code {failure.exit_code})"
                if failure.exit_code is not None and "code" not in failure.reason
                else ""
            ),
            f"`atendeai logs {failure.service}` for more; the other services are left running",
        )
    info(f"{cfg.project} is up on {engine.name} in {report.seconds:.1f}s")


def down(
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Also delete the data volumes.")
    ] = False,
    yes: YesOption = False,
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop and remove the stack's containers and network (data stays unless --volumes)."""
    from atendeai_ctl.stack.project import load_stack, open_runtime

    cfg = _config(project_dir).with_secrets(generate=True)
    if volumes:
        confirm(f"Delete all data of project {cfg.project!r} (volumes)?", yes=yes)
    spec = load_stack(cfg)
    removed = open_runtime(cfg, runtime).down(spec, volumes=volumes)
    if as_json:
        print_json({"schema": 1, "project": cfg.project, "removed": removed})
        return
    for item in removed:
        info(f"removed {item}")
    info(f"{cfg.project} is down" + ("; its data is deleted" if volumes else "; data kept"))


def _uptime(started_at: str | None) -> str:
    if not started_at:
        return ""
    try:
        started = datetime.fromisoformat(started_at[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return ""
    seconds = int((datetime.now(UTC) - started).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def status(
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    as_json: JsonOption = False,
) -> None:
    """What runs and whether it is healthy. Exit 0 all healthy, 3 not, 1 engine unreachable."""
    from atendeai_ctl.stack import orchestrator
    from atendeai_ctl.stack.project import load_stack, open_runtime

    cfg = _config(project_dir).with_secrets(generate=True)
    spec = load_stack(cfg)
    report = orchestrator.status(spec, open_runtime(cfg, runtime), project=cfg.project)
    if as_json:
        print_json(report.to_dict())
    else:
        rows = [
            (
                s.name,
                s.state if s.exit_code is None else f"{s.state} ({s.exit_code})",
                s.health,
                ", ".join(f"{p.host}:{p.port}->{p.target}" for p in s.ports),
                _uptime(s.started_at) if s.state == "running" else "",
            )
            for s in report.services
        ]
        table(("service", "state", "health", "ports", "uptime"), rows)
    if not report.ok:
        raise typer.Exit(3)


def logs(
    service: Annotated[str, typer.Argument(help="The service whose logs to show.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", help="Only the last N lines.", min=0)
    ] = None,
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
) -> None:
    """A service's logs (stdout and stderr)."""
    from atendeai_ctl.stack.project import load_stack, open_runtime

    cfg = _config(project_dir).with_secrets(generate=True)
    spec = load_stack(cfg)
    if service not in spec.services:
        raise AtendeaiError(
            "not_found", f"no service {service!r}", f"services: {', '.join(spec.services)}"
        )
    out = sys.stdout.buffer
    for chunk in open_runtime(cfg, runtime).logs(service, tail=tail, follow=follow):
        out.write(chunk)
        out.flush()


def build(project_dir: ProjectDirOption = None) -> None:
    """Pull and build the stack's images now (up does this when needed)."""
    from atendeai_ctl.stack.docker_runtime import connect
    from atendeai_ctl.stack.images import ensure_images
    from atendeai_ctl.stack.project import load_stack, prepare_state

    cfg = prepare_state(_config(project_dir))
    spec = load_stack(cfg)
    with LiveProgress([]) as live:
        images = ensure_images(connect(), spec, live.progress)
    for name, image_id in images.items():
        print(f"{name} {image_id}")


def register(app: typer.Typer) -> None:
    """The stack commands sit at the top level, like `docker compose`'s."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("build")(build)

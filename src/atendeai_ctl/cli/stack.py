"""`atendeai up | down | status | logs | build`: the stack commands, at the top level."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer

from atendeai_ctl.cli.options import JsonOption, NoWaitOption, ProjectDirOption, YesOption
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


ProfileOption = Annotated[
    list[str] | None,
    typer.Option(
        "--profile",
        metavar="NAME",
        help="Also start the services of this profile (repeatable; 'all' for every one); "
        "adds to ATENDEAI_PROFILES.",
        show_default=False,
    ),
]


def _config(project_dir: object, profiles: list[str] | None = None) -> Config:
    overrides = {"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None}
    if profiles:
        # Flags add to the setting from the environment or the files.
        base = load_config(overrides).get("ATENDEAI_PROFILES") or ""
        overrides["ATENDEAI_PROFILES"] = ",".join([base, *profiles]).strip(",")
    return load_config(overrides)


def up(
    profile: ProfileOption = None,
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    timeout: TimeoutOption = None,
    no_wait: NoWaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Create and start the stack; wait until every service is ready."""
    from atendeai_ctl.config import active_profiles
    from atendeai_ctl.stack import orchestrator
    from atendeai_ctl.stack.profiles import select_profiles
    from atendeai_ctl.stack.project import job_checks, load_stack, open_runtime, prepare_state

    cfg = _config(project_dir, profile)
    with cfg.state.lock("up", wait=not no_wait, on_wait=info):
        cfg = prepare_state(cfg)
        spec = select_profiles(load_stack(cfg), active_profiles(cfg))
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
                job_is_current=job_checks(spec, cfg),
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
            failure.hint
            or f"`atendeai logs {failure.service}` for more; the other services are left running",
        )
    info(f"{cfg.project} is up on {engine.name} in {report.seconds:.1f}s")


def down(
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Also delete the data volumes.")
    ] = False,
    yes: YesOption = False,
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    no_wait: NoWaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Stop and remove the stack's containers and network (data stays unless --volumes)."""
    from atendeai_ctl.stack.project import load_stack, open_runtime

    cfg = _config(project_dir)
    if volumes:
        confirm(f"Delete all data of project {cfg.project!r} (volumes)?", yes=yes)
    with cfg.state.lock("down", wait=not no_wait, on_wait=info):
        cfg = cfg.with_secrets(generate=True)
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
    code = _status(project_dir, runtime, as_json)
    if code:
        raise typer.Exit(code)


def _status(project_dir: object, runtime: str | None, as_json: bool) -> int:
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
    return 0 if report.ok else 3


def status_shortcut(args: Sequence[str]) -> int | None:
    """`status [--json] [--project-dir DIR] [--runtime NAME]` parsed here, not by Typer: for
    each parameter Typer 0.29 builds a pydantic TypeAdapter, and pydantic's import alone is a
    third of this command's time, while `status` is what scripts and CI poll all day.

    Only these exact forms: anything else (--help, an unknown option, a value missing) answers
    None, and the command goes the normal way with Typer's parsing and messages. The options'
    environment variables are read by load_config and open_runtime, as with Typer.
    """
    values: dict[str, str] = {}
    as_json = False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, sep, value = arg.partition("=")
        if arg == "--json":
            as_json = True
        elif name in ("--project-dir", "--runtime") and name not in values:
            if not sep:
                if not rest or rest[0].startswith("-"):
                    return None
                value = rest.pop(0)
            values[name] = value
        else:
            return None
    return _status(values.get("--project-dir"), values.get("--runtime"), as_json)


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
    from atendeai_ctl.cli.options import examples

    app.command(
        "up",
        epilog=examples(
            "atendeai up",
            "atendeai up --profile edge",
            "atendeai up --runtime local --timeout 300",
            "atendeai up --json",
        ),
    )(up)
    app.command("down", epilog=examples("atendeai down", "atendeai down --volumes --yes"))(down)
    app.command(
        "status", epilog=examples("atendeai status", "atendeai status --json | jq .services")
    )(status)
    app.command("logs")(logs)
    app.command("build")(build)

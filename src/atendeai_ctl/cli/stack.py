"""`atendeai up | down | status | logs | build | rollout`: the stack commands, at the top level."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from atendeai_ctl.cli.options import JsonOption, NoWaitOption, ProjectDirOption, YesOption
from atendeai_ctl.cli.render import LiveProgress, confirm, info, print_json
from atendeai_ctl.cli.status import report_status
from atendeai_ctl.config import Config, load_config
from atendeai_ctl.errors import AtendeaiError

if TYPE_CHECKING:
    from atendeai_ctl.stack.orchestrator import Failure

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


ScaleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scale",
        metavar="SCALE",
        help="SERVICE=N, e.g. auth=3: run N replicas of SERVICE (repeatable); replica k "
        "publishes the port + k - 1. Wins over ATENDEAI_AUTH_REPLICAS.",
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


def _show_failure(failure: Failure) -> None:
    """The failing service's last log lines and health check output, on stderr, before the
    one-line error (`up` and `rollout` alike)."""
    info(f"--- {failure.service}: last {len(failure.logs)} log lines ---")
    for line in failure.logs:
        info(line)
    if failure.health_output:
        info(f"--- {failure.service}: health check output ---\n{failure.health_output}")


def up(
    profile: ProfileOption = None,
    scale: ScaleOption = None,
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
    from atendeai_ctl.stack.scale import apply_scale, parse_scale, settings_scale

    cfg = _config(project_dir, profile)
    wanted, asked = settings_scale(cfg.get), parse_scale(scale or [])
    with cfg.state.lock("up", wait=not no_wait, on_wait=info):
        cfg = prepare_state(cfg)
        spec = select_profiles(load_stack(cfg), active_profiles(cfg))
        # A setting for a service this compose file lacks is moot; a flag for one is an error.
        counts = {name: n for name, n in wanted.items() if name in spec.services}
        spec = apply_scale(spec, {**counts, **asked})
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
        _show_failure(failure)
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
    no_backup: Annotated[
        bool,
        typer.Option(
            "--no-backup",
            help="With --volumes: delete the data without taking and verifying a backup first.",
        ),
    ] = False,
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    no_wait: NoWaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Stop and remove the stack's containers and network (data stays unless --volumes).

    With --volumes a backup is taken and verified first (into ATENDEAI_BACKUP_DIR); when that
    fails, nothing is stopped or deleted and the exit status is 1.
    """
    from atendeai_ctl.stack.project import load_stack, open_runtime

    cfg = _config(project_dir)
    if volumes:
        confirm(f"Delete all data of project {cfg.project!r} (volumes)?", yes=yes)
    backup: dict[str, object] | None = None
    with cfg.state.lock("down", wait=not no_wait, on_wait=info):
        cfg = cfg.with_secrets(generate=True)
        spec = load_stack(cfg)
        if volumes and not no_backup:
            backup = _backup_before_deleting(cfg)
        removed = open_runtime(cfg, runtime).down(spec, volumes=volumes)
    if as_json:
        print_json({"schema": 1, "project": cfg.project, "removed": removed, "backup": backup})
        return
    for item in removed:
        info(f"removed {item}")
    info(f"{cfg.project} is down" + ("; its data is deleted" if volumes else "; data kept"))


def _backup_before_deleting(cfg: Config) -> dict[str, object]:
    """A verified backup of the stack's database, or AtendeaiError: `down --volumes` must
    not delete data it could not save."""
    from atendeai_ctl.cli.db import backups_dir
    from atendeai_ctl.db.backup import backup_and_verify

    info("taking and verifying a backup before deleting the data (--no-backup skips it)")
    try:
        taken, report = backup_and_verify(
            cfg.database_url(), backups_dir(cfg), project=cfg.project, reason="pre-down"
        )
    except AtendeaiError as err:
        raise AtendeaiError(
            "failed",
            f"no backup before deleting the data, so nothing was deleted: {err.message}",
            "start the stack (`atendeai up`) so its database can be backed up, or pass"
            " --no-backup to delete the data without one",
        ) from None
    info(f"backup {taken.path} verified ({report.seconds:.1f}s)")
    return {"file": str(taken.path), "verified": report.ok, "revision": report.revision}


def status(
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    as_json: JsonOption = False,
) -> None:
    """What runs and whether it is healthy. Exit 0 all healthy, 3 not, 1 engine unreachable."""
    code = report_status(project_dir, runtime, as_json)
    if code:
        raise typer.Exit(code)


def logs(
    service: Annotated[
        str, typer.Argument(help="The service whose logs to show (`auth-2`: its replica 2).")
    ],
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
    name, _, number = service.rpartition("-")
    replica = name in spec.services and number.isdigit()  # `auth-2`: replica 2 of auth
    if service not in spec.services and not replica:
        raise AtendeaiError(
            "not_found", f"no service {service!r}", f"services: {', '.join(spec.services)}"
        )
    out = sys.stdout.buffer
    for chunk in open_runtime(cfg, runtime).logs(service, tail=tail, follow=follow):
        out.write(chunk)
        out.flush()


def rollout(
    service: Annotated[str, typer.Argument(help="The service whose replicas to replace.")],
    project_dir: ProjectDirOption = None,
    runtime: RuntimeOption = None,
    timeout: TimeoutOption = None,
    no_wait: NoWaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Replace a service's replicas one at a time with its current image and configuration.

    A new replica must be ready (and in the gateway's pool) before an old one is drained.
    One that never gets ready is removed, the old ones keep serving, and the exit code is 1.
    """
    from atendeai_ctl.stack import rollout as rollouts
    from atendeai_ctl.stack.project import load_stack, open_runtime, prepare_state

    cfg = _config(project_dir)
    with cfg.state.lock("rollout", wait=not no_wait, on_wait=info):
        cfg = prepare_state(cfg)
        spec = load_stack(cfg)
        engine = open_runtime(cfg, runtime, say=info)
        seconds = timeout if timeout is not None else float(cfg.get("ATENDEAI_TIMEOUT") or 120)
        report = rollouts.rollout(
            spec,
            engine,
            service,
            project=cfg.project,
            timeout=seconds,
            on_step=lambda copy, what: info(f"{copy}: {what}"),
        )
    if as_json:
        print_json(report.to_dict())
        if report.failure is not None:
            raise typer.Exit(1)
        return
    if report.failure is not None:
        failure = report.failure
        _show_failure(failure)
        raise AtendeaiError(
            "failed",
            f"rollout of {service} stopped: {failure.service} {failure.reason}; "
            f"{len(report.replaced)} of {len(report.replicas)} replicas replaced",
            failure.hint or "the replicas that were serving keep serving",
        )
    info(
        f"{service}: {len(report.replaced)} replicas replaced in {report.seconds:.1f}s "
        f"(gateway: {report.gateway})"
    )


def build(profile: ProfileOption = None, project_dir: ProjectDirOption = None) -> None:
    """Pull and build the images of the services `up` would start (up does this when needed)."""
    from atendeai_ctl.config import active_profiles
    from atendeai_ctl.stack.docker_runtime import connect
    from atendeai_ctl.stack.images import ensure_images
    from atendeai_ctl.stack.profiles import select_profiles
    from atendeai_ctl.stack.project import load_stack, prepare_state

    cfg = prepare_state(_config(project_dir, profile))
    # The active profiles' services only, as `docker compose build` does: an optional
    # profile's image (grafana's, where no registry has it) is not needed until it is used.
    spec = select_profiles(load_stack(cfg), active_profiles(cfg))
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
            "atendeai up --profile edge --scale auth=3",
            "atendeai up --runtime local --timeout 300",
            "atendeai up --json",
        ),
    )(up)
    app.command("down", epilog=examples("atendeai down", "atendeai down --volumes --yes"))(down)
    app.command(
        "status", epilog=examples("atendeai status", "atendeai status --json | jq .services")
    )(status)
    app.command("logs")(logs)
    app.command(
        "rollout", epilog=examples("atendeai rollout auth", "atendeai rollout auth --json")
    )(rollout)
    app.command("build")(build)

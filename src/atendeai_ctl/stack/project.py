"""From resolved configuration to a loaded stack and the runtime that will run it."""

from __future__ import annotations

from collections.abc import Callable

from atendeai_ctl.config import Config
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.runtime import Runtime
from atendeai_ctl.stack.spec import Service, StackSpec, load_spec, published_address

RUNTIMES = ("auto", "docker", "local", "swarm")
DONE_WHEN = ("schema_at_head",)
"""What `x-atendeai.done_when` of a one-shot job may say: its work is already done when..."""
AUTO_PING_TIMEOUT = 3


def load_stack(config: Config) -> StackSpec:
    return load_spec(config.compose_file, config.interpolation_env(), config.project)


def open_runtime(
    config: Config, choice: str | None = None, *, say: Callable[[str], None] | None = None
) -> Runtime:
    """The one place that decides which runtime runs the stack.

    `auto` keeps a project on the local runtime while it has processes recorded there (so
    status/down find them even when Docker is running), else uses Docker when an engine
    answers, else the local runtime. `say` hears which one auto chose, and why.
    """
    choice = choice or config.get("ATENDEAI_RUNTIME") or "auto"
    if choice not in RUNTIMES:
        raise AtendeaiError(
            "invalid", f"unknown runtime {choice!r}", f"use one of: {', '.join(RUNTIMES)}"
        )
    from atendeai_ctl.stack.docker_runtime import DockerRuntime, engine_answers
    from atendeai_ctl.stack.engine import docker_host
    from atendeai_ctl.stack.local_runtime import LocalRuntime

    if choice == "docker":
        return DockerRuntime(config.project)
    if choice == "swarm":
        # Never chosen by `auto`: deploying onto a cluster is asked for by name.
        from atendeai_ctl.stack.swarm_runtime import SwarmRuntime

        return SwarmRuntime.from_config(config)
    local = LocalRuntime.from_config(config)
    if choice == "local":
        return local
    where = docker_host()
    if local.has_processes():
        reason = f"project {config.project} already runs locally"
    elif not engine_answers(AUTO_PING_TIMEOUT):
        reason = f"no Docker engine answers at {where}"
    else:
        if say:
            say(f"runtime: docker (an engine answers at {where})")
        return DockerRuntime(config.project)
    if say:
        say(f"runtime: local ({reason})")
    return local


def prepare_state(config: Config) -> Config:
    """Secrets and signing keys exist before the first service starts."""
    from pathlib import Path

    from atendeai_ctl.auth.keys import ensure_signing_key

    config = config.with_secrets(generate=True)
    ensure_signing_key(Path(config.require("ATENDEAI_JWT_KEYS_DIR")))
    # Made here, private and the operator's, before the `backup` service bind-mounts it (the
    # engine would create it owned by root).
    backups = Path(config.require("ATENDEAI_BACKUP_DIR"))
    try:
        backups.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AtendeaiError(
            "failed", f"cannot create ATENDEAI_BACKUP_DIR {backups}: {exc.strerror or exc}"
        ) from None
    return config


def job_checks(spec: StackSpec, config: Config) -> Callable[[Service], bool]:
    """Whether a one-shot job's work is already done, from its `x-atendeai.done_when`, so `up`
    need not run it again (the migrate job: 1-3 s of a Python process on every `up`).

    `schema_at_head`: the database its ATENDEAI_DATABASE_URL names is at the newest revision of
    the project's migrations/ (one query through db.wire: no Alembic, no psycopg). Any doubt
    (no head in the scripts, the database unreachable) says "not done", so the job runs and
    decides. A refused password is the exception: the job would fail the same way, and the
    reason deserves its own message.
    """
    wanted = {
        name
        for name, service in spec.services.items()
        if (service.extensions.get("x-atendeai") or {}).get("done_when") in DONE_WHEN
    }

    def check(service: Service) -> bool:
        if service.name not in wanted:
            return False
        from atendeai_ctl.db.migrations import database_revision, script_head

        url = service.env.get("ATENDEAI_DATABASE_URL")
        head = script_head(spec.path.parent.parent / "migrations")
        if not url or head is None:
            return False
        try:
            return database_revision(published_address(spec, url)) == head
        except AtendeaiError as exc:
            if exc.code == "unauthorized":
                raise other_password(config) from exc
            return False

    return check


def other_password(config: Config) -> AtendeaiError:
    """PostgreSQL refuses the generated password: its data was initialised with another one,
    almost always because the state directory (where the secrets live) changed since."""
    return AtendeaiError(
        "unauthorized",
        f"PostgreSQL refuses the password in {config.state.secrets_file}: the data volume of "
        f"project {config.project} was initialised with another password (a different "
        "ATENDEAI_STATE_DIR, or regenerated secrets)",
        "restore the state dir that created the data (ATENDEAI_STATE_DIR), or delete the data "
        "with `atendeai down --volumes` and run `atendeai up` again",
    )

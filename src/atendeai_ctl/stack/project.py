"""From resolved configuration to a loaded stack and the runtime that will run it."""

from __future__ import annotations

import os
from collections.abc import Callable

from atendeai_ctl.config import Config
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.runtime import Runtime
from atendeai_ctl.stack.spec import StackSpec, load_spec

RUNTIMES = ("auto", "docker", "local")
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
    from atendeai_ctl.stack.docker_runtime import DockerRuntime, connect
    from atendeai_ctl.stack.local_runtime import LocalRuntime

    if choice == "docker":
        return DockerRuntime(config.project)
    local = LocalRuntime.from_config(config)
    if choice == "local":
        return local
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if local.has_processes():
        reason = f"project {config.project} already runs locally"
    else:
        try:
            connect(timeout=AUTO_PING_TIMEOUT).close()
        except AtendeaiError:
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
    return config

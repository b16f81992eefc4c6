"""From resolved configuration to a loaded stack and the runtime that will run it."""

from __future__ import annotations

from atendeai_ctl.config import Config
from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.runtime import Runtime
from atendeai_ctl.stack.spec import StackSpec, load_spec

RUNTIMES = ("auto", "docker")


def load_stack(config: Config) -> StackSpec:
    return load_spec(config.compose_file, config.interpolation_env(), config.project)


def open_runtime(config: Config, choice: str | None = None) -> Runtime:
    """The one place that decides which runtime runs the stack."""
    choice = choice or config.get("ATENDEAI_RUNTIME") or "auto"
    if choice not in RUNTIMES:
        raise AtendeaiError(
            "invalid", f"unknown runtime {choice!r}", f"use one of: {', '.join(RUNTIMES)}"
        )
    from atendeai_ctl.stack.docker_runtime import DockerRuntime

    return DockerRuntime(config.project)


def prepare_state(config: Config) -> Config:
    """Secrets and signing keys exist before the first service starts."""
    from pathlib import Path

    from atendeai_ctl.auth.keys import ensure_signing_key

    config = config.with_secrets(generate=True)
    ensure_signing_key(Path(config.require("ATENDEAI_JWT_KEYS_DIR")))
    return config

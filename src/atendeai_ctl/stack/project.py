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
    config = config.with_secrets(generate=True)
    keys_dir = config.get("ATENDEAI_JWT_KEYS_DIR")
    if keys_dir:
        from pathlib import Path

        Path(keys_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    return config

"""`atendeai config`: the resolved configuration."""

from __future__ import annotations

import typer

from atendeai_ctl.cli.options import JsonOption, ProjectDirOption
from atendeai_ctl.cli.render import print_json, table
from atendeai_ctl.config import SECRET_KEYS, load_config

app = typer.Typer(
    help="Show the resolved configuration.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _mask(key: str, value: str) -> str:
    return "********" if key in SECRET_KEYS else value


@app.command("show")
def show(project_dir: ProjectDirOption = None, as_json: JsonOption = False) -> None:
    """Every setting with its value (secrets masked) and where it came from."""
    cfg = load_config({"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None})
    cfg = cfg.with_secrets(generate=False)
    items = sorted(cfg.settings.items())
    if as_json:
        print_json(
            {
                "schema": 1,
                "settings": {k: {"value": _mask(k, s.value), "source": s.source} for k, s in items},
            }
        )
        return
    table(("setting", "value", "source"), [(k, _mask(k, s.value), s.source) for k, s in items])


@app.command("env")
def env(project_dir: ProjectDirOption = None) -> None:
    """KEY=VALUE lines, secrets included, for `docker compose --env-file`."""
    from atendeai_ctl.stack.project import prepare_state

    cfg = load_config({"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None})
    # The signing key too, as `up` makes it: the auth service of a stack that
    # `docker compose` starts from these lines mounts the key directory they name.
    cfg = prepare_state(cfg)
    for key, setting in sorted(cfg.settings.items()):
        print(f"{key}={setting.value}")

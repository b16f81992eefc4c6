"""`atendeai auth`: Run the bundled auth service and manage its signing keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from atendeai_ctl.cli.options import JsonOption
from atendeai_ctl.cli.render import info, print_json, table

app = typer.Typer(
    help="Run the bundled auth service and manage its signing keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

KeysDirOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-dir",
        envvar="ATENDEAI_JWT_KEYS_DIR",
        help="The signing keys directory (default: the project's state dir).",
        show_default=False,
    ),
]


def _keys_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from atendeai_ctl.config import load_config

    return Path(load_config().require("ATENDEAI_JWT_KEYS_DIR"))


def service_environment(environ: dict[str, str]) -> dict[str, str]:
    """Fill the three connection settings from the project's config where not given."""
    env = dict(environ)
    if not env.get("ATENDEAI_DATABASE_URL") or not env.get("ATENDEAI_REDIS_URL"):
        from atendeai_ctl.config import load_config

        config = load_config().with_secrets(generate=False)
        env.setdefault("ATENDEAI_DATABASE_URL", "")
        env["ATENDEAI_DATABASE_URL"] = env["ATENDEAI_DATABASE_URL"] or config.database_url(
            role="app"
        )
        env["ATENDEAI_REDIS_URL"] = env.get("ATENDEAI_REDIS_URL") or config.redis_url()
    if not env.get("ATENDEAI_JWT_PRIVATE_KEY_FILE") and not env.get("ATENDEAI_JWT_KEYS_DIR"):
        env["ATENDEAI_JWT_KEYS_DIR"] = str(_keys_dir(None))
    return env


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3001,
    workers: Annotated[
        int,
        typer.Option(
            min=1, envvar="ATENDEAI_AUTH_WORKERS", help="Worker processes (one per core)."
        ),
    ] = 1,
) -> None:
    """Serve the auth HTTP API (uvicorn with uvloop and httptools)."""
    from atendeai_ctl.auth._server import GRACEFUL_TIMEOUT_S, HTTP_PROTOCOL, run
    from atendeai_ctl.auth.metrics import multiprocess_dir
    from atendeai_ctl.auth.service import Service

    os.environ.update(service_environment(dict(os.environ)))
    Service.from_env()  # fail here, with a clear error, before any worker starts
    # Every worker writes its metrics to this run's private directory; /metrics sums them.
    with multiprocess_dir():
        run(
            "atendeai_ctl.auth.http:create_app",
            # What each worker's uvicorn would import after the fork (see auth/_server.py).
            preload=("uvloop", "uvicorn.loops.uvloop", "uvicorn.lifespan.on"),
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http=HTTP_PROTOCOL,  # httptools, one write per response
            timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,  # SIGTERM: in-flight requests finish
            lifespan="on",
            access_log=False,
            log_level="warning",
            server_header=False,
            # The app alone decides what X-Forwarded-For is worth (ATENDEAI_AUTH_TRUSTED_PROXIES,
            # auth/forwarding.py); uvicorn's default would believe it from any loopback peer.
            proxy_headers=False,
        )


@app.command("rotate-key")
def rotate_key(keys_dir: KeysDirOption = None, as_json: JsonOption = False) -> None:
    """Add a new signing key; older public keys stay in the JWKS until pruned."""
    from atendeai_ctl.auth.keys import rotate_key as rotate

    kid = rotate(_keys_dir(keys_dir))
    if as_json:
        print_json({"kid": kid})
    else:
        info(f"New signing key {kid}; running services pick it up within a second.")


@app.command("keys")
def keys(keys_dir: KeysDirOption = None, as_json: JsonOption = False) -> None:
    """List the signing keys (newest signs; all verify)."""
    from atendeai_ctl.auth.keys import list_keys

    found = list_keys(_keys_dir(keys_dir))
    if as_json:
        print_json(
            [
                {"kid": k.kid, "created_at": k.created_at.isoformat(), "signing": k.signing}
                for k in found
            ]
        )
    else:
        table(
            ["KID", "CREATED", "SIGNING"],
            [(k.kid, k.created_at.isoformat(), "yes" if k.signing else "") for k in found],
        )

"""`atendeai swarm`: the Docker Swarm the `swarm` runtime deploys onto."""

from __future__ import annotations

from typing import Annotated

import typer

from atendeai_ctl.cli.options import JsonOption, examples
from atendeai_ctl.cli.render import info, print_json

app = typer.Typer(
    help="The Docker Swarm that `--runtime swarm` deploys onto.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command(
    "init",
    epilog=examples(
        "atendeai swarm init",
        "DOCKER_HOST=tcp://10.0.0.5:2375 atendeai swarm init --advertise-addr 10.0.0.5",
    ),
)
def init(
    advertise_addr: Annotated[
        str | None,
        typer.Option(
            "--advertise-addr",
            metavar="ADDR",
            help="The address other nodes reach this one at (needed when it has several).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make the engine DOCKER_HOST names a one-node swarm (kept if it already manages one)
    and label it the data node (atendeai.data=true) for postgres and redis."""
    from atendeai_ctl.stack.swarm_cluster import init_swarm

    result = init_swarm(advertise_addr)
    if as_json:
        print_json(result)
        return
    verb = "is now a swarm manager" if result["created"] else "already manages a swarm"
    info(f"{result['engine']} {verb} (node {result['node_id']}); data node: {result['data_node']}")
    info("deploy with `atendeai up --runtime swarm`; more nodes join with `docker swarm join`")

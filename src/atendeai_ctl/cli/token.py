"""`atendeai token`: Issue, verify and revoke tokens; rotate signing keys.

Thin adapter over atendeai_ctl.admin.tokens. `token verify` exits 1 (not 8) for a token the
service would refuse: it answers a question, the operator is not the one unauthorized.
"""

from __future__ import annotations

from typing import Annotated

import typer

from atendeai_ctl.cli._admin import ClinicOption, RedisUrlOption, admin
from atendeai_ctl.cli._input import read_stdin
from atendeai_ctl.cli.options import DatabaseUrlOption, JsonOption, ProjectDirOption, examples
from atendeai_ctl.cli.render import info, print_json, table
from atendeai_ctl.errors import AtendeaiError

app = typer.Typer(
    help="Issue, verify and revoke tokens; rotate signing keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

UserOption = Annotated[
    str, typer.Option("--user", metavar="EMAIL", help="The user's email.", show_default=False)
]


@app.command(
    "issue",
    epilog=examples("atendeai token issue --clinic alpha --user ana@alpha.test --ttl 5m"),
)
def issue(
    clinic: ClinicOption,
    user: UserOption,
    ttl: Annotated[
        str, typer.Option("--ttl", metavar="DURATION", help="Lifetime, 1s to 24h: 30s, 15m, 2h.")
    ] = "15m",
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Issue an access token for a user (scripts, smoke tests); prints only the token."""
    from atendeai_ctl.admin import tokens
    from atendeai_ctl.admin.durations import parse_ttl

    ttl_s = parse_ttl(ttl)
    with admin(database_url, redis_url, project_dir) as ctx:
        issued = tokens.issue(ctx, clinic=clinic, email=user, ttl_s=ttl_s)
    if json_output:
        print_json(issued.to_dict())
        return
    print(issued.token)
    info(f"jti {issued.claims['jti']}, expires {issued.expires_at.isoformat()}")


@app.command(
    "verify",
    epilog=examples(
        "atendeai token verify eyJhbGciOiJFZERTQSIs...",
        'echo "$TOKEN" | atendeai token verify -',
    ),
)
def verify(
    token: Annotated[
        str, typer.Argument(metavar="TOKEN", help="The token; '-' or none: read it from stdin.")
    ] = "-",
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Print a token's claims as JSON (exit 0), or why it is refused (exit 1)."""
    from atendeai_ctl.admin import tokens

    text = read_stdin("the token") if token == "-" else token
    with admin(None, redis_url, project_dir, need_redis=True, need_database=False) as ctx:
        claims = tokens.verify(ctx, text)
    print_json(claims)


@app.command("revoke")
def revoke(
    jti: Annotated[
        str | None, typer.Option("--jti", help="Revoke one access token by its id.")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", metavar="EMAIL", help="Revoke every session of this user."),
    ] = None,
    clinic: Annotated[
        str | None, typer.Option("--clinic", metavar="SLUG", help="The user's clinic.")
    ] = None,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke one token (--jti) or all sessions of a user (--user --clinic), at once."""
    from atendeai_ctl.admin import tokens

    by_user = user is not None or clinic is not None
    if (jti is None) == (not by_user) or (by_user and (user is None or clinic is None)):
        raise AtendeaiError("invalid", "give either --jti JTI or --user EMAIL --clinic SLUG", None)
    count: int | None = None
    with admin(database_url, redis_url, project_dir, need_redis=True) as ctx:
        if jti is not None:
            tokens.revoke_jti(ctx, jti)
        else:
            assert user is not None and clinic is not None
            count = tokens.revoke_user(ctx, clinic=clinic, email=user)
    if json_output:
        print_json({"jti": jti, "user": user, "clinic": clinic, "sessions_revoked": count})
    elif jti is not None:
        info(f"Token {jti} revoked.")
    else:
        info(f"Revoked {count} session(s) of {user}.")


@app.command("sessions")
def sessions(
    clinic: ClinicOption,
    user: UserOption,
    include_ended: Annotated[
        bool, typer.Option("--all", help="Also revoked and expired sessions.")
    ] = False,
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List a user's live sessions (newest first)."""
    from atendeai_ctl.admin import tokens

    with admin(database_url, redis_url, project_dir) as ctx:
        found = tokens.list_user_sessions(
            ctx, clinic=clinic, email=user, include_ended=include_ended
        )
    if json_output:
        print_json([s.to_dict() for s in found])
        return
    table(
        ["SESSION", "CREATED", "EXPIRES", "LAST SEEN", "REVOKED", "IP"],
        [
            (
                s.id,
                s.created_at.isoformat(timespec="seconds"),
                s.expires_at.isoformat(timespec="seconds"),
                s.last_seen_at.isoformat(timespec="seconds") if s.last_seen_at else None,
                s.revoked_reason or (s.revoked_at.isoformat() if s.revoked_at else None),
                s.ip,
            )
            for s in found
        ],
    )


@app.command("rotate-keys")
def rotate_keys(
    database_url: DatabaseUrlOption = None,
    redis_url: RedisUrlOption = None,
    project_dir: ProjectDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Add a new signing key; old public keys stay in the JWKS until their tokens expire."""
    from atendeai_ctl.admin import tokens

    with admin(database_url, redis_url, project_dir) as ctx:
        rotation = tokens.rotate_keys(ctx)
    if json_output:
        print_json(rotation.to_dict())
        return
    info(f"New signing key {rotation.kid}; the running service picks it up within a second.")
    if rotation.pruned:
        info(f"Removed keys older than every token: {', '.join(rotation.pruned)}")
    table(
        ["KID", "CREATED", "SIGNING"],
        [(k.kid, k.created_at.isoformat(), "yes" if k.signing else "") for k in rotation.keys],
    )

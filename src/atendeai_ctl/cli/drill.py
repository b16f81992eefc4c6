"""`atendeai drill`: rehearse failures on a running stack and print what they cost."""

from __future__ import annotations

import typer

from atendeai_ctl.cli.options import JsonOption, ProjectDirOption, examples
from atendeai_ctl.cli.render import info, print_json
from atendeai_ctl.errors import EXIT_CODES

app = typer.Typer(
    help="Rehearse failures on a running stack and measure them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command(
    "redis-failover",
    epilog=examples("atendeai drill redis-failover", "atendeai drill redis-failover --json"),
)
def redis_failover(project_dir: ProjectDirOption = None, json_output: JsonOption = False) -> None:
    """Kill the Redis primary of a running `ha` stack under a small load; measure recovery.

    Exit 0 when auth answered again within the target (5 s), no revoked token was accepted,
    no acknowledged revocation was lost and the old primary rejoined as a replica; 1 otherwise.
    """
    from atendeai_ctl.config import load_config
    from atendeai_ctl.stack.drill import redis_failover as run

    overrides = {"ATENDEAI_PROJECT_DIR": str(project_dir) if project_dir else None}
    base = load_config(overrides).get("ATENDEAI_PROFILES") or ""
    overrides["ATENDEAI_PROFILES"] = ",".join([base, "ha"]).strip(",")
    if not json_output:
        info("drill: killing the Redis primary under load (about 10-40 s)…")
    report = run(load_config(overrides))
    if json_output:
        print_json(report.to_dict())
    else:
        rejoined = "yes" if report.old_primary_rejoined_as_replica else "no"
        rows = [
            ("killed primary", f"{report.killed} (new primary: {report.new_primary})"),
            ("Sentinel failover", _s(report.failover_s)),
            ("login answers again", _s(report.login_recovered_s)),
            ("verify answers again", _s(report.verify_recovered_s)),
            (f"auth back (target {report.target_s:g} s)", _s(report.auth_recovered_s)),
            ("revoked tokens accepted",
             f"{report.revoked_tokens_accepted} of {report.revoked_before_kill}"),
            ("acked revocations lost",
             f"{report.acknowledged_revocations_lost} of {report.acknowledged_revocations}"),
            ("old primary a replica", f"{rejoined} ({_s(report.rejoin_s)} after its restart)"),
            ("verify answers", _statuses(report.verify.statuses)),
            ("login answers", _statuses(report.login.statuses)),
            ("drill", "passed" if report.ok else "FAILED"),
        ]  # fmt: skip
        width = max(len(label) for label, _ in rows)
        lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
        print("\n".join(lines))
    if not report.ok:
        raise typer.Exit(EXIT_CODES["failed"])


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(
        f"{count}x {'no answer' if status == '0' else status}"
        for status, count in sorted(counts.items())
    )


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"

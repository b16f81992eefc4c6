"""`atendeai migrate` against plain Alembic on the same migrations directory and the same cluster.

    python bench/migrate.py [--rounds 5]

Both sides are command-line processes timed from spawn to exit, as an operator runs them:
`atendeai migrate up` vs `alembic -x url=... upgrade head`, and
`atendeai migrate rollback --to base --yes --no-backup` vs `alembic -x url=... downgrade base`
(the same work: env.py takes the same advisory lock and sets the app role's password from
ATENDEAI_APP_DB_PASSWORD on both paths). Every run gets a fresh database of one throwaway
cluster (tests/servers.py). The order alternates each round, round 0 is a discarded warm-up,
and medians, every round (with the load average) and the ratios ours/alembic are printed.
Figures, never assertions. The default rollback, which first writes a pg_dump, is printed too,
without a ratio (plain Alembic has no such step).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import PostgresServer, postgres_server  # noqa: E402

APP_PASSWORD = "bench-app-password"
BIN = Path(sys.executable).parent


def tool(name: str) -> list[str]:
    """The console script next to this interpreter, as an operator's shell would find it."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"atendeai": "atendeai_ctl", "alembic": "alembic"}[name]
    return [sys.executable, "-m", module]


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to exit; a failed command ends the bench with its output."""
    started = time.perf_counter()
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def fresh_db(pg: PostgresServer) -> tuple[str, str]:
    name = pg.create_database()
    return name, pg.url(name)


def ours_up(url: str, env: dict[str, str]) -> float:
    return timed([*tool("atendeai"), "migrate", "up", "--database-url", url], env)


def ours_down(url: str, env: dict[str, str], *, backup: bool = False) -> float:
    argv = [*tool("atendeai"), "migrate", "rollback", "--to", "base", "--yes"]
    return timed([*argv, *([] if backup else ["--no-backup"]), "--database-url", url], env)


def alembic_up(url: str, env: dict[str, str]) -> float:
    return timed([*tool("alembic"), "-c", str(ROOT / "alembic.ini"), "-x", f"url={url}",
                  "upgrade", "head"], env)  # fmt: skip


def alembic_down(url: str, env: dict[str, str]) -> float:
    return timed([*tool("alembic"), "-c", str(ROOT / "alembic.ini"), "-x", f"url={url}",
                  "downgrade", "base"], env)  # fmt: skip


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_heads()
    return ",".join(heads)


def check_state(pg: PostgresServer, url: str, *, at_head: bool, head: str) -> None:
    """What each command claims is checked in the database, so a no-op cannot look fast."""
    import psycopg

    with psycopg.connect(url) as conn:
        exists = conn.execute(
            "SELECT to_regclass('atendeai.alembic_version') IS NOT NULL"
        ).fetchone()
        has_table = bool(exists and exists[0])
        rev = None
        if has_table:
            row = conn.execute("SELECT version_num FROM atendeai.alembic_version").fetchone()
            rev = row[0] if row else None
    if at_head and rev != head:
        raise SystemExit(f"expected the schema at {head} after upgrade, found {rev}")
    if not at_head and rev is not None:
        raise SystemExit(f"expected no schema after downgrade to base, found {rev}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (plus a warm-up)")
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="atendeai-bench-migrate-")
    env = {
        **os.environ,
        "ATENDEAI_APP_DB_PASSWORD": APP_PASSWORD,
        "ATENDEAI_STATE_DIR": state,  # rollback's pg_dump lands here, not in the user's dir
        "NO_COLOR": "1",
    }
    env.pop("ATENDEAI_DATABASE_URL", None)
    try:
        run(args.rounds, env)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def run(rounds: int, env: dict[str, str]) -> None:
    head = head_revision()
    times: dict[str, list[float]] = {}
    sides: dict[str, tuple[Callable[[str, dict[str, str]], float], ...]] = {
        "atendeai": (ours_up, ours_down),
        "alembic": (alembic_up, alembic_down),
    }
    print(f"head {head}; {os.cpu_count()} cores; round 0 is a warm-up (discarded)")
    with postgres_server() as pg:
        for round_ in range(rounds + 1):
            order = ["atendeai", "alembic"] if round_ % 2 == 0 else ["alembic", "atendeai"]
            line = []
            for side in order:
                up, down = sides[side]
                name, url = fresh_db(pg)
                t_up = up(url, env)
                check_state(pg, url, at_head=True, head=head)
                t_down = down(url, env)
                check_state(pg, url, at_head=False, head=head)
                pg.drop_database(name)
                line.append(f"{side} up {t_up * 1000:6.0f} ms down {t_down * 1000:6.0f} ms")
                if round_:
                    times.setdefault(f"{side} up", []).append(t_up)
                    times.setdefault(f"{side} down", []).append(t_down)
            if round_:
                name, url = fresh_db(pg)
                ours_up(url, env)
                t_backup = ours_down(url, env, backup=True)
                pg.drop_database(name)
                times.setdefault("atendeai down+backup", []).append(t_backup)
                line.append(f"(rollback with pg_dump {t_backup * 1000:.0f} ms)")
            label = "warm-up" if round_ == 0 else f"round {round_}"
            load = os.getloadavg()[0]
            print(f"{label:<8} {' | '.join(line)}  load {load:.2f}", flush=True)
    print(f"\nmedians of {rounds} rounds (process spawn to exit):")
    for step, ours, theirs in (
        ("upgrade base->head", "atendeai up", "alembic up"),
        ("downgrade head->base", "atendeai down", "alembic down"),
    ):
        a, b = statistics.median(times[ours]), statistics.median(times[theirs])
        print(
            f"  {step:<21} atendeai {a * 1000:6.0f} ms   alembic {b * 1000:6.0f} ms"
            f"   ratio atendeai/alembic {a / b:.2f}"
        )
    backup = statistics.median(times["atendeai down+backup"])
    print(f"  rollback to base with its default pg_dump first: {backup * 1000:.0f} ms (no peer)")


if __name__ == "__main__":
    main()

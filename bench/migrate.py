"""Time `migrate up` from empty to head and a full rollback, on a throwaway cluster.

    python bench/migrate.py [--runs N]

Each run uses a fresh database of one cluster (tests/servers.py), through the same library
calls the CLI makes, so env.py's lock and per-migration transactions are included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atendeai_ctl.db import migrations
from tests.servers import postgres_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    ups: list[float] = []
    downs: list[float] = []
    with postgres_server() as pg:
        for _ in range(runs):
            name = pg.create_database()
            url = pg.url(name)
            start = time.perf_counter()
            migrations.upgrade(url, app_password="bench")
            ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            migrations.rollback(url, to="base")
            downs.append(time.perf_counter() - start)
            pg.drop_database(name)
    for label, times in (("up base->head", ups), ("rollback head->base", downs)):
        print(
            f"{label:<20} median {statistics.median(times) * 1000:7.1f} ms  "
            f"min {min(times) * 1000:7.1f} ms  max {max(times) * 1000:7.1f} ms  ({runs} runs)"
        )


if __name__ == "__main__":
    main()

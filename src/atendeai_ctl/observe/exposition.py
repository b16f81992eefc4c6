"""The Prometheus text format, read with prometheus_client's own parser, and the arithmetic
Prometheus would do on it: counter increases with resets, rates, histogram_quantile.

Without a Prometheus server `atendeai top` scrapes the services itself, twice, and computes
its figures from the two scrapes; the functions here follow Prometheus's definitions (reset
handling as in `increase`, interpolation as in `histogram_quantile`) so that both sources
mean the same thing by "p99" or "requests/s".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from atendeai_ctl.errors import AtendeaiError

Labels = frozenset[tuple[str, str]]
Where = Callable[[Mapping[str, str]], bool]
"""Which series of a metric count: a predicate on their labels (None: all of them)."""

MAX_SERIES = 100_000
"""A scrape with more series than this is refused: /metrics of a misbehaving service must not
make the terminal view eat the operator's memory."""


@dataclass
class Scrape:
    """One reading of a /metrics page: sample name -> labels -> value, at a time."""

    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def series(self, name: str, where: Where | None = None) -> dict[Labels, float]:
        found = self.samples.get(name, {})
        if where is None:
            return dict(found)
        return {labels: value for labels, value in found.items() if where(dict(labels))}

    def total(self, name: str, where: Where | None = None) -> float | None:
        """The sum over the matching series; None when the metric has no series at all (a
        service that has not counted anything yet is not the same as one that counts 0)."""
        found = self.series(name, where)
        return math.fsum(found.values()) if found else None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for labels, value in self.samples.get(name, {}).items():
            key = dict(labels).get(label, "")
            totals[key] = totals.get(key, 0.0) + value
        return totals


def parse_exposition(text: str, at: float) -> Scrape:
    """Parse a /metrics page (text format 0.0.4) taken at `at` (Unix seconds).

    Raises AtendeaiError('failed') naming the problem for anything that is not the format: the
    page comes from a service, and a broken one must read as one line, not a traceback.
    """
    from prometheus_client.parser import text_string_to_metric_families

    scrape = Scrape(at)
    count = 0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                value = float(sample.value)
                labels: Labels = frozenset((str(k), str(v)) for k, v in sample.labels.items())
                scrape.samples.setdefault(sample.name, {})[labels] = value
                count += 1
                if count > MAX_SERIES:
                    raise AtendeaiError(
                        "failed", f"the metrics page has more than {MAX_SERIES} series", None
                    )
    except AtendeaiError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise AtendeaiError(
            "failed",
            f"the metrics page is not in the Prometheus text format: {_short(exc)}",
            None,
        ) from exc
    return scrape


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120] + ("..." if len(text) > 120 else "")


def counter_increase(
    before: Scrape, after: Scrape, name: str, where: Where | None = None
) -> float | None:
    """How much the matching counters grew from `before` to `after`, summed.

    Per series, as Prometheus's `increase` does: a value lower than before means the process
    restarted (the counter reset to 0), so the whole new value is the increase. A series new
    in `after` grew from 0 (client libraries create a labelled series at its first event).
    None when `after` has no matching series.
    """
    now = after.series(name, where)
    if not now:
        return None
    then = before.series(name, where)
    grown = 0.0
    for labels, value in now.items():
        old = then.get(labels, 0.0)
        grown += value - old if value >= old else value
    return grown


def counter_rate(
    before: Scrape, after: Scrape, name: str, where: Where | None = None
) -> float | None:
    """Per second, over the time between the two scrapes; None without series or time."""
    seconds = after.at - before.at
    grown = counter_increase(before, after, name, where)
    if grown is None or seconds <= 0:
        return None
    return grown / seconds


def parse_le(text: str) -> float | None:
    """A bucket's upper bound as Prometheus reads it (`+Inf`, `1e-3`, ...); None if not a
    number (such a bucket is skipped, as Prometheus skips it)."""
    try:
        bound = float(text)
    except ValueError:
        return None
    return None if math.isnan(bound) else bound


def buckets(scrape: Scrape, name: str, where: Where | None = None) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` (the `_bucket` samples), summed by `le`
    over the matching series, as `sum by (le) (name_bucket{...})`."""
    summed: dict[float, float] = {}
    for labels, value in scrape.series(f"{name}_bucket", where).items():
        bound = parse_le(dict(labels).get("le", ""))
        if bound is not None:
            summed[bound] = summed.get(bound, 0.0) + value
    return summed


def bucket_increase(
    before: Scrape, after: Scrape, name: str, where: Where | None = None
) -> dict[float, float]:
    """The buckets' growth between two scrapes, per `le` (resets as in counter_increase)."""
    grown: dict[float, float] = {}
    old = before.series(f"{name}_bucket", where)
    for labels, value in after.series(f"{name}_bucket", where).items():
        bound = parse_le(dict(labels).get("le", ""))
        if bound is None:
            continue
        then = old.get(labels, 0.0)
        grown[bound] = grown.get(bound, 0.0) + (value - then if value >= then else value)
    return grown


def histogram_quantile(q: float, counts: Mapping[float, float]) -> float:
    """Prometheus's `histogram_quantile` over cumulative buckets {upper bound: count}.

    The same steps as promql/quantile.go (bucketQuantile, Prometheus 2.x): NaN without a +Inf
    bucket, with fewer than two buckets or no observations; counts made monotonic first; the
    rank found by binary search and interpolated linearly inside its bucket; a rank in the
    +Inf bucket answers the highest finite bound; q outside [0, 1] answers -Inf / +Inf.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    pairs = sorted(counts.items())  # one entry per bound: coalesced by the caller's sum
    pairs = [(bound, count) for bound, count in pairs if not math.isnan(bound)]
    if len(pairs) < 2 or not math.isinf(pairs[-1][0]) or pairs[-1][0] < 0:
        return math.nan
    # ensureMonotonic: a count lower than the highest before it is raised to it.
    fixed: list[tuple[float, float]] = []
    highest = -math.inf
    for bound, count in pairs:
        if count > highest:
            highest = count
        elif count < highest:
            count = highest
        fixed.append((bound, count))
    observations = fixed[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    # sort.Search over all but the +Inf bucket: the first whose count reaches the rank.
    b = next((i for i, (_, count) in enumerate(fixed[:-1]) if count >= rank), len(fixed) - 1)
    if b == len(fixed) - 1:
        return fixed[-2][0]
    if b == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, end, count = 0.0, fixed[b][0], fixed[b][1]
    if b > 0:
        start = fixed[b - 1][0]
        count -= fixed[b - 1][1]
        rank -= fixed[b - 1][1]
    return start + (end - start) * _go_divide(rank, count)


def _go_divide(a: float, b: float) -> float:
    """IEEE division as Go does it: x/0 is +-Inf and 0/0 NaN (q=0 over an empty first bucket
    answers NaN in Prometheus), where Python would raise."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)

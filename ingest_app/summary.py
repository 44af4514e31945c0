"""Per-model summaries of the stored results and failures over a time window.

Every query here is answered from an index (docs/contract.md sections 3 and 4: the
indexes that db.ensure_indexes creates); the comment above each query names it.
Percentiles are computed in Python over a projection of only the needed
fields: exact, and independent of the server's aggregation operators
($percentile/$median need MongoDB 7.0 and are approximate).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo.collection import Collection

from .limits import DEFAULT_WINDOW
from .timestamps import as_utc

if TYPE_CHECKING:
    from .runners import RunnerSeen

# A longer window means a larger projection to read; a month covers the page's needs.
MAX_WINDOW = timedelta(days=31)
SERIES_BUCKETS = 60

_WINDOW_RE = re.compile(r"([1-9][0-9]{0,4})([mhd])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}

# The outcome of a model's latest record when it was a stored result.
OUTCOME_OK = "ok"


class WindowError(ValueError):
    """A window that is not a count and a unit (m, h, d) within MAX_WINDOW."""


@dataclass(frozen=True)
class ModelSummary:
    """One provider and model over the window, with its latest record ever."""

    provider: str
    model_name: str
    last_run: datetime | None
    last_outcome: str | None
    last_result_at: datetime | None
    last_failure_at: datetime | None
    runs: int
    failures: int
    success_rate: float | None
    ttft_median: float | None
    ttft_p90: float | None
    tokens_per_second_median: float | None
    tokens_per_second_p90: float | None
    series: tuple[tuple[datetime, float], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class FailureGroup:
    """Failures in the window that share one fingerprint (one fault, repeated)."""

    fingerprint: str
    provider: str
    model_name: str
    stage: str | None
    error_kind: str | None
    count: int
    last_ts: datetime
    last_message: str


@dataclass(frozen=True)
class Summary:
    """Everything the status page and GET /summary show for one window."""

    window: str
    since: datetime
    until: datetime
    models: tuple[ModelSummary, ...]
    failures: tuple[FailureGroup, ...]
    # Filled in by the read side (runners.seen): the runners' last worklist and catalogue.
    runners: tuple[RunnerSeen, ...] = ()


def parse_window(text: str) -> timedelta:
    """Turn '1h', '24h', '7d' or '30m' into a timedelta; raise WindowError otherwise."""
    match = _WINDOW_RE.fullmatch(text or "")
    if not match:
        raise WindowError("window must be a whole number and a unit m, h or d, like 1h, 24h or 7d")
    span = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if span > MAX_WINDOW:
        raise WindowError(f"window must be at most {MAX_WINDOW.days}d")
    return span


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th quantile (0..1) by linear interpolation between closest ranks; None if empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def known_models(results: Collection, errors: Collection) -> set[tuple[str, str]]:
    """Every (provider, model_name) ever stored, so a model that stopped reporting still shows."""
    models: set[tuple[str, str]] = set()
    for coll in (results, errors):
        # Both distincts are answered by the {provider: 1, model_name: 1, <time>: -1} index
        # (a DISTINCT_SCAN over its prefix): a handful of index seeks, not a collection scan.
        for provider in coll.distinct("provider"):
            for model_name in coll.distinct("model_name", {"provider": provider}):
                if isinstance(provider, str) and isinstance(model_name, str):
                    models.add((provider, model_name))
    return models


def _latest(coll: Collection, provider: str, model_name: str,
            ts_field: str) -> tuple[datetime, dict[str, Any]] | None:
    # {provider: 1, model_name: 1, <ts_field>: -1}: equality on the prefix, then the first key
    # of the range: one index seek.
    doc = coll.find_one(
        {"provider": provider, "model_name": model_name},
        projection={"_id": 0, ts_field: 1, "error_kind": 1},
        sort=[(ts_field, -1)],
    )
    if doc is None or not isinstance(doc.get(ts_field), datetime):
        return None
    return as_utc(doc[ts_field]), doc


def _series(points: Iterable[tuple[datetime, float]], since: datetime,
            until: datetime) -> tuple[tuple[datetime, float], ...]:
    """Median tokens/s per time bucket, so a sparkline stays small however many runs there are."""
    span = (until - since).total_seconds()
    buckets: dict[int, list[float]] = defaultdict(list)
    for ts, value in points:
        offset = (ts - since).total_seconds()
        index = min(SERIES_BUCKETS - 1, max(0, int(offset / span * SERIES_BUCKETS)))
        buckets[index].append(value)
    return tuple(
        (since + timedelta(seconds=span * (index + 0.5) / SERIES_BUCKETS),
         statistics.median(buckets[index]))
        for index in sorted(buckets)
    )


@dataclass
class _Tally:
    """What one pass over the window's records found for one model."""

    results: int = 0
    failures: int = 0
    last_result: datetime | None = None
    last_failure: datetime | None = None
    last_failure_kind: str | None = None
    ttft: list[float] = field(default_factory=list)
    tps: list[float] = field(default_factory=list)
    points: list[tuple[datetime, float]] = field(default_factory=list)


def _window_docs(cursor: Iterable[dict[str, Any]], ts_field: str,
                 tallies: dict[tuple[str, str], _Tally]
                 ) -> Iterator[tuple[tuple[str, str], datetime, dict[str, Any], _Tally]]:
    # Each stored record with a string provider and model_name and a date, as UTC, with its
    # model's tally; records another writer stored in another shape are passed over.
    for doc in cursor:
        key, ts = (doc.get("provider"), doc.get("model_name")), doc.get(ts_field)
        if not isinstance(ts, datetime) or not all(isinstance(k, str) for k in key):
            continue
        yield key, as_utc(ts), doc, tallies.setdefault(key, _Tally())  # type: ignore[arg-type]


def _tally_results(results: Collection, since: datetime,
                   tallies: dict[tuple[str, str], _Tally]) -> None:
    # {run_ts: -1}: a range scan over the window only; the projection keeps the read small.
    cursor = results.find(
        {"run_ts": {"$gte": since}},
        projection={"_id": 0, "provider": 1, "model_name": 1, "run_ts": 1,
                    "time_to_first_token": 1, "tokens_per_second": 1},
    )
    for _, ts, doc, tally in _window_docs(cursor, "run_ts", tallies):
        tally.results += 1
        if tally.last_result is None or ts > tally.last_result:
            tally.last_result = ts
        if (value := _number(doc.get("time_to_first_token"))) is not None:
            tally.ttft.append(value)
        if (value := _number(doc.get("tokens_per_second"))) is not None:
            tally.tps.append(value)
            tally.points.append((ts, value))


def _tally_failures(errors: Collection, since: datetime,
                    tallies: dict[tuple[str, str], _Tally]) -> tuple[FailureGroup, ...]:
    # {ts: -1} on the errors collection: a range scan over the window's failures only.
    cursor = errors.find(
        {"ts": {"$gte": since}},
        projection={"_id": 0, "provider": 1, "model_name": 1, "ts": 1, "stage": 1,
                    "error_kind": 1, "message": 1, "fingerprint": 1},
    )
    groups: dict[str, tuple[int, datetime, dict[str, Any]]] = {}
    for key, ts, doc, tally in _window_docs(cursor, "ts", tallies):
        tally.failures += 1
        if tally.last_failure is None or ts > tally.last_failure:
            tally.last_failure, tally.last_failure_kind = ts, doc.get("error_kind")
        # Records stored without a fingerprint still group by what they are.
        fingerprint = doc.get("fingerprint") or "|".join(
            str(part) for part in (*key, doc.get("stage"), doc.get("error_kind"))
        )
        count, last_ts, last_doc = groups.get(fingerprint, (0, ts, doc))
        if ts >= last_ts:
            last_ts, last_doc = ts, doc
        groups[fingerprint] = (count + 1, last_ts, last_doc)
    return tuple(
        FailureGroup(
            fingerprint=fingerprint,
            provider=doc["provider"],
            model_name=doc["model_name"],
            stage=doc.get("stage"),
            error_kind=doc.get("error_kind"),
            count=count,
            last_ts=last_ts,
            last_message=str(doc.get("message") or ""),
        )
        for fingerprint, (count, last_ts, doc) in sorted(
            groups.items(), key=lambda item: (-item[1][0], -item[1][1].timestamp(), item[0]))
    )


def _model_summary(results: Collection, errors: Collection, key: tuple[str, str],
                   tally: _Tally, since: datetime, until: datetime) -> ModelSummary:
    provider, model_name = key
    # A model with nothing in the window still shows when it last ran, and how that went.
    result_at = tally.last_result
    if result_at is None and (latest := _latest(results, provider, model_name, "run_ts")):
        result_at = latest[0]
    failure_at, failure_kind = tally.last_failure, tally.last_failure_kind
    if failure_at is None and (latest := _latest(errors, provider, model_name, "ts")):
        failure_at, failure_kind = latest[0], latest[1].get("error_kind")
    last_run: datetime | None
    if result_at is not None and (failure_at is None or result_at >= failure_at):
        last_run, last_outcome = result_at, OUTCOME_OK
    elif failure_at is not None:
        last_run, last_outcome = failure_at, failure_kind or "unknown"
    else:
        last_run, last_outcome = None, None
    runs = tally.results + tally.failures
    ttft, tps = sorted(tally.ttft), sorted(tally.tps)
    return ModelSummary(
        provider=provider,
        model_name=model_name,
        last_run=last_run,
        last_outcome=last_outcome,
        last_result_at=result_at,
        last_failure_at=failure_at,
        runs=runs,
        failures=tally.failures,
        success_rate=(tally.results / runs) if runs else None,
        ttft_median=percentile(ttft, 0.5),
        ttft_p90=percentile(ttft, 0.9),
        tokens_per_second_median=percentile(tps, 0.5),
        tokens_per_second_p90=percentile(tps, 0.9),
        series=_series(sorted(tally.points), since, until),
    )


def summarize(results: Collection, errors: Collection, window: str = DEFAULT_WINDOW,
              *, now: datetime | None = None) -> Summary:
    """Summarise every known model over the window ending now (raises WindowError).

    `runs` counts every recorded attempt in the window (results and failures);
    `success_rate` is results / runs.
    """
    span = parse_window(window)
    until = now or datetime.now(UTC)
    since = until - span
    tallies: dict[tuple[str, str], _Tally] = {}
    _tally_results(results, since, tallies)
    failures = _tally_failures(errors, since, tallies)
    for key in known_models(results, errors):
        tallies.setdefault(key, _Tally())
    models = tuple(
        _model_summary(results, errors, key, tallies[key], since, until)
        for key in sorted(tallies)
    )
    return Summary(window=window, since=since, until=until, models=models, failures=failures)

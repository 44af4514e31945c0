"""Stored results newest first, a page at a time, with an opaque cursor to the next page."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.collection import Collection

from .limits import DEFAULT_LIMIT
from .timestamps import as_utc, rfc3339


class CursorError(ValueError):
    """A cursor this service did not hand out (or one that was altered)."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last result's run_ts and _id (the sort key, newest first)."""

    run_ts: datetime
    oid: ObjectId

    def encode(self, secret: bytes) -> str:
        """The opaque cursor a client passes back to get the next page, signed with `secret`."""
        millis = int(self.run_ts.timestamp() * 1000)
        raw = f"{millis}:{self.oid}".encode("ascii")
        return f"{_b64(raw)}.{_b64(_sign(raw, secret))}"

    @classmethod
    def decode(cls, text: str, secret: bytes) -> Position:
        """Read a cursor made by encode() with `secret`; raise CursorError for anything else."""
        try:
            body, _, signature = text.partition(".")
            raw = _unb64(body)
            # Only a position this service handed out is followed: a made-up one is refused.
            if not hmac.compare_digest(_unb64(signature), _sign(raw, secret)):
                raise CursorError("cursor is not one this service handed out")
            millis, _, oid = raw.decode("ascii").partition(":")
            return cls(datetime.fromtimestamp(int(millis) / 1000, tz=UTC), ObjectId(oid))
        except (binascii.Error, UnicodeError, ValueError, OverflowError, OSError,
                InvalidId, TypeError) as exc:
            raise CursorError("cursor is not one this service handed out") from exc


def _sign(raw: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, raw, hashlib.sha256).digest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))


def _order(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: (as_utc(d["run_ts"]), d["_id"]), reverse=True)


def list_results(coll: Collection, match: Mapping[str, Any], *, since: datetime | None = None,
                 until: datetime | None = None, after: Position | None = None,
                 limit: int = DEFAULT_LIMIT) -> tuple[list[dict[str, Any]], Position | None]:
    """One page of results newest first by (run_ts, _id), since inclusive, until exclusive.

    Returns the documents (as stored) and the position to continue from, or None at the end.

    Indexes: with provider and model_name in `match`, {provider: 1, model_name: 1, run_ts: -1}
    gives the order; with model_name alone, the stored providers are put in as an $in (from a
    DISTINCT_SCAN of that index's prefix) so the same index serves each provider and the
    server merges them in run_ts order, rather than walking {run_ts: -1} past every other
    model's results; otherwise {run_ts: -1} gives the order. Neither orders ties of run_ts
    by _id, so the database sorts by run_ts alone (no blocking sort, the scan stops at the
    limit) and the records sharing one timestamp are fetched by equality on run_ts and put
    in _id order: a page never skips or repeats a result even when many share a timestamp.
    """
    if "model_name" in match and "provider" not in match:
        match = {**match, "provider": {"$in": sorted(
            p for p in coll.distinct("provider") if isinstance(p, str))}}
    out: list[dict[str, Any]] = []
    upper = until
    if after is not None:
        after_since = since is None or after.run_ts >= since
        if after_since and (until is None or after.run_ts < until):
            out += coll.find({**match, "run_ts": after.run_ts, "_id": {"$lt": after.oid}}
                             ).sort("_id", -1).limit(limit + 1)
        upper = after.run_ts if upper is None else min(upper, after.run_ts)
    while len(out) <= limit:
        want = limit + 1 - len(out)
        span: dict[str, datetime] = {}
        if since is not None:
            span["$gte"] = since
        if upper is not None:
            span["$lt"] = upper
        query = {**match, "run_ts": span} if span else dict(match)
        batch = list(coll.find(query).sort("run_ts", -1).limit(want))
        if len(batch) < want:
            out += _order(batch)
            break
        # The oldest timestamp of the batch may have more records than fitted: take them
        # whole, in _id order, so the cursor can point inside that group.
        last_ts = batch[-1]["run_ts"]
        out += _order([d for d in batch if d["run_ts"] != last_ts])
        out += coll.find({**match, "run_ts": last_ts}).sort("_id", -1).limit(limit + 1 - len(out))
        upper = last_ts
    if len(out) > limit:
        last = out[limit - 1]
        return out[:limit], Position(as_utc(last["run_ts"]), last["_id"])
    return out, None


def to_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as the API shows it: no _id, dates as RFC 3339 UTC strings."""
    return {key: _jsonable(value) for key, value in doc.items() if key != "_id"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value

"""RFC 3339 timestamps as the API accepts them (bodies and query strings alike) and shows them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with its offset, as UTC at the millisecond a BSON date keeps.

    Raises ValueError for anything else (no offset, week dates, basic format, a
    moment the offset carries out of the calendar).
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("Not an RFC 3339 date-time with a timezone offset.")
    day, clock, fraction, offset = match.groups()
    millis = (fraction or "").ljust(3, "0")[:3]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{day}T{clock}.{millis}{offset}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # a day 31 of June, or an offset past 9999
        raise ValueError("Not a valid date-time.") from exc


def as_utc(value: datetime) -> datetime:
    """A stored BSON date as an aware UTC datetime (pymongo hands back naive UTC by default)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """An RFC 3339 UTC timestamp with milliseconds (BSON dates keep no more)."""
    return as_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")

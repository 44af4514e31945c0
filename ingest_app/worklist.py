"""GET /runner-config's answer: what one runner measures, read from `models`.

A model is on a runner's worklist when its `models` document is for the provider
asked, enabled and not deprecated (read exactly as catalog.standing reads it, as
the dashboard does), and its optional `runners` list names the runner. Its
request settings are the document's `request` subdocument (docs/contract.md
section 7); keys there that this code does not know are passed on as stored, so
an operator can give a newer runner a setting this server has no name for.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

import bench_contract as contract

from . import catalog
from .timestamps import rfc3339

# The request settings every model_metadata entry holds, with what each is when not set.
KNOWN_SETTINGS: dict[str, Any] = {
    "omit_temperature": False,
    "additional_model_request_fields": None,
    "region": None,
    "profiles": None,
}


def assigned(entry: dict[str, Any], runner: str) -> bool:
    """Whether the entry's `runners` lets `runner` measure it: missing or null is every
    runner, a list names them; anything else (a hand edit gone wrong) names nobody."""
    names = entry.get("runners")
    if names is None:
        return True
    return isinstance(names, list) and runner in names


def _flag(value: Any) -> bool:
    # Read loosely, as the dashboard reads `enabled`: a boolean, or a 1 another writer stored.
    return (isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))) \
        and bool(value)


def _plain(value: Any) -> Any:
    """A stored value as JSON: dates as RFC 3339, anything without a JSON form as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def metadata(entry: dict[str, Any]) -> dict[str, Any]:
    """The model_metadata of one `models` document: the known settings, each of its type or
    its default, then every other key of `request` as stored."""
    stored = entry.get("request")
    stored = stored if isinstance(stored, dict) else {}
    fields = stored.get("additional_model_request_fields")
    region = stored.get("region")
    profiles = stored.get("profiles")
    meta: dict[str, Any] = {
        "omit_temperature": _flag(stored.get("omit_temperature")),
        "additional_model_request_fields": _plain(fields) if isinstance(fields, dict) else None,
        "region": region if isinstance(region, str) and region else None,
        "profiles": ([p for p in profiles if isinstance(p, str)]
                     if isinstance(profiles, list) else None),
    }
    for key, value in stored.items():
        if key not in meta:
            meta[str(key)] = _plain(value)
    return meta


def build(provider: str, runner: str, interval_minutes: int) -> dict[str, Any]:
    """The worklist of `runner` for `provider`, without generated_at (so it can be hashed)."""
    chosen: dict[str, dict[str, Any]] = {}
    for entry in catalog.models().find({"provider": provider}, {"_id": False}):
        model_id = entry.get("model_id")
        # A model listed twice (by hand) is measured once, as its first document says.
        if isinstance(model_id, str) and model_id not in chosen \
                and catalog.standing(entry) is None and assigned(entry, runner):
            chosen[model_id] = entry
    entries = [chosen[model_id] for model_id in sorted(chosen)]
    return {
        "schema_version": contract.RUNNER_CONFIG_SCHEMA_VERSION,
        "provider": provider,
        "runner": runner,
        "interval_minutes": interval_minutes,
        "models": [e["model_id"] for e in entries],
        "model_metadata": {e["model_id"]: metadata(e) for e in entries},
    }


def etag(answer: dict[str, Any]) -> str:
    """A hash of the answer's content (no generated_at): unchanged worklist, same ETag."""
    text = json.dumps(answer, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]

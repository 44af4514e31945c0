"""The curated model list (`models`): which models' results may be published.

The collection is shared with the dashboard and the other writers, so documents
keep their shape (docs/contract.md section 5): `provider`, `model_id`,
`display_name`, `enabled`, `deprecated`, and the optional `disabled_reason`,
`deprecation_date`, `successor_model`, `deprecation_reason`. The dashboard counts
a model without a document as disabled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymongo.collection import Collection

from . import db, settings

# Why a result is withheld from the public collection (the gate, docs/contract.md section 5).
NOT_LISTED = "model_not_listed"
DISABLED = "model_disabled"
DEPRECATED = "model_deprecated"
WITHHELD_REASONS = (NOT_LISTED, DISABLED, DEPRECATED)

MODEL_INDEX = ([("provider", 1), ("model_id", 1)], {})

Key = tuple[str, str]


def models() -> Collection:
    """The curated model list."""
    return db.collection(settings.current().models_collection)


def standing(entry: dict[str, Any] | None) -> str | None:
    """Why a model's results may not be published (a WITHHELD_REASONS value), or None if they may.

    Read exactly as the dashboard reads it: `enabled` missing or null means
    enabled, any other false value disabled; `deprecated` true in the same loose
    sense; no document means disabled.
    """
    if entry is None:
        return NOT_LISTED
    if entry.get("enabled") is not None and not entry["enabled"]:
        return DISABLED
    if entry.get("deprecated"):
        return DEPRECATED
    return None


def lookup(keys: Iterable[Key]) -> dict[Key, dict[str, Any] | None]:
    """The `models` document of each (provider, model_id), None for a model not listed."""
    wanted = sorted(set(keys))
    found: dict[Key, dict[str, Any] | None] = dict.fromkeys(wanted)
    if not wanted:
        return found
    query = {"$or": [{"provider": p, "model_id": m} for p, m in wanted]}
    for entry in models().find(query, {"_id": False}):
        found[(entry["provider"], entry["model_id"])] = entry
    return found

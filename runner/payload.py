"""The bytes a record is sent as, and the contract's limits on them (docs/contract.md section 2).

The outbox (what to send, in which batches) and the ingest client (how to send it)
both sit above this module, so a record is encoded and measured by one rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import bench_contract as contract

# Batch envelope overhead: {"results":[ ... ]} plus one comma per item.
BATCH_ENVELOPE_BYTES = 16

T = TypeVar("T")


class BodyTooLarge(ValueError):
    """A body the contract's limit forbids sending."""


def encode(payload: Any) -> bytes:
    """The exact bytes sent for a payload: compact UTF-8 JSON, NaN and Infinity refused."""
    return json.dumps(payload, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def body(payload: Any, *, overhead: int = 0) -> bytes:
    """encode(payload); BodyTooLarge if it, with `overhead` bytes around it, passes the limit."""
    data = encode(payload)
    if len(data) + overhead > contract.MAX_BODY_BYTES:
        raise BodyTooLarge(
            f"body of {len(data)} bytes is over the contract's {contract.MAX_BODY_BYTES}")
    return data


def batches(items: Iterable[T], payload_of: Callable[[T], Any]) -> Iterator[list[T]]:
    """Items in order, cut into batches within the contract's item count and body size."""
    batch: list[T] = []
    size = BATCH_ENVELOPE_BYTES
    for item in items:
        item_size = len(encode(payload_of(item))) + 1
        if batch and (len(batch) >= contract.MAX_BATCH_ITEMS
                      or size + item_size > contract.MAX_BODY_BYTES):
            yield batch
            batch, size = [], BATCH_ENVELOPE_BYTES
        batch.append(item)
        size += item_size
    if batch:
        yield batch

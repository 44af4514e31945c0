"""Strict request bodies: JSON media type, bounded size, UTF-8, unique keys, finite numbers."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected

from .errors import ApiError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Identity is the only encoding: a compressed body could expand far past the size limit.
ACCEPTED_ENCODINGS = ("", "identity")
_READ_CHUNK = 64 * 1024


class _Refused(ValueError):
    """A JSON value the contract does not allow (raised from inside the parser's hooks)."""


def _bad_json(message: str, **details: Any) -> ApiError:
    return ApiError(400, "invalid_json", message, details=details)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"The body is larger than the limit of {limit} bytes; split it into smaller requests.",
        details={"limit_bytes": limit},
    )


def check_media_type() -> None:
    """Refuse (415) anything but an uncompressed application/json body in UTF-8."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ACCEPTED_ENCODINGS:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Content-Encoding is not accepted; send the JSON body uncompressed.",
            details={"content_encoding": encoding[:40]},
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if request.mimetype != "application/json" or charset not in ("utf-8", "utf8"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send the body as Content-Type: application/json (UTF-8).",
            details={"content_type": (request.headers.get("Content-Type") or "")[:100]},
        )


def read_body(limit: int, timeout: float) -> bytes:
    """The raw body, refusing (413) one over `limit` bytes without reading more than limit+1."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    sock = request.environ.get("gunicorn.socket")
    previous = sock.gettimeout() if sock is not None else None
    if sock is not None:
        # A client that stops mid-body must not hold this thread for longer than `timeout`.
        sock.settimeout(timeout)
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except ParseException:
        # Broken chunk framing (a size of zz or -1, a missing CRLF, a bad extension or
        # trailer). The exception quotes the client's bytes, which may hold a key: it is
        # neither logged nor echoed (docs/contract.md section 2).
        raise ApiError(
            400,
            "malformed_body",
            "The chunked body framing is broken; send the body again with valid chunks "
            "or with a Content-Length.",
        ) from None
    except (ClientDisconnected, OSError) as exc:
        # A timed-out socket read (OSError) or a peer gone before the end (ClientDisconnected).
        raise ApiError(
            400, "incomplete_body", "The body did not arrive whole and in time; send it again."
        ) from exc
    finally:
        if sock is not None:
            sock.settimeout(previous)
    if size > limit:
        raise _too_large(limit)
    body = b"".join(chunks)
    if declared is not None and len(body) < declared:
        raise ApiError(400, "incomplete_body", "The body is shorter than its Content-Length.")
    return body


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key[:100]!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is out of range")
    return value


def _int64(text: str) -> int:
    if len(text) > 20:
        raise _Refused(f"integer {text[:24]}... is out of range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused(f"integer {text} is out of the 64-bit range")
    return value


def parse(body: bytes) -> Any:
    """Decode a JSON document strictly, or raise a 400 ApiError that says what is wrong."""
    if not body.strip():
        raise _bad_json("The body is empty; send a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_json("The body is not valid UTF-8.", position=exc.start) from exc
    try:
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_constant,
            parse_float=_finite_float,
            parse_int=_int64,
        )
    except _Refused as exc:
        raise _bad_json(f"The body is not acceptable JSON: {exc}.") from exc
    except json.JSONDecodeError as exc:
        raise _bad_json(f"The body is not valid JSON: {exc.msg}.", position=exc.pos) from exc
    except RecursionError as exc:
        raise _bad_json("The body is nested too deeply.") from exc
    except ValueError as exc:  # int() refusing an absurdly long digit string, and kin
        raise _bad_json("The body holds a value out of range.") from exc
    # Only an escape can smuggle in a lone surrogate, which no database can store as UTF-8.
    if ("\\ud" in text or "\\uD" in text) and not _all_unicode(document):
        raise _bad_json("The body holds a lone UTF-16 surrogate escape; strings must be Unicode.")
    return document


def _all_unicode(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def read_object(limit: int, timeout: float) -> dict[str, Any]:
    """The request's JSON object: 415, 413 and 400 checks in that order."""
    check_media_type()
    document = parse(read_body(limit, timeout))
    if not isinstance(document, dict):
        raise _bad_json(f"The body must be a JSON object, not {_kind(document)}.")
    return document


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a " + type(value).__name__.replace("bool", "boolean").replace("float", "number")

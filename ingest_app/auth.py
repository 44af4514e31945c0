"""Who is calling: named API keys, compared in constant time, never logged or echoed."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, g, request

from . import limiter, settings
from .credentials import is_credential_param
from .errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])



def _refuse(*, allow_basic: bool) -> ApiError:
    # One answer for every failure, so a caller learns nothing about which keys exist.
    if allow_basic:
        # A browser shows its login box on this challenge; the message says what to type.
        return ApiError(
            401,
            "unauthorized",
            "This page takes HTTP Basic auth: any user name, and a read or write API key as "
            "the password (or the key in the X-API-Key header).",
            headers={"WWW-Authenticate": 'Basic realm="bench-ingest", charset="UTF-8"'},
        )
    return ApiError(
        401,
        "unauthorized",
        "A valid API key is required in the X-API-Key header or as Authorization: Bearer.",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _presented(allow_basic: bool) -> bytes | None:
    """The credential the request carries, as raw header bytes, or None."""
    header = request.headers.get("X-API-Key")
    if header is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            header = value.strip()
        elif scheme.lower() == "basic" and allow_basic:
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
            return decoded.partition(b":")[2] or None
    if not header:
        return None
    # WSGI hands headers over as latin-1 text; back to the bytes that were on the wire.
    return header.encode("latin-1", errors="replace")


def _match(presented: bytes, keys: tuple[tuple[str, str], ...]) -> str | None:
    found = None
    for name, key in keys:
        # Compare against every key without stopping early, so timing reveals nothing.
        if hmac.compare_digest(presented, key.encode("ascii")) and found is None:
            found = name
    return found


def refuse_query_keys() -> None:
    """Refuse (401) a key in the query string on every route, open ones and unknown paths too.

    A query parameter named like a credential counts (docs/contract.md section 2). This
    runs before every route, so no route checks the query string again.
    """
    if any(is_credential_param(name) for name in request.args):
        raise _refuse(allow_basic=request.endpoint == "read.status_page")


def authenticate(*, allow_read: bool = False, allow_basic: bool = False) -> str:
    """The name of the key this request carries, or a 401 ApiError (same body for every failure)."""
    # Wrong keys are counted by client address: past the budget the address is refused
    # before any comparison, so guessing (or a misconfigured runner's flood) stops.
    address = request.remote_addr or ""
    limiter.check_auth_failures(address)
    presented = _presented(allow_basic)
    cfg = settings.current()
    keys = cfg.api_keys + cfg.read_keys if allow_read else cfg.api_keys
    name = _match(presented, keys) if presented is not None else None
    if name is None:
        limiter.count_auth_failure(address)
        raise _refuse(allow_basic=allow_basic)
    g.runner_id = name
    return name


def init_app(app: Flask) -> None:
    """Check every request's query string for a key before any route runs."""
    app.before_request(refuse_query_keys)


def require_key(view: F) -> F:
    """Decorate a write route: only a write key may call it; `g.runner_id` names the key."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        authenticate()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

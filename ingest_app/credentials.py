"""Credential-like text: query parameters that carry one, and redaction of stored messages.

A runner's failure message may quote what a library said, and libraries quote
credentials (a rejected key, an AWS access key id, a signed header). The app
redacts before storing, so no copy of a secret lands in the database, the
status page or a backup (docs/contract.md section 4).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import bench_contract as contract

REDACTED = "[redacted]"

# A query parameter whose name says it holds a credential: refused (401) on every route,
# since a query string reaches proxy logs and browser history.
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|credential|signature")
_SHORT_CREDENTIAL_PARAMS = frozenset({"k", "p", "pass", "sig"})

# name=value or name: value, where the name says secret: the value goes.
_NAMED_SECRET = re.compile(
    r"(?i)\b([\w-]*(?:secret|token|password|passwd|api[_-]?key|x-api-key|signature)[\w-]*"
    r"[\"']?\s*[=:]\s*[\"']?)([^\s\"',;&]+)"
)
# An AWS secret access key: 40 characters of base64 with both cases and a digit or / or +
# (a hex digest of 40 characters has one case only and is left alone).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}")


def is_credential_param(name: str) -> bool:
    """True when a query parameter's name says it carries a key, token, secret or password."""
    lowered = name.lower()
    return lowered in _SHORT_CREDENTIAL_PARAMS or bool(_CREDENTIAL_PARAM.search(lowered))


def _looks_like_aws_secret(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = any(c.islower() for c in text) and any(c.isupper() for c in text)
    if mixed and any(c.isdigit() or c in "/+" for c in text):
        return REDACTED
    return text


def redact(message: str, keys: Iterable[str]) -> str:
    """The message with every configured key and anything shaped like a credential replaced."""
    for key in keys:
        if key:
            message = message.replace(key, REDACTED)
    message = contract.AWS_KEY_ID.sub(REDACTED, message)
    message = contract.VENDOR_API_KEY.sub(REDACTED, message)
    message = _NAMED_SECRET.sub(lambda m: m.group(1) + REDACTED, message)
    message = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, message)
    return _AWS_SECRET.sub(_looks_like_aws_secret, message)

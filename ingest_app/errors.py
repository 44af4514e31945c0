"""One JSON error shape for every answer that is not a success, and the per-request id."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from pymongo.errors import PyMongoError
from werkzeug.exceptions import HTTPException

from . import db, metrics, settings

log = logging.getLogger(__name__)

# A caller's own request id is echoed only when it is short and harmless to log.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    """An answer other than success: status, snake_case code, a sentence, and details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict | None = None,
        headers: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def invalid(fields: dict[str, Any], message: str) -> ApiError:
    """The 422 answer: code validation_error, a list of messages per field in details.fields."""
    return ApiError(422, "validation_error", message, details={"fields": fields})


def _internal_error() -> ApiError:
    # A bug: the traceback is in the log under the request id, never in the answer.
    return ApiError(500, "internal_error", "An unexpected error occurred; it has been logged.")


def error_response(err: ApiError) -> Response:
    """The one error shape as a Flask response."""
    body: dict[str, Any] = {
        "error": {
            "code": err.code,
            "message": err.message,
            "details": err.details,
            "request_id": g.get("request_id", ""),
        }
    }
    response = jsonify(body)
    response.status_code = err.status
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    if _SAFE_REQUEST_ID.match(incoming) and not _is_a_key(incoming):
        g.request_id = incoming
    else:
        g.request_id = uuid.uuid4().hex


def _is_a_key(text: str) -> bool:
    # The id is logged and echoed: a client that put its key there (alone or with a prefix)
    # must not see it logged.
    cfg = settings.current()
    return any(key in text for _, key in cfg.api_keys + cfg.read_keys)


# The status page loads only its own stylesheet; its sparklines are inline SVG. Nothing
# may frame any answer (clickjacking), and nothing is sniffed into another type.
_PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
             "form-action 'none'; frame-ancestors 'none'")
_API_CSP = "default-src 'none'; frame-ancestors 'none'"


def _send_request_id(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    headers = response.headers
    headers.setdefault("Content-Security-Policy",
                       _PAGE_CSP if response.mimetype == "text/html" else _API_CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _on_api_error(err: ApiError) -> Response:
    # A 5xx ApiError was logged where it was raised; refusals are counted, not logged.
    if err.status < 500:
        metrics.observe_rejection(err.code)
    return error_response(err)


def _on_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    message = {
        404: "No such route. See GET /openapi.json for the API.",
        405: "This route does not accept that method.",
    }.get(status, exc.description or "The request could not be handled.")
    headers = {}
    if status == 405 and exc.get_response().headers.get("Allow"):
        headers["Allow"] = exc.get_response().headers["Allow"]
    return _on_api_error(ApiError(status, code, message, headers=headers))


def _on_database_unavailable(exc: db.DatabaseUnavailable) -> Response:
    # Logged and counted where it was raised (db.py); the client keeps the record and retries.
    retry_after = str(settings.current().retry_after_seconds)
    return error_response(ApiError(503, exc.code, exc.message,
                                   headers={"Retry-After": retry_after}))


def _on_db_error(exc: PyMongoError) -> Response:
    # A database error that escaped db.bounded(): an outage is still a 503, anything else a bug.
    if db.is_outage(exc):
        return _on_database_unavailable(db.unavailable(exc))
    log.exception("request_id=%s unexpected database error %s", g.get("request_id"),
                  type(exc).__name__)
    return error_response(_internal_error())


def _on_unexpected(exc: Exception) -> Response:
    log.exception("request_id=%s unhandled %s", g.get("request_id"), type(exc).__name__)
    return error_response(_internal_error())


def init_app(app: Flask) -> None:
    """Give every request an id and every error the one JSON shape."""
    app.before_request(_assign_request_id)
    app.after_request(_send_request_id)
    app.register_error_handler(ApiError, _on_api_error)
    app.register_error_handler(HTTPException, _on_http_exception)
    app.register_error_handler(db.DatabaseUnavailable, _on_database_unavailable)
    app.register_error_handler(PyMongoError, _on_db_error)
    app.register_error_handler(Exception, _on_unexpected)

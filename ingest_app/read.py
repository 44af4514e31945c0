"""The read side: GET /results, /summary, /metrics and the status page at /."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the read routes."""

"""The write API: POST /ingest, /ingest/batch, /ingest/error, and /health, /ready."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from flask.typing import ResponseReturnValue

from . import db

bp = Blueprint("api", __name__)


@bp.get("/health")
def health() -> ResponseReturnValue:
    """The process is up (no database call)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> ResponseReturnValue:
    """The database answers a ping within the time cap, else 503."""
    db.ping()
    return jsonify({"status": "ready"})


def init_app(app: Flask) -> None:
    """Register the write routes."""
    app.register_blueprint(bp)

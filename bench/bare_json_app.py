"""The baseline for bench/ingest_load.py: a Flask route that only parses JSON, nothing else."""

from __future__ import annotations

import json

from flask import Flask, jsonify, request


def create_app() -> Flask:
    """A Flask app whose POST /ingest parses the body and answers 201."""
    app = Flask(__name__)

    @app.get("/health")
    def health():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    @app.post("/ingest")
    def ingest():  # type: ignore[no-untyped-def]
        document = json.loads(request.get_data())
        return jsonify({"status": "created", "result_id": document.get("result_id")}), 201

    return app

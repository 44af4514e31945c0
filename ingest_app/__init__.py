"""The ingest service: takes benchmark results from runners and stores each exactly once."""

from __future__ import annotations

from flask import Flask

from .settings import EXTENSION, Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; with no settings, read them from the environment (and fail loudly)."""
    from . import admin, api, auth, db, errors, limiter, metrics, read, steer

    app = Flask(__name__)
    app.extensions[EXTENSION] = settings if settings is not None else _settings_from_env()
    # Bodies are read and limited by the app itself (jsonbody); JSON answers keep their order.
    app.json.sort_keys = False
    db.init_app(app)
    limiter.init_app(app)
    errors.init_app(app)
    # After errors.init_app: a refusal must already carry the request id.
    auth.init_app(app)
    api.init_app(app)
    steer.init_app(app)
    metrics.init_app(app)
    read.init_app(app)
    admin.init_app(app)
    return app


def _settings_from_env() -> Settings:
    """The environment's settings; from a command line (`flask --app ingest_app models ...`,
    `ensure-indexes`), a bad environment is one line and exit 2, not a traceback."""
    import click

    from .settings import SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        if click.get_current_context(silent=True) is None:
            raise  # gunicorn: the worker's boot error names it
        problem = click.ClickException(
            f"{exc}; the admin commands read the app's own environment (the ingest host's "
            "ingest.env; docs/configuration.md)")
        problem.exit_code = 2
        raise problem from None

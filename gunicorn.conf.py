"""gunicorn settings for the ingest app: `gunicorn 'ingest_app:create_app()'` reads this file.

Environment: PORT or GUNICORN_BIND (default 127.0.0.1:8000), WEB_CONCURRENCY (workers,
default 2), GUNICORN_THREADS (threads a worker, default 4), GUNICORN_TIMEOUT (default 30).
"""

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("GUNICORN_BIND") or (
    f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8000"
)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, with headers gathered without a thread and each request bounded in time as a
# whole (INGEST_REQUEST_TIMEOUT_SECONDS): slow clients cannot hold every thread.
worker_class = "ingest_app.worker.BoundedThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Well above the app's own 5 s cap on every database call, so a hung database never
# gets a worker killed: the app answers 503 first.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 10
# No control socket (recent gunicorn releases open one by default, at one path in the home
# directory shared by every gunicorn on the host, served by a thread of the master that
# is stopped and started around every fork): nothing here uses it, and the app is
# managed by signals (systemd, the Procfile's platform).
control_socket_disable = True
keepalive = 5
# Requests are small; a huge header block is not a runner.
limit_request_line = 8190
limit_request_fields = 50

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# The path only (%(U)s), never the query string: a key pasted there must not reach a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'


class RedactRequestText(logging.Filter):
    """Keep a key out of gunicorn's own error lines, which quote what the client sent.

    A request line or header gunicorn cannot parse is logged whole (repr-quoted), so a key
    in the query string or in a header line without a colon reached the log; so did the
    query string of a request whose handling failed. The event stays, the text goes.
    """

    _QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
    _QUERY = re.compile(r"\?\S*")

    # A path segment as long as a key (32 characters, MIN_KEY_CHARS) is no route of ours:
    # a key pasted into the path (POST /ingest/<key>) is logged as [redacted].
    _LONG_SEGMENT = re.compile(r"(?<=/)[^/\s\"?]{32,}")

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        # The configured keys themselves, wherever they stand (one with a '/' in it is split
        # into short segments). Read once, in the master, from the same environment the app
        # reads; never logged.
        self._keys = sorted(
            {entry.partition(":")[2].strip()
             for var in ("INGEST_API_KEYS", "INGEST_READ_KEYS")
             for entry in os.environ.get(var, "").split(",")} - {""},
            key=len, reverse=True,
        )

    def _without_keys(self, message: str) -> str:
        for key in self._keys:
            message = message.replace(key, "[redacted]")
        return message

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a gunicorn line without the client's text or a key; never drop the line."""
        if record.name == "gunicorn.access":
            message = record.getMessage()
            cleaned = self._LONG_SEGMENT.sub("[redacted]", self._without_keys(message))
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        elif record.name == "gunicorn.error":
            message = record.getMessage()
            if message.startswith("Invalid request from ip="):
                message = self._QUOTED.sub("'[redacted]'", message)
            if message.startswith(("Invalid request from ip=", "Error handling request")):
                message = self._QUERY.sub("?[redacted]", message)
            message = self._without_keys(message)
            if message != record.getMessage():
                record.msg, record.args = message, ()
        return True


logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"},
    },
    "filters": {"redact": {"()": RedactRequestText}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "stream": "ext://sys.stdout",
            "filters": ["redact"],
        },
    },
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
    },
}

# Prometheus needs one shared directory for all workers' samples, made before they fork.
# One we make is ours to remove at exit; one we are given is emptied at start, since
# samples left by an earlier run would be added to this run's counts.
_OWN_METRICS_DIR = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _OWN_METRICS_DIR = tempfile.mkdtemp(prefix="bench-ingest-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_DIR


def on_starting(server):
    """Start the metrics from zero."""
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink(missing_ok=True)


def on_exit(server):
    """Remove the metrics directory this configuration made."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)


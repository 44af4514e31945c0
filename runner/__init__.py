"""bench-runner: measure hosted LLMs and deliver every result to the ingest API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bench-ingest")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

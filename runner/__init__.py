"""bench-runner: measure hosted LLMs and deliver every result to the ingest API."""

from __future__ import annotations

from functools import cache


@cache
def _installed_version() -> str:
    # importlib.metadata costs ~20 ms at import: look the version up only when asked.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bench-ingest")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    """`runner.__version__`, resolved on first use."""
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

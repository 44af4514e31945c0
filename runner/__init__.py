"""bench-runner: measure hosted LLMs and deliver every result to the ingest API."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`runner.__version__`, resolved on first use."""
    if name == "__version__":
        import bench_contract

        return bench_contract.installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

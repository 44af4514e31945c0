"""The provider seam: what the runner needs from a model host, whichever it is.

Delivery and the CLI speak only to `Provider`; each host (today only Bedrock)
lives in its own module, imported when asked for so that `bench-runner --help`
never pays for an SDK import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import bench_contract as contract

from .failures import redact
from .records import Failure, Profile, Result


class SetupError(Exception):
    """A problem the user must fix before anything can be measured, said as one sentence.

    `kind` and `exc_type` classify it as a failure (docs/contract.md section 4) where it is raised,
    from the exception that caused it, for the records of a cycle it stops.
    """

    def __init__(self, message: str, *, kind: str = "unknown",
                 exc_type: str | None = None) -> None:
        # It quotes SDK errors, which may quote a credential helper's output: one line
        # for the terminal, and no key in it.
        super().__init__(redact(" ".join(message.split())))
        self.kind = kind
        self.exc_type = exc_type


@dataclass(frozen=True)
class CatalogEntry:
    """One model a user can pick, as the provider's catalogue lists it."""

    model_id: str
    name: str
    vendor: str
    kind: str  # "foundation" or "inference-profile"
    streaming: bool
    needs_profile: bool  # on-demand calls by this id are refused; use an inference profile
    status: str


class Provider(Protocol):
    """A model host the runner can measure."""

    name: str
    region: str | None

    def warm(self) -> None:
        """Create clients, resolve credentials and warm the connection; raises SetupError."""

    def measure(self, model_id: str, profile: Profile) -> Result | Failure:
        """Measure one model; a model's own failure is returned, never raised."""

    def catalogue(self) -> list[CatalogEntry]:
        """The models this provider offers in its region."""

    def close(self) -> None:
        """Release clients and connections."""


def get_provider(name: str, *, region: str | None, concurrency: int = 1,
                 call_timeout: float = 120.0, retries: int = 2) -> Provider:
    """The provider called `name`, configured but not yet warm; SetupError if unknown."""
    if name == "bedrock":
        from .bedrock import BedrockProvider

        return BedrockProvider(region=region, concurrency=concurrency,
                               call_timeout=call_timeout, retries=retries)
    raise SetupError(f"unknown provider {name!r}; known providers: {', '.join(contract.PROVIDERS)}")

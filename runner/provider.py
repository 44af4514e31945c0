"""The provider seam: what the runner needs from a model host, whichever it is.

Delivery and the CLI speak only to `Provider`; each host (Bedrock, any
OpenAI-compatible endpoint, Anthropic) lives in its own module, imported when asked for so
that `bench-runner --help` never pays for an SDK import, and a runner needs only
the SDKs of the providers it measures (the package's extras).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .failures import redact
from .openai_endpoints import GENERIC, PRESETS
from .records import Failure, Profile, Result

if TYPE_CHECKING:
    from .worklist import ModelSettings


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
    vendor: str  # Bedrock's providerName
    kind: str  # "foundation" or "inference-profile"
    streaming: bool | None  # None: the listing does not say
    needs_profile: bool  # on-demand calls by this id are refused; use an inference profile
    status: str  # lifecycle status (ACTIVE, LEGACY, ...)
    input_modalities: tuple[str, ...] = ()
    output_modalities: tuple[str, ...] = ()
    inference_types: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The entry as POST /ingest/catalog takes it (docs/contract.md section 7)."""
        return {"model_id": self.model_id, "name": self.name, "provider_name": self.vendor,
                "kind": self.kind, "input_modalities": list(self.input_modalities),
                "output_modalities": list(self.output_modalities),
                "inference_types": list(self.inference_types),
                "lifecycle_status": self.status, "needs_profile": self.needs_profile,
                "streaming": self.streaming}

    @property
    def measurable(self) -> bool:
        """Streams text: what `bench-runner models` lists as a model to measure.

        A profile whose models the listing does not show is kept: it may well stream text.
        """
        unknown = self.kind == "inference-profile" and not self.output_modalities
        return (unknown or "TEXT" in self.output_modalities) and self.streaming is not False


@dataclass(frozen=True)
class Listing:
    """A whole catalogue read: every entry, and whether every page of it was read."""

    provider: str
    region: str | None
    started_at: datetime
    entries: list[CatalogEntry]
    pagination_complete: bool
    problem: str | None = None  # why a listing stopped early

    def to_wire(self) -> dict[str, Any]:
        """The body of POST /ingest/catalog."""
        return {"provider": self.provider, "region": self.region,
                "started_at": self.started_at.isoformat(),
                "pagination_complete": self.pagination_complete,
                "models": [e.to_wire() for e in self.entries]}


class Provider(Protocol):
    """A model host the runner can measure."""

    name: str
    region: str | None

    def warm(self) -> None:
        """Create clients, resolve credentials and warm the connection; raises SetupError."""

    def measure(self, model_id: str, profile: Profile,
                request: ModelSettings | None = None) -> Result | Failure:
        """Measure one model as `request` says; a model's own failure is returned, never raised."""

    def prepare(self, regions: Iterable[str | None]) -> None:
        """Make and warm a client for each region a cycle will call, before any timer."""

    def catalogue(self) -> list[CatalogEntry]:
        """The models this provider offers in its region that can be measured."""

    def listing(self) -> Listing:
        """Every model and profile in its region, with whether every page was read."""

    def close(self) -> None:
        """Release clients and connections."""


# What `--provider` takes. Each name is built by a function below that imports its module
# (and so its SDK) only when asked; the presets are OpenAI-compatible hosts by their
# dashboard names (runner/openai_endpoints.py).
OPENAI_COMPATIBLE = GENERIC
OPENAI_PRESETS = tuple(PRESETS)
ANTHROPIC = "anthropic"
PROVIDER_CHOICES = ("bedrock", OPENAI_COMPATIBLE, *OPENAI_PRESETS, ANTHROPIC)
# Which extra of the package each provider's client comes from.
_EXTRAS = {OPENAI_COMPATIBLE: "openai", **{name: "openai" for name in OPENAI_PRESETS},
           ANTHROPIC: "anthropic"}


def get_provider(name: str, *, region: str | None, concurrency: int = 1,
                 call_timeout: float = 120.0, retries: int = 2,
                 environ: Mapping[str, str] | None = None) -> Provider:
    """The provider called `name`, configured but not yet warm; SetupError if unknown.

    `environ` (default os.environ) is where a provider configured by the environment,
    such as an OpenAI-compatible endpoint and its key, reads its settings.
    """
    if name == "bedrock":
        from .bedrock import BedrockProvider

        return BedrockProvider(region=region, concurrency=concurrency,
                               call_timeout=call_timeout, retries=retries)
    if name == OPENAI_COMPATIBLE or name in OPENAI_PRESETS:
        from .openai_endpoints import EndpointError, resolve

        try:
            endpoint = resolve(name, environ)
        except EndpointError as exc:
            raise SetupError(str(exc), kind="invalid_request") from None
        module = _import_sdk_module(name, "openai_compat")
        return module.OpenAICompatibleProvider(endpoint, concurrency=concurrency,
                                               call_timeout=call_timeout, retries=retries)
    if name == ANTHROPIC:
        module = _import_sdk_module(name, "anthropic_provider")
        return module.AnthropicProvider(concurrency=concurrency, call_timeout=call_timeout,
                                        retries=retries, environ=environ)
    raise SetupError(f"unknown provider {name!r}; known providers: {', '.join(PROVIDER_CHOICES)}")


def _import_sdk_module(name: str, module: str) -> Any:
    """runner.<module>, or a SetupError naming the extra to install when its SDK is missing."""
    from importlib import import_module

    try:
        return import_module(f".{module}", __package__)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(name, name)
        if exc.name and exc.name.split(".")[0] == extra:
            raise SetupError(
                f"--provider {name} needs the {extra} package: pip install "
                f"'bench-ingest[runner,{extra}]'", kind="invalid_request",
                exc_type="ModuleNotFoundError") from None
        raise

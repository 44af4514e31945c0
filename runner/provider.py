"""The provider seam: what the runner needs from a model host, whichever it is.

Delivery and the CLI speak only to `Provider`; each host (Bedrock, any
OpenAI-compatible endpoint, Anthropic) lives in its own module, imported when asked for so
that `bench-runner --help` never pays for an SDK import, and a runner needs only
the SDKs of the providers it measures (the package's extras).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .failures import redact
from .openai_endpoints import GENERIC, PRESETS
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

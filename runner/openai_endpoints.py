"""Where an OpenAI-compatible provider sends its requests, and which key it sends.

Kept apart from runner/openai_compat.py, which imports the openai package: the CLI
checks a configuration and lists the presets without paying for that import.

`--provider openai` (or groq, together, fireworks, deepinfra, cerebras) picks a
preset: its base URL, the variable its key is read from, and the name stored as
`provider` (the dashboard's name for that host). `--provider openai-compatible` is
any other server (vLLM, TGI): OPENAI_COMPATIBLE_BASE_URL and
OPENAI_COMPATIBLE_PROVIDER_NAME say where and under which name; a key is optional.
OPENAI_COMPATIBLE_BASE_URL also overrides a preset's URL (a proxy, or the simulator),
and OPENAI_COMPATIBLE_API_KEY_ENV the variable its key is read from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import bench_contract as contract

from . import settings as cfg

GENERIC = "openai-compatible"
# Sent when a self-hosted server wants no key: the client library insists on one, and a
# server started without --api-key ignores the header.
NO_KEY = "unused"


@dataclass(frozen=True)
class Preset:
    """A hosted OpenAI-compatible API: where it is and which variable holds its key."""

    base_url: str
    key_env: str


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "groq": Preset("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together": Preset("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "fireworks": Preset("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    "deepinfra": Preset("https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    "cerebras": Preset("https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
}
# Self-hosted servers may store only names the ingest app accepts that no preset owns.
SELF_HOSTED_NAMES = tuple(name for name, modes in contract.PROVIDER_REQUEST_MODES.items()
                          if contract.OPENAI_CHAT_MODE in modes and name not in PRESETS)


class EndpointError(ValueError):
    """The endpoint cannot be configured; the message says which variable to set."""


@dataclass(frozen=True)
class Endpoint:
    """One configured OpenAI-compatible endpoint."""

    provider: str  # the name stored as `provider`
    base_url: str
    key_env: str | None  # the variable the key came from; None for a server without one
    api_key: str = field(repr=False)


def resolve(name: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint `--provider name` means under `environ`; EndpointError if it cannot work."""
    env = os.environ if environ is None else environ
    base_url = env.get(cfg.ENV_OPENAI_BASE_URL, "").strip().rstrip("/")
    key_env = env.get(cfg.ENV_OPENAI_API_KEY_ENV, "").strip()
    stored = env.get(cfg.ENV_OPENAI_PROVIDER_NAME, "").strip()
    if name == GENERIC:
        if not base_url:
            raise EndpointError(
                f"{cfg.ENV_OPENAI_BASE_URL} is not set: --provider {GENERIC} needs the server's "
                f"base URL, e.g. http://gpu-box:8000/v1 (or use a preset: "
                f"{', '.join(PRESETS)})")
        if stored not in SELF_HOSTED_NAMES:
            raise EndpointError(
                f"{cfg.ENV_OPENAI_PROVIDER_NAME} must be one of {', '.join(SELF_HOSTED_NAMES)} "
                f"(the name stored as provider) for --provider {GENERIC}"
                + (f", not {stored!r}" if stored else "")
                + f"; a hosted API has its own preset ({', '.join(PRESETS)})")
    elif name in PRESETS:
        if stored and stored != name:
            raise EndpointError(
                f"{cfg.ENV_OPENAI_PROVIDER_NAME}={stored} contradicts --provider {name}, whose "
                f"results are stored as {name}: unset it, or use --provider {GENERIC}")
        preset = PRESETS[name]
        base_url = base_url or preset.base_url
        key_env = key_env or preset.key_env
        stored = name
    else:
        raise EndpointError(f"{name!r} is not an OpenAI-compatible provider")
    if not base_url.startswith(("http://", "https://")):
        raise EndpointError(f"{cfg.ENV_OPENAI_BASE_URL} must start with http:// or https://")
    if key_env:
        key = env.get(key_env, "").strip()
        if not key:
            raise EndpointError(f"{key_env} is not set: it holds the {stored} API key "
                                f"(the environment only, never an option)")
        if not key.isascii() or any(c.isspace() for c in key):
            raise EndpointError(f"{key_env} must be printable ASCII without spaces")
        return Endpoint(provider=stored, base_url=base_url, key_env=key_env, api_key=key)
    if name != GENERIC:
        raise EndpointError(f"no key variable for {name}")  # every preset names one
    return Endpoint(provider=stored, base_url=base_url, key_env=None, api_key=NO_KEY)

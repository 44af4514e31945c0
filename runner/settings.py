"""The runner's configuration: command-line options and the environment, read once, checked once.

Click reads each option's environment variable (the names below are their one
home); the API key is read from the environment only, so it never shows in a
process listing or a shell history.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_contract as contract

from .records import CATALOGUE, Profile

ENV_INGEST_URL = "INGEST_API_URL"
ENV_API_KEY = "INGEST_API_KEY"
ENV_MODELS = "BENCHMARK_MODELS"
# Set (1/true/yes/on): BENCHMARK_MODELS wins over the server's worklist.
ENV_MODELS_OVERRIDE = "BENCHMARK_MODELS_OVERRIDE"
# Where the worklist is read; default: derived from INGEST_API_URL.
ENV_RUNNER_CONFIG_URL = "RUNNER_CONFIG_URL"
ENV_WORKLIST_GRACE = "BENCH_RUNNER_WORKLIST_GRACE_HOURS"
ENV_CATALOG_HOURS = "BENCH_RUNNER_CATALOG_HOURS"
ENV_INTERVAL = "BENCH_RUNNER_INTERVAL"
ENV_PROFILES = "BENCHMARK_PROFILES"
ENV_STATE_DIR = "BENCH_RUNNER_STATE_DIR"
ENV_REGION = "AWS_REGION"
ENV_PROVIDER = "BENCH_RUNNER_PROVIDER"
ENV_CONCURRENCY = "BENCH_RUNNER_CONCURRENCY"
ENV_MAX_PENDING = "BENCH_RUNNER_MAX_PENDING"
ENV_LOG_LEVEL = "BENCH_RUNNER_LOG_LEVEL"
ENV_ALLOW_HTTP = "BENCH_RUNNER_ALLOW_HTTP"
# An OpenAI-compatible endpoint (runner/openai_endpoints.py): its base URL, the name of the
# variable that holds its key (never the key), and the name stored as `provider`.
ENV_OPENAI_BASE_URL = "OPENAI_COMPATIBLE_BASE_URL"
ENV_OPENAI_API_KEY_ENV = "OPENAI_COMPATIBLE_API_KEY_ENV"
ENV_OPENAI_PROVIDER_NAME = "OPENAI_COMPATIBLE_PROVIDER_NAME"
# The anthropic provider's key and, for a gateway or the simulator, its base URL.
ENV_ANTHROPIC_API_KEY = "ANTHROPIC_API_KEY"
ENV_ANTHROPIC_BASE_URL = "ANTHROPIC_BASE_URL"
# systemd sets this for a unit with StateDirectory=.
ENV_SYSTEMD_STATE = "STATE_DIRECTORY"

DEFAULT_PROVIDER = "bedrock"
DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_PENDING = 10_000
DEFAULT_CALL_TIMEOUT = 120.0
DEFAULT_RETRIES = 2
DEFAULT_WORKLIST_GRACE_HOURS = 6.0
DEFAULT_CATALOG_HOURS = 12.0
# `once` by hand: the headline profile only. The timer (through runner.env) and the daemon:
# what the dashboard reads, the 64-token runs and the 512-token ones it fits speed from.
DEFAULT_PROFILES = contract.DEFAULT_PROFILE_ID
DASHBOARD_PROFILES = f"{contract.DEFAULT_PROFILE_ID},{contract.LONG_PROFILE_ID}"


# What a Bedrock model id, inference-profile id or ARN is made of; a space, a semicolon, a
# bracket or a quote means the list was written in another form than comma-separated.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
_MODEL_TOKEN = re.compile(r"[^\s;,\[\]\"'{}]+")


def is_local_host(host: str) -> bool:
    """True for this machine's own names and loopback addresses."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
            ".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(url: str) -> str:
    """The host part of an http(s) URL, brackets of an IPv6 address removed."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


class ConfigError(Exception):
    """The configuration cannot work; the message is one line naming every problem."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the outbox lives when BENCH_RUNNER_STATE_DIR is unset."""
    env = os.environ if environ is None else environ
    systemd = env.get(ENV_SYSTEMD_STATE, "")
    if systemd:
        # StateDirectory= may list several directories separated by colons; the first is ours.
        return Path(systemd.split(":")[0])
    import platformdirs  # only needed when nothing else names the directory

    return Path(platformdirs.user_state_dir("bench-runner"))


def truthy(value: str | None) -> bool:
    """An environment switch: 1, true, yes or on, in any case."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def parse_models(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Model ids from a comma-separated string (or several), blanks and repeats dropped."""
    if value is None:
        return ()
    parts = [value] if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for part in parts:
        for model in part.split(","):
            model = model.strip()
            if model:
                seen.setdefault(model, None)
    return tuple(seen)


@dataclass(frozen=True)
class Settings:
    """Everything one runner process needs; built once by the CLI, never changed."""

    state_dir: Path
    ingest_url: str = ""
    api_key: str = field(default="", repr=False)
    models: tuple[str, ...] = ()
    provider: str = DEFAULT_PROVIDER
    region: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    # The profile being measured now; `profiles` are all a run measures, in order.
    profile: Profile = field(default_factory=Profile)
    profiles: tuple[Profile, ...] = (Profile(),)
    unknown_profiles: tuple[str, ...] = ()
    max_pending: int = DEFAULT_MAX_PENDING
    # Plain http:// to a host that is not this one sends the key in clear text: refused
    # unless BENCH_RUNNER_ALLOW_HTTP says the network is trusted.
    allow_http: bool = False
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    retries: int = DEFAULT_RETRIES
    # HTTP to the ingest API: (connect, read) seconds, and urllib3's in-call retries.
    http_timeout: tuple[float, float] = (3.05, 30.0)
    http_retries: int = 2
    # One call to the ingest API, answer included, ends by this many seconds: a server
    # that trickles its answer cannot hold a run (docs/reliability.md).
    http_deadline: float = 60.0
    # urllib3 sleeps for a Retry-After up to this long inside a call; a longer one is
    # left to the outbox, which waits across runs instead of blocking this one.
    max_inline_retry_after: float = 10.0
    # Outbox backoff between drains: first wait, cap (seconds), and 500s before dead/.
    retry_base: float = 30.0
    retry_cap: float = 3600.0
    max_server_errors: int = 3
    # The longest Retry-After honoured; a longer one (up to `inf`) waits this long.
    max_retry_after: float = 3600.0
    # The worklist (runner/worklist.py): its URL (empty: derived), how old a cached answer
    # may be when the server cannot answer, and each model's settings from the last one.
    runner_config_url: str = ""
    worklist_grace_hours: float = DEFAULT_WORKLIST_GRACE_HOURS
    model_settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def catalog_url(self) -> str:
        """POST target of the catalogue, derived from INGEST_API_URL."""
        return f"{self.ingest_url}/catalog"

    def request_of(self, model: str) -> Any:
        """The worklist's settings of `model`, or None (the defaults)."""
        return self.model_settings.get(model)

    @property
    def batch_url(self) -> str:
        """POST target for results, derived from INGEST_API_URL as the contract says."""
        return f"{self.ingest_url}/batch"

    @property
    def error_url(self) -> str:
        """POST target for failures."""
        return f"{self.ingest_url}/error"

    @property
    def cleartext_host(self) -> str:
        """The host a plain http:// INGEST_API_URL names, unless it is this machine; else ""."""
        if not self.ingest_url.lower().startswith("http://"):
            return ""
        host = url_host(self.ingest_url)
        return "" if is_local_host(host) else (host or self.ingest_url)

    def problems(self, *, need_models: bool, need_delivery: bool) -> list[str]:
        """Every reason this configuration cannot run, as short phrases."""
        out: list[str] = []
        if need_models and not self.models:
            out.append(f"no models (use --models or set {ENV_MODELS})")
        bad = [m for m in self.models if not _MODEL_ID.fullmatch(m)]
        if need_models and bad:
            wanted = ",".join(dict.fromkeys(_MODEL_TOKEN.findall(" ".join(self.models))))
            out.append(f"{ENV_MODELS} (or --models) holds {bad[0]!r}, which is not a model id: "
                       f"give comma-separated ids, without spaces, quotes or brackets, e.g. "
                       f"{ENV_MODELS}={wanted or 'amazon.nova-micro-v1:0'}")
        if need_delivery:
            if not self.ingest_url:
                out.append(f"{ENV_INGEST_URL} is not set (the ingest API's POST /ingest URL)")
            elif not self.ingest_url.startswith(("http://", "https://")):
                out.append(f"{ENV_INGEST_URL} must start with http:// or https://")
            elif self.cleartext_host and not self.allow_http:
                out.append(f"{ENV_INGEST_URL} is plain http:// to {self.cleartext_host}, so the "
                           f"key would cross the network in clear text: use https:// (or set "
                           f"{ENV_ALLOW_HTTP}=1 on a network you trust)")
            if not self.api_key:
                out.append(f"{ENV_API_KEY} is not set (this runner's key, from INGEST_API_KEYS)")
            elif not self.api_key.isascii() or any(c.isspace() for c in self.api_key):
                out.append(f"{ENV_API_KEY} must be printable ASCII without spaces")
        if self.unknown_profiles:
            out.append(f"unknown profile {', '.join(self.unknown_profiles)} (--profiles "
                       f"takes {', '.join(CATALOGUE)})")
        if not self.profiles:
            out.append(f"no profiles (use --profiles or set {ENV_PROFILES})")
        default = Profile()
        changed = (self.profile.prompt, self.profile.max_tokens, self.profile.temperature) != (
            default.prompt, default.max_tokens, default.temperature)
        if changed and self.profile.profile_id == default.profile_id:
            # Results under one profile id must be comparable: a new question needs a new name.
            out.append("a changed prompt, --max-tokens or --temperature needs its own "
                       "--profile-id")
        return out

    def check(self, *, need_models: bool, need_delivery: bool) -> None:
        """Raise ConfigError with one line naming every problem, or return."""
        problems = self.problems(need_models=need_models, need_delivery=need_delivery)
        if problems:
            line = "configuration: " + "; ".join(problems)
            if any("is not set" in p or "no models" in p for p in problems):
                # Where to fix it: the shell, or the unit's EnvironmentFile.
                line += (". Set them in the environment (under systemd: "
                         "/etc/bench-runner/runner.env).")
            raise ConfigError(line)


def load(
    *,
    state_dir: str | Path | None = None,
    ingest_url: str | None = None,
    models: str | Iterable[str] | None = None,
    provider: str = DEFAULT_PROVIDER,
    region: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    prompt: str = contract.DEFAULT_PROMPT,
    max_tokens: int = contract.DEFAULT_MAX_TOKENS,
    temperature: float | None = contract.DEFAULT_TEMPERATURE,
    profile_id: str = contract.DEFAULT_PROFILE_ID,
    profiles: str | Iterable[str] | None = None,
    max_pending: int = DEFAULT_MAX_PENDING,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from option values (already env-resolved by click) and the environment."""
    env = os.environ if environ is None else environ
    resolved_dir = Path(state_dir).expanduser() if state_dir else default_state_dir(env)
    custom = Profile(prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                     profile_id=profile_id)
    names = parse_models(DEFAULT_PROFILES if profiles is None else profiles)
    chosen = tuple(CATALOGUE[n] for n in names if n in CATALOGUE)
    unknown = tuple(n for n in names if n not in CATALOGUE)
    if (prompt, max_tokens, temperature, profile_id) != (
            contract.DEFAULT_PROMPT, contract.DEFAULT_MAX_TOKENS, contract.DEFAULT_TEMPERATURE,
            contract.DEFAULT_PROFILE_ID):
        # A request of one's own is measured alone, and never published: only the
        # catalogue's profiles reach the public collection (docs/contract.md section 3).
        custom = Profile(prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                         profile_id=profile_id, sample_role="probe")
        chosen, unknown = (custom,), ()
    return Settings(
        state_dir=resolved_dir,
        ingest_url=(ingest_url or "").strip().rstrip("/"),
        api_key=env.get(ENV_API_KEY, "").strip(),
        models=parse_models(models),
        provider=provider,
        region=region or None,
        concurrency=concurrency,
        profile=chosen[0] if chosen else custom,
        profiles=chosen,
        unknown_profiles=unknown,
        max_pending=max_pending,
        allow_http=truthy(env.get(ENV_ALLOW_HTTP)),
        runner_config_url=env.get(ENV_RUNNER_CONFIG_URL, "").strip(),
        worklist_grace_hours=_hours(env, ENV_WORKLIST_GRACE, DEFAULT_WORKLIST_GRACE_HOURS),
    )


def _hours(env: Mapping[str, str], name: str, default: float) -> float:
    """A number of hours from the environment; ConfigError when it is not one."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"configuration: {name}={raw!r} is not a number of hours") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"configuration: {name}={raw!r} must be 0 or more hours")
    return value


def catalog_hours(environ: Mapping[str, str] | None = None) -> float:
    """Hours between the catalogue posts of `daemon` and `once` (0: never)."""
    return _hours(os.environ if environ is None else environ, ENV_CATALOG_HOURS,
                  DEFAULT_CATALOG_HOURS)

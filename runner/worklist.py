"""Which models a run measures, and how each is asked: the worklist (docs/contract.md section 7).

First match wins: `--models`; BENCHMARK_MODELS when BENCHMARK_MODELS_OVERRIDE says so;
the server's `GET /runner-config`; BENCHMARK_MODELS. A refused key (401/403) ends the
run; any other fault of the server falls back to the last good answer cached in the
state dir (while younger than the grace window), then to BENCHMARK_MODELS. The
cache is written as the outbox writes (tmp, fsync, rename, fsync of the directory),
so a crash leaves the old answer or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .settings import Settings

log = logging.getLogger(__name__)

CACHE_NAME = "runner-config.json"


class WorklistRefused(Exception):
    """The server refused the key (401/403): nothing else may stand in for its answer."""


class _Unavailable(Exception):
    """The server gave no usable answer (down, 5xx, timeout, unparsable)."""


@dataclass(frozen=True)
class ModelSettings:
    """How one model is asked: what the worklist's model_metadata says of it."""

    omit_temperature: bool = False
    additional_fields: Mapping[str, Any] | None = None
    region: str | None = None
    profiles: tuple[str, ...] | None = None
    # Keys this runner does not know, kept so that a newer server's answer round-trips.
    unknown: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reasoning_effort(self) -> str | None:
        """What the extra fields ask of a reasoning model, as the result stores it."""
        extra = self.additional_fields or {}
        thinking = extra.get("thinking")
        if isinstance(thinking, Mapping):
            budget = thinking.get("budget_tokens")
            if isinstance(budget, int) and not isinstance(budget, bool):
                return f"budget_tokens={budget}"
            if isinstance(thinking.get("type"), str) and thinking["type"]:
                return str(thinking["type"])[:64]
        effort = extra.get("reasoning_effort")
        if isinstance(effort, str) and effort:
            return effort[:64]
        config = extra.get("reasoningConfig")
        if isinstance(config, Mapping) and isinstance(config.get("maxReasoningEffort"), str):
            return str(config["maxReasoningEffort"])[:64] or None
        return None

    def allows(self, profile_id: str) -> bool:
        """Whether this model is measured under `profile_id`."""
        return self.profiles is None or profile_id in self.profiles


@dataclass(frozen=True)
class Worklist:
    """The models of one run, each one's settings, and where the list came from."""

    models: tuple[str, ...]
    source: str
    metadata: Mapping[str, ModelSettings] = field(default_factory=dict)
    interval_minutes: int | None = None  # the server's, when the list is the server's
    note: str | None = None  # why a fallback was taken, or why nothing is measured

    def settings_of(self, model: str) -> ModelSettings:
        """The settings of `model` (the defaults when the worklist says nothing of it)."""
        return self.metadata.get(model) or ModelSettings()

    def describe(self) -> str:
        """One line for the terminal and the log: where the list came from."""
        line = f"models from {self.source}: {', '.join(self.models) or '(none)'}"
        return line + (f" ({self.note})" if self.note else "")


def config_url(settings: Settings) -> str:
    """GET target of the worklist: RUNNER_CONFIG_URL, else derived from INGEST_API_URL."""
    if settings.runner_config_url:
        return settings.runner_config_url
    base = settings.ingest_url
    if base.endswith("/ingest"):
        base = base[: -len("/ingest")]
    return f"{base}/runner-config?provider={settings.provider}"


def parse(doc: Any, warn: Any = None) -> tuple[tuple[str, ...], dict[str, ModelSettings],
                                              int | None]:
    """models, model_metadata and interval_minutes of an answer; ValueError if unusable."""
    warn = warn or (lambda message: log.warning("%s", message))
    if not isinstance(doc, dict):
        raise ValueError("the answer is not a JSON object")
    models = doc.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip()
                                               for m in models):
        raise ValueError("'models' is not a list of model ids")
    metadata = doc.get("model_metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError("'model_metadata' is not an object")
    interval = doc.get("interval_minutes")
    if not (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1):
        interval = None
    ids = tuple(dict.fromkeys(m.strip() for m in models))
    parsed: dict[str, ModelSettings] = {}
    for model in ids:
        entry = metadata.get(model)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"model_metadata of {model} is not an object")
        parsed[model] = _model_settings(model, entry, warn)
    return ids, parsed, interval


def _model_settings(model: str, entry: dict[str, Any], warn: Any) -> ModelSettings:
    known = {"omit_temperature", "additional_model_request_fields", "region", "profiles"}
    values: dict[str, Any] = {}

    def take(key: str, ok: bool, value: Any) -> None:
        if entry.get(key) is None:
            return
        if ok:
            values[key] = value
        else:
            warn(f"worklist: {model}: {key} is not what it should be "
                 f"({type(entry[key]).__name__}); ignored")

    omit = entry.get("omit_temperature")
    take("omit_temperature", isinstance(omit, bool), omit)
    extra = entry.get("additional_model_request_fields")
    take("additional_model_request_fields", isinstance(extra, dict), extra)
    region = entry.get("region")
    take("region", isinstance(region, str) and bool(region.strip()),
         region.strip() if isinstance(region, str) else None)
    profiles = entry.get("profiles")
    take("profiles", isinstance(profiles, list) and all(isinstance(p, str) for p in profiles),
         tuple(profiles) if isinstance(profiles, list) else None)
    return ModelSettings(
        omit_temperature=values.get("omit_temperature", False),
        additional_fields=values.get("additional_model_request_fields"),
        region=values.get("region"),
        profiles=values.get("profiles"),
        unknown={k: v for k, v in entry.items() if k not in known},
    )


# The cache

def cache_path(settings: Settings) -> Path:
    """Where the last good answer is kept."""
    return settings.state_dir / CACHE_NAME


def write_cache(settings: Settings, url: str, doc: Any, etag: str | None) -> None:
    """Keep `doc` as the last good answer."""
    write_atomically(cache_path(settings), json.dumps(
        {"fetched_at": datetime.now(UTC).isoformat(), "url": url, "etag": etag, "answer": doc},
        ensure_ascii=False).encode("utf-8"))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data` as the outbox writes: tmp, fsync, rename, fsync of the directory.

    A crash leaves the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclass(frozen=True)
class Cached:
    """The last good answer, its ETag and its age in seconds."""

    answer: Any
    etag: str | None
    age: float
    url: str


def read_cache(settings: Settings) -> Cached | None:
    """The cached answer, or None when there is none (or it cannot be read)."""
    try:
        doc = json.loads(cache_path(settings).read_text(encoding="utf-8"))
        fetched = datetime.fromisoformat(doc["fetched_at"])
        age = max(0.0, (datetime.now(UTC) - fetched).total_seconds())
        return Cached(answer=doc["answer"], etag=doc.get("etag"), age=age,
                      url=str(doc.get("url") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("worklist cache %s unreadable, ignored: %s", cache_path(settings), exc)
        return None


# Fetching

def fetch(settings: Settings, client: Any = None) -> tuple[Any, str]:
    """The server's answer (parsed JSON) and a phrase for where it came from.

    Sent through the ingest client, so the worklist's answer has the bounds and the
    deadline of a write's. A 304 answers the cached document (its age is reset: the
    server confirmed it). Raises WorklistRefused for 401/403, _Unavailable for the rest.
    """
    from .ingest_client import IngestClient

    url = config_url(settings)
    cached = read_cache(settings)
    headers = {"Accept": "application/json"}
    if cached is not None and cached.etag and cached.url == url:
        headers["If-None-Match"] = cached.etag
    own = client is None
    client = client or IngestClient(settings)
    try:
        answer = client.get(url, headers)
    finally:
        if own:
            client.close()
    if answer.status is None:
        raise _Unavailable(f"no answer from {url}: {answer.error}")
    if answer.status in (401, 403):
        raise WorklistRefused(f"the ingest API refused the key for {url} (HTTP "
                              f"{answer.status}): check INGEST_API_KEY")
    if answer.status == 304 and cached is not None:
        write_cache(settings, url, cached.answer, cached.etag)
        return cached.answer, f"runner-config {url} (unchanged)"
    if answer.status != 200:
        raise _Unavailable(f"{url} answered {answer.describe()}")
    if answer.error:
        raise _Unavailable(f"{url}: {answer.error}")
    try:
        doc = json.loads(answer.raw)
        parse(doc, warn=lambda _message: None)
    except (ValueError, RecursionError) as exc:
        raise _Unavailable(f"{url} answered something that is not a worklist: "
                           f"{str(exc)[:200]}") from None
    try:
        write_cache(settings, url, doc, answer.etag)
    except OSError as exc:
        log.warning("worklist not cached in %s: %s", settings.state_dir, exc.strerror or exc)
    return doc, f"runner-config {url}"


def resolve(settings: Settings, *, cli_models: str | None, env_models: str | None,
            override: bool, client: Any = None) -> Worklist:
    """The models of this run, first match wins (module docstring); raises WorklistRefused."""
    from .settings import ENV_MODELS, ENV_MODELS_OVERRIDE, parse_models

    if cli_models is not None and parse_models(cli_models):
        return Worklist(models=parse_models(cli_models), source="--models")
    env = parse_models(env_models)
    if override and env:
        return Worklist(models=env, source=f"{ENV_MODELS} ({ENV_MODELS_OVERRIDE} is set)")
    if not settings.ingest_url and not settings.runner_config_url:
        return Worklist(models=env, source=ENV_MODELS)
    try:
        doc, source = fetch(settings, client)
    except _Unavailable as exc:
        reason = str(exc)
        log.warning("worklist: %s", reason)
        return _fallback(settings, env, reason)
    models, metadata, interval = parse(doc)
    note = None if models else "the server lists no model for this runner: nothing to do"
    if not models and env:
        # Most likely a runner whose server has not been told its models yet.
        note += (f"; {ENV_MODELS} is set but the worklist wins: list the models on the "
                 f"server (flask --app ingest_app models add MODEL_ID --display-name NAME), "
                 f"or set {ENV_MODELS_OVERRIDE}=1")
    return Worklist(models=models, source=source, metadata=metadata,
                    interval_minutes=interval, note=note)


def _fallback(settings: Settings, env: tuple[str, ...], reason: str) -> Worklist:
    from .settings import ENV_MODELS, ENV_WORKLIST_GRACE

    cached = read_cache(settings)
    grace = settings.worklist_grace_hours * 3600
    if cached is not None:
        try:
            models, metadata, interval = parse(cached.answer)
        except ValueError:
            models = None  # type: ignore[assignment]
        if models is not None and cached.age <= grace:
            return Worklist(models=models, source=f"the cached runner-config "
                            f"({_hours(cached.age)} old)", metadata=metadata,
                            interval_minutes=interval, note=reason)
        if models is not None:
            reason += (f"; the cached answer is {_hours(cached.age)} old, past "
                       f"{ENV_WORKLIST_GRACE}={settings.worklist_grace_hours:g}")
    else:
        reason += "; no cached answer"
    if env:
        return Worklist(models=env, source=f"{ENV_MODELS} (fallback)", note=reason)
    return Worklist(models=(), source="nowhere", note=f"{reason}; {ENV_MODELS} is not set "
                    f"either, so nothing is measured")


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

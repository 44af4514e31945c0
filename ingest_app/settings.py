"""The ingest app's configuration: read from the environment once, validated at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from flask import current_app
from pymongo import uri_parser
from pymongo.errors import PyMongoError

import bench_contract as contract

MIN_KEY_CHARS = 32
# Every DB call on the request path must give up well before the 5 s the contract allows.
MAX_DB_TIMEOUT_SECONDS = 4.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Keys are printable ASCII without whitespace or commas, so they survive headers and the env list.
_KEY = re.compile(r"^[!-+\--~]+$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

EXTENSION = "bench_ingest.settings"


class SettingsError(ValueError):
    """The environment does not describe a usable ingest app; the message names every problem."""


@dataclass(frozen=True)
class Settings:
    """Everything the ingest app reads from its environment."""

    mongodb_uri: str = field(repr=False)
    mongodb_db: str = "llm-bench"
    results_collection: str = "metrics_cloud_v2"
    errors_collection: str = "errors_cloud"
    # Shadow and probe samples (sample_role other than published) are kept here, off the charts.
    probe_collection: str = "metrics_cloud_probe"
    # The curated model list and the per-model health the dashboard reads (docs/contract.md
    # section 5); other writers share both.
    models_collection: str = "models"
    health_collection: str = "bench_model_health"
    # The runners' side channel (docs/contract.md section 7): when each runner last fetched
    # its worklist and posted its catalogue, the catalogue itself, and one record per post.
    runners_collection: str = "bench_runners"
    catalog_collection: str = "provider_catalog"
    discovery_collection: str = "bench_discovery_runs"
    # The interval_minutes GET /runner-config tells every runner (its daemon's cycle).
    runner_interval_minutes: int = 60
    # On: a result for a model `models` does not list as enabled goes to the probe collection.
    model_gate: bool = False
    # How often each model is expected to be measured: freshness_status is judged against it.
    cadence_seconds: int = 3600
    # Model health is recounted after the write is answered, at most once this often a
    # worker while writes stream in (ingest_app/health.py).
    health_pass_seconds: float = 0.5
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    read_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    public_read: bool = False
    max_body_bytes: int = contract.MAX_BODY_BYTES
    # Caps server selection plus the operation itself (pymongo.timeout) on every request.
    db_timeout_seconds: float = 3.0
    connect_timeout_ms: int = 2000
    retry_after_seconds: int = 5
    # After a database timeout, requests are answered 503 at once for this long (0: never).
    db_cooldown_seconds: float = 1.5
    # Write requests a minute per key name, counted in each worker process (0: no limit).
    # Database reads (GET /results, /summary, the page) at once in each worker; past it a
    # read is answered 503 at once, so heavy readers never hold the threads writes need.
    max_concurrent_reads: int = 1
    rate_limit_per_minute: int = 600
    # Requests a minute with a missing or wrong key, per client address and worker, before
    # that address is answered 429 for a while whatever it sends (0: no limit).
    auth_failure_limit_per_minute: int = 60
    # A client that stops sending its body is cut off after this long, freeing the thread.
    body_timeout_seconds: float = 10.0
    # A request's headers and body must all arrive within this long of its first byte
    # (the gunicorn worker enforces it, ingest_app/worker.py); past it 408 or 400.
    request_timeout_seconds: float = 20.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise SettingsError naming every bad variable."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        uri = env.get("MONGODB_URI", "").strip()
        if not uri:
            problems.append("MONGODB_URI is missing (e.g. mongodb://db-host:27017/)")
        elif not uri.startswith(("mongodb://", "mongodb+srv://")):
            problems.append("MONGODB_URI must start with mongodb:// or mongodb+srv://")
        elif (reason := _uri_problem(uri)) is not None:
            problems.append(f"MONGODB_URI is not a valid connection string: {reason}")

        names = {}
        for var, default in (
            ("MONGODB_DB", cls.mongodb_db),
            ("MONGODB_RESULTS_COLLECTION", cls.results_collection),
            ("MONGODB_ERRORS_COLLECTION", cls.errors_collection),
            ("MONGODB_PROBE_COLLECTION", cls.probe_collection),
            ("MONGODB_MODELS_COLLECTION", cls.models_collection),
            ("MONGODB_HEALTH_COLLECTION", cls.health_collection),
            ("MONGODB_RUNNERS_COLLECTION", cls.runners_collection),
            ("MONGODB_CATALOG_COLLECTION", cls.catalog_collection),
            ("MONGODB_DISCOVERY_COLLECTION", cls.discovery_collection),
        ):
            value = env.get(var, "").strip() or default
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value) or value.startswith("."):
                problems.append(f"{var} must be 1-64 letters, digits, '_', '-' or '.'")
            names[var] = value

        collections = [names[var] for var in names if var.endswith("_COLLECTION")]
        if len(set(collections)) < len(collections):
            problems.append(", ".join(var for var in names if var.endswith("_COLLECTION"))
                            + f" must name {len(collections)} different collections")

        api_keys = _parse_keys(env, "INGEST_API_KEYS", problems, required=True)
        read_keys = _parse_keys(env, "INGEST_READ_KEYS", problems, required=False)
        clash = {k for _, k in api_keys} & {k for _, k in read_keys}
        if clash:
            problems.append("INGEST_READ_KEYS must not reuse a key from INGEST_API_KEYS")

        public_read = _parse_bool(env, "INGEST_PUBLIC_READ", problems)
        model_gate = _parse_bool(env, "INGEST_MODEL_GATE", problems)
        cadence = _parse_number(env, "INGEST_CADENCE_SECONDS", int, cls.cadence_seconds,
                                60, 7 * 86400, problems)
        health_pass = _parse_number(env, "INGEST_HEALTH_PASS_SECONDS", float,
                                    cls.health_pass_seconds, 0.05, 3600, problems)
        max_body = _parse_number(env, "INGEST_MAX_BODY_BYTES", int, contract.MAX_BODY_BYTES,
                                 1024, 64 * 1024 * 1024, problems)
        db_timeout = _parse_number(env, "MONGODB_TIMEOUT_SECONDS", float, cls.db_timeout_seconds,
                                   0.1, MAX_DB_TIMEOUT_SECONDS, problems)
        retry_after = _parse_number(env, "INGEST_RETRY_AFTER_SECONDS", int,
                                    cls.retry_after_seconds, 1, 3600, problems)
        cooldown = _parse_number(env, "INGEST_DB_COOLDOWN_SECONDS", float,
                                 cls.db_cooldown_seconds, 0, 60, problems)
        rate_limit = _parse_number(env, "INGEST_RATE_LIMIT", int, cls.rate_limit_per_minute,
                                   0, 1_000_000, problems)
        auth_failures = _parse_number(env, "INGEST_AUTH_FAILURE_LIMIT", int,
                                      cls.auth_failure_limit_per_minute, 0, 1_000_000, problems)
        max_reads = _parse_number(env, "INGEST_MAX_CONCURRENT_READS", int,
                                  cls.max_concurrent_reads, 1, 1000, problems)
        body_timeout = _parse_number(env, "INGEST_BODY_TIMEOUT_SECONDS", float,
                                     cls.body_timeout_seconds, 0.5, 120, problems)

        interval = _parse_number(env, "INGEST_RUNNER_INTERVAL_MINUTES", int,
                                 cls.runner_interval_minutes, 1, 7 * 24 * 60, problems)
        request_timeout = _parse_number(env, "INGEST_REQUEST_TIMEOUT_SECONDS", float,
                                        cls.request_timeout_seconds, 1, 600, problems)
        if problems:
            raise SettingsError("invalid ingest settings: " + "; ".join(problems))
        return cls(
            mongodb_uri=uri,
            mongodb_db=names["MONGODB_DB"],
            results_collection=names["MONGODB_RESULTS_COLLECTION"],
            errors_collection=names["MONGODB_ERRORS_COLLECTION"],
            probe_collection=names["MONGODB_PROBE_COLLECTION"],
            models_collection=names["MONGODB_MODELS_COLLECTION"],
            health_collection=names["MONGODB_HEALTH_COLLECTION"],
            runners_collection=names["MONGODB_RUNNERS_COLLECTION"],
            catalog_collection=names["MONGODB_CATALOG_COLLECTION"],
            discovery_collection=names["MONGODB_DISCOVERY_COLLECTION"],
            runner_interval_minutes=interval,
            model_gate=model_gate,
            cadence_seconds=cadence,
            health_pass_seconds=health_pass,
            api_keys=api_keys,
            read_keys=read_keys,
            public_read=public_read,
            max_body_bytes=max_body,
            db_timeout_seconds=db_timeout,
            connect_timeout_ms=min(int(db_timeout * 1000), cls.connect_timeout_ms),
            retry_after_seconds=retry_after,
            db_cooldown_seconds=cooldown,
            max_concurrent_reads=max_reads,
            rate_limit_per_minute=rate_limit,
            auth_failure_limit_per_minute=auth_failures,
            body_timeout_seconds=body_timeout,
            request_timeout_seconds=request_timeout,
        )


def current() -> Settings:
    """The settings of the app handling the current request."""
    return current_app.extensions[EXTENSION]


def _parse_keys(
    env: Mapping[str, str], var: str, problems: list[str], *, required: bool
) -> tuple[tuple[str, str], ...]:
    raw = env.get(var, "").strip()
    if not raw:
        if required:
            problems.append(f"{var} is missing (comma-separated name:key pairs, "
                            f"keys of at least {MIN_KEY_CHARS} characters)")
        return ()
    pairs: list[tuple[str, str]] = []
    bad: list[str] = []
    for n, entry in enumerate(raw.split(","), start=1):
        name, sep, key = entry.strip().partition(":")
        # Only the entry's position and name are ever reported: never any part of a key.
        where = f"entry {n}" + (f" ({name!r})" if _NAME.match(name) else "")
        if not sep:
            # Without a ':' the entry may be a key alone (its name forgotten): never shown.
            bad.append(f"entry {n} is not name:key")
        elif not _NAME.match(name):
            bad.append(f"entry {n} has a bad name (letters, digits, '.', '_', '-'; at most 64)")
        elif len(key) < MIN_KEY_CHARS:
            bad.append(f"{where} has a key shorter than {MIN_KEY_CHARS} characters")
        elif not _KEY.match(key):
            bad.append(f"{where} has a key with characters other than printable ASCII")
        else:
            pairs.append((name, key))
    if len({n for n, _ in pairs}) != len(pairs):
        bad.append("a name appears twice")
    if len({k for _, k in pairs}) != len(pairs):
        bad.append("a key appears twice")
    if bad:
        problems.append(f"{var}: " + ", ".join(bad))
    return tuple(pairs)


def _uri_problem(uri: str) -> str | None:
    """Why pymongo would refuse the URI, with no part of its credentials; None if it parses."""
    if uri.startswith("mongodb+srv://"):
        # Parsing an SRV URI asks DNS, which must not decide whether the app boots.
        return None
    try:
        uri_parser.parse_uri(uri)
    except (PyMongoError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        userinfo = uri.partition("://")[2].rpartition("@")[0]
        for secret in (userinfo, userinfo.partition(":")[2]):
            if secret:
                reason = reason.replace(secret, "***")
        return reason
    return None


def _parse_bool(env: Mapping[str, str], var: str, problems: list[str]) -> bool:
    value = env.get(var, "").strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        problems.append(f"{var} must be true or false")
    return False


def _parse_number(env, var, kind, default, low, high, problems):  # type: ignore[no-untyped-def]
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        problems.append(f"{var} must be a number between {low} and {high}")
        return default
    if not low <= value <= high:
        problems.append(f"{var} must be between {low} and {high}")
        return default
    return value

"""bench-runner: parse options, wire the parts together, print, and exit with a meaningful code.

The work lives in the library modules (cycle, outbox, ingest_client, the
providers); this module only turns options into Settings and reports into lines.
boto3 and requests are imported inside the commands that use them so that
`bench-runner --help` starts as fast as click itself.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterable, Mapping
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import bench_contract as contract

from . import settings as cfg

if TYPE_CHECKING:
    from .cycle import CycleReport, ModelOutcome
    from .outbox import DrainReport


class ExitCode(IntEnum):
    """What `once` and `outbox flush` exit with; the most serious problem wins.

    Each code carries its help line, so the table in `--help` is this enum.
    """

    OK = 0, "every model measured and everything delivered"
    ERROR = 1, "unexpected error"
    CONFIG = 2, "configuration error (nothing was called)"
    MODEL_FAILED = 3, "some model failed (its failure was delivered)"
    PENDING = 4, "records wait in the outbox (ingest API unreachable)"
    DEAD = 5, "the ingest API refused records for good (see `outbox status`)"
    OUTBOX_FULL = 6, "outbox over its bound or disk full: nothing new measured"
    AUTH = 7, f"the ingest API refused the key: check {cfg.ENV_API_KEY}"
    # The shell's code for SIGINT (128 + 2): Ctrl-C is not "some model failed".
    INTERRUPTED = 130, "interrupted (Ctrl-C): the models in flight were finished and queued"

    help: str

    def __new__(cls, value: int, help_text: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.help = help_text
        return member


def exit_codes_text(codes: Iterable[ExitCode] = ExitCode,
                    meaning: Mapping[ExitCode, str] | None = None) -> str:
    """The exit-code table of a command's help, from ExitCode (`meaning` rewords a line)."""
    meaning = meaning or {}
    return "\b\nExit codes:\n" + "\n".join(
        f"  {int(code)}  {meaning.get(code, code.help)}" for code in codes)


def exit_code(report: CycleReport) -> ExitCode:
    """The most serious problem of a cycle: delivery problems before model failures."""
    if report.setup_error:
        return ExitCode.CONFIG
    if report.cycle_error:
        return ExitCode.ERROR
    return _most_serious(auth=report.delivery.auth_refused,
                         full=bool(report.outbox_full or report.lost),
                         dead=bool(report.delivery.dead or report.refused_at_queue),
                         pending=bool(report.pending or report.delivery.busy),
                         failed=report.failed)


def drain_exit_code(report: DrainReport) -> ExitCode:
    """The most serious problem of an `outbox flush`, ranked as a cycle's are."""
    return _most_serious(auth=report.auth_refused, dead=bool(report.dead),
                         pending=bool(report.pending_left or report.busy))


def _most_serious(*, auth: bool, dead: bool, pending: bool, full: bool = False,
                  failed: bool = False) -> ExitCode:
    ranked = ((ExitCode.AUTH, auth), (ExitCode.OUTBOX_FULL, full), (ExitCode.DEAD, dead),
              (ExitCode.PENDING, pending), (ExitCode.MODEL_FAILED, failed))
    return next((code for code, found in ranked if found), ExitCode.OK)


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
EXIT_CODES_TEXT = exit_codes_text()
KEY_TEXT = (f"The ingest API key is read only from the environment ({cfg.ENV_API_KEY}), "
            "never from an option, so it stays out of process listings.")
DELIVERY_EPILOG = EXIT_CODES_TEXT + "\n\n" + KEY_TEXT


class ConfigProblem(click.ClickException):
    """A configuration error: one line on stderr, exit code 2, nothing called."""

    exit_code = int(ExitCode.CONFIG)


class _Temperature(click.ParamType):
    name = "FLOAT|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | None:
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() in ("none", "null", ""):
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'none'", param, ctx)


def _state_dir_option(f: Any) -> Any:
    return click.option(
        "--state-dir", envvar=cfg.ENV_STATE_DIR, show_envvar=True, type=click.Path(path_type=Path),
        default=None, show_default="$STATE_DIRECTORY under systemd, else the user state dir",
        help="Directory holding the outbox (pending/ and dead/ records).")(f)


def _log_level_option(default: str) -> Any:
    return click.option(
        "--log-level", envvar=cfg.ENV_LOG_LEVEL, show_envvar=True, default=default,
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        help="Log lines (to stderr) at this level and above.")


def _ingest_url_option(f: Any) -> Any:
    return click.option(
        "--ingest-url", envvar=cfg.ENV_INGEST_URL, show_envvar=True, default=None,
        show_default="none: required",
        help="Full URL of the ingest API's POST /ingest; /batch and /error are derived.")(f)


PROVIDER_TEXT = (
    "openai, groq, together, fireworks, deepinfra and cerebras are OpenAI-compatible hosts "
    "(key from OPENAI_API_KEY, GROQ_API_KEY, ...); openai-compatible is any other server "
    f"(set {cfg.ENV_OPENAI_BASE_URL} and {cfg.ENV_OPENAI_PROVIDER_NAME}); anthropic is "
    f"Anthropic's Messages API (key from {cfg.ENV_ANTHROPIC_API_KEY}).")


def _provider_option(help_text: str) -> Any:
    from .provider import PROVIDER_CHOICES

    return click.option("--provider", envvar=cfg.ENV_PROVIDER, show_envvar=True,
                        type=click.Choice(PROVIDER_CHOICES), default=cfg.DEFAULT_PROVIDER,
                        help=f"{help_text} {PROVIDER_TEXT}")


def _profile_cost() -> str:
    from .records import CATALOGUE

    return "; ".join(f"{p.profile_id} up to {p.max_tokens} output tokens"
                     + ("" if p.sample_role == "published" else f" ({p.sample_role}, kept off "
                        "the public charts)") for p in CATALOGUE.values())


def _measure_options(profiles_default: str) -> Any:
    return lambda f: _with_measure_options(f, profiles_default)


def _with_measure_options(f: Any, profiles_default: str) -> Any:
    options = [
        click.option("--models", default=None,
                     show_default="the server's worklist, else $" + cfg.ENV_MODELS,
                     help="Comma-separated model ids to measure (inference-profile ids too); "
                          "wins over the server's worklist and " + cfg.ENV_MODELS + ", which "
                          "wins over the worklist only with " + cfg.ENV_MODELS_OVERRIDE + "=1 "
                          "(docs/configuration.md)."),
        _provider_option("Model host to measure."),
        click.option("--region", envvar=cfg.ENV_REGION, show_envvar=True, default=None,
                     show_default="boto3's default (AWS_DEFAULT_REGION or config)",
                     help="AWS region to call (bedrock only)."),
        click.option("--concurrency", envvar=cfg.ENV_CONCURRENCY, show_envvar=True,
                     type=click.IntRange(1, 64), default=cfg.DEFAULT_CONCURRENCY,
                     help="Models measured at once (one client, a connection each)."),
        click.option("--profiles", envvar=cfg.ENV_PROFILES, show_envvar=True,
                     default=profiles_default,
                     help="Comma-separated profiles, each measured for every model in turn. "
                          "Token cost per model and run: " + _profile_cost() + "; each "
                          "also sends the one-sentence prompt as input."),
        click.option("--prompt", default=contract.DEFAULT_PROMPT,
                     show_default="the cloud-default-v1 prompt",
                     help="Prompt of a profile of your own, measured instead of --profiles "
                          "and stored as a probe (change --profile-id with it)."),
        click.option("--max-tokens", type=click.IntRange(1), default=contract.DEFAULT_MAX_TOKENS,
                     help="maxTokens asked of every model."),
        click.option("--temperature", type=_Temperature(), default=contract.DEFAULT_TEMPERATURE,
                     help="Temperature, or 'none' to leave it out of the request."),
        click.option("--profile-id", default=contract.DEFAULT_PROFILE_ID,
                     help="Name of this prompt + max tokens + temperature, stored with results."),
        click.option("--call-timeout", type=click.FloatRange(1), default=cfg.DEFAULT_CALL_TIMEOUT,
                     help="Seconds one model may take, retries included; past it, a timeout."),
        click.option("--max-pending", envvar=cfg.ENV_MAX_PENDING, show_envvar=True,
                     type=click.IntRange(1), default=cfg.DEFAULT_MAX_PENDING,
                     help="Bound on records waiting in the outbox; past it nothing new is "
                          "measured."),
        _ingest_url_option,
        _state_dir_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redact_secrets)


def _redact_secrets(record: Any) -> bool:
    """Scrub credentials from every line, the SDK's own debug lines included.

    botocore logs the signed headers at debug level (the session token, the access key id
    in the Authorization header); no log level may show a credential.
    """
    import os

    from .failures import redact

    text = redact(record.getMessage())
    for name in (cfg.ENV_API_KEY, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_ACCESS_KEY_ID", cfg.ENV_ANTHROPIC_API_KEY,
                 *_vendor_key_variables()):
        value = os.environ.get(name, "").strip()
        if len(value) >= 8 and value in text:
            text = text.replace(value, "[redacted]")
    record.msg, record.args = text, None
    return True


def _vendor_key_variables() -> tuple[str, ...]:
    """The variables that may hold a model host's API key: every preset's, and the named one."""
    import os

    from .openai_endpoints import PRESETS

    named = os.environ.get(cfg.ENV_OPENAI_API_KEY_ENV, "").strip()
    return (*(p.key_env for p in PRESETS.values()), *([named] if named else []))


def _settings(opts: dict[str, Any], *, need_models: bool, need_delivery: bool) -> cfg.Settings:
    from dataclasses import replace

    keys = ("state_dir", "ingest_url", "models", "provider", "region", "concurrency", "prompt",
            "max_tokens", "temperature", "profile_id", "profiles", "max_pending")
    try:
        settings = cfg.load(**{k: opts[k] for k in keys if k in opts})
    except cfg.ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    if "call_timeout" in opts:
        settings = replace(settings, call_timeout=opts["call_timeout"])
    try:
        settings.check(need_models=need_models, need_delivery=need_delivery)
    except cfg.ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    if need_delivery and settings.cleartext_host:
        click.echo(f"bench-runner: warning: {cfg.ENV_INGEST_URL} is plain http:// to "
                   f"{settings.cleartext_host}: the key goes in clear text "
                   f"({cfg.ENV_ALLOW_HTTP} is set)", err=True)
    return settings


def _outbox(settings: cfg.Settings) -> Any:
    from .outbox import Outbox

    try:
        return Outbox.from_settings(settings)
    except OSError as exc:
        raise ConfigProblem(f"cannot use the state dir {settings.state_dir}: "
                            f"{exc.strerror or exc}") from None


def _start(log_level: str, opts: dict[str, Any], *, need_models: bool) -> tuple[cfg.Settings, Any]:
    """What every delivering command does first: logging, checked settings, the outbox."""
    _configure_logging(log_level)
    settings = _settings(opts, need_models=need_models, need_delivery=True)
    return settings, _outbox(settings)


def _no_model_source(opts: dict[str, Any]) -> bool:
    """True when neither --models, BENCHMARK_MODELS nor a worklist URL could name a model."""
    import os

    return not (cfg.parse_models(opts.get("models")) or cfg.parse_models(
        os.environ.get(cfg.ENV_MODELS)) or opts.get("ingest_url")
        or os.environ.get(cfg.ENV_RUNNER_CONFIG_URL, "").strip())


class AuthProblem(click.ClickException):
    """The ingest API refused the key: one line on stderr, exit code 7, nothing measured."""

    exit_code = int(ExitCode.AUTH)


def _worklist(settings: cfg.Settings, cli_models: str | None) -> Any:
    """Where this run's models come from (runner/worklist.py), printed and logged.

    WorklistRefused (401/403) is raised for the caller to turn into exit 7.
    """
    import logging
    import os

    from .worklist import resolve

    worklist = resolve(settings, cli_models=cli_models,
                       env_models=os.environ.get(cfg.ENV_MODELS),
                       override=cfg.truthy(os.environ.get(cfg.ENV_MODELS_OVERRIDE)))
    logging.getLogger("runner").info("%s", worklist.describe())
    return worklist


def _with_worklist(settings: cfg.Settings, worklist: Any) -> cfg.Settings:
    """Settings measuring the worklist's models, checked as --models would be."""
    from dataclasses import replace

    settings = replace(settings, models=worklist.models, model_settings=worklist.metadata)
    try:
        settings.check(need_models=bool(worklist.models), need_delivery=True)
    except cfg.ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    return settings


def _warm_provider(settings: cfg.Settings) -> Any:
    from .provider import SetupError, get_provider

    try:
        provider = get_provider(settings.provider, region=settings.region,
                                concurrency=settings.concurrency,
                                call_timeout=settings.call_timeout, retries=settings.retries)
        provider.warm()
    except SetupError as exc:
        raise ConfigProblem(str(exc)) from None
    return provider


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _outcome_line(outcome: ModelOutcome) -> str:
    r: Any = outcome.record
    profile = f"  [{r.benchmark_profile_id}]" if r.benchmark_profile_id else ""
    if outcome.ok:
        return (f"{outcome.model}: ok  TTFT {_fmt(r.time_to_first_token, '.3f')} s  "
                f"{r.tokens_per_second:.1f} tok/s  {r.output_tokens} tokens"
                + ("" if r.attempts == 1 else f"  ({r.attempts} attempts)")
                + f"  64 visible in {_fmt(r.time_to_64_visible_tokens_seconds, '.3f')} s"
                + profile)
    return f"{outcome.model}: FAILED {r.error_kind}: {r.message}{profile}"


def _table(report: CycleReport) -> str:
    several = bool(report.parts)
    rows = [("MODEL", "PROFILE", "OUTCOME", "TTFT s", "TOK/S", "TOKENS", "TO-64 s")]
    for part in report.parts or [report]:
        by_model = {o.model: o for o in part.outcomes}
        profile = part.profile_id or "-"
        for model in part.models:
            o = by_model.get(model)
            if o is None:
                rows.append((model, profile, "not measured", "-", "-", "-", "-"))
            elif o.ok:
                r: Any = o.record
                rows.append((model, profile, "ok", _fmt(r.time_to_first_token, ".3f"),
                             f"{r.tokens_per_second:.1f}", str(r.output_tokens),
                             _fmt(r.time_to_64_visible_tokens_seconds, ".3f")))
            else:
                rows.append((model, profile, f"failed: {o.record.error_kind}", "-", "-", "-",
                             "-"))
    if not several:
        # One profile: the table a single run has always printed.
        rows = [row[:1] + row[2:6] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _delivery_line(report: CycleReport) -> str:
    d = report.delivery
    withheld = f", {d.withheld} not published (model gate)" if d.withheld else ""
    return (f"delivered {d.delivered + d.duplicates} ({d.duplicates} already stored{withheld}), "
            f"dead-lettered {d.dead + report.refused_at_queue}, pending {report.pending}")


@click.group(context_settings=CONTEXT, epilog=EXIT_CODES_TEXT)
@click.version_option(package_name="bench-ingest", prog_name="bench-runner")
def main() -> None:
    """Measure hosted LLMs (Bedrock, OpenAI-compatible, Anthropic), deliver every result.

    Every result and every failure is written to a durable outbox first, then sent
    to the ingest API; what cannot be delivered waits in the outbox for the next run.
    """


@main.command(epilog=DELIVERY_EPILOG)
@_measure_options(cfg.DEFAULT_PROFILES)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON on stdout.")
@_log_level_option("warning")
@click.pass_context
def once(ctx: click.Context, as_json: bool, log_level: str, **opts: Any) -> None:
    """Measure each model once, deliver every record, print a summary.

    The models are --models, else the server's worklist (GET /runner-config), else
    BENCHMARK_MODELS; the first line on stderr says which. When the last catalogue
    post is older than BENCH_RUNNER_CATALOG_HOURS (12), the run then posts the Bedrock
    catalogue, as the daemon does; a failed post is one line and changes no exit code.
    """
    settings, outbox = _start(log_level, opts, need_models=_no_model_source(opts))
    from .worklist import WorklistRefused

    try:
        worklist = _worklist(settings, opts.get("models"))
    except WorklistRefused as exc:
        raise AuthProblem(f"{exc}; nothing was measured") from None
    settings = _with_worklist(settings, worklist)
    if not worklist.models:
        _nothing_to_measure(ctx, settings, outbox, worklist, as_json)
    provider = _warm_provider(settings)
    # After the set-up, so that a configuration error stays the one line it is.
    click.echo(f"bench-runner: {worklist.describe()}", err=True)
    from .cycle import run_profiles
    from .ingest_client import IngestClient

    def show(outcome: ModelOutcome) -> None:
        click.echo(_outcome_line(outcome), err=as_json)

    stop = _StopSignal()
    previous = _catch_stop_signals(stop)
    posted = None
    try:
        with IngestClient(settings) as client:
            report = run_profiles(settings, provider, outbox, client, warm=False,
                                  on_outcome=show, stop=stop)
            if stop.signum is None and not report.delivery.auth_refused:
                posted = _catalogue_if_due(settings, provider, client)
    finally:
        provider.close()
        _restore_signals(previous)
    code = exit_code(report)
    interrupted = stop.signum == signal.SIGINT
    if interrupted:
        # Ctrl-C gets the shell's code, whatever else happened (the lines below say that).
        code = ExitCode.INTERRUPTED
    if as_json:
        import json

        click.echo(json.dumps({"exit_code": int(code), "models_from": worklist.source,
                               **report.to_json()}, indent=2))
    else:
        click.echo("")
        click.echo(_table(report))
        click.echo(_delivery_line(report))
    for problem in report.problems():
        click.echo(f"bench-runner: {problem}", err=True)
    if posted is not None:
        click.echo(f"bench-runner: {posted.describe()}", err=True)
    if interrupted:
        click.echo("bench-runner: interrupted (Ctrl-C): the models in flight were finished "
                   "and queued; run again to measure the rest", err=True)
    ctx.exit(int(code))


def _catalogue_if_due(settings: cfg.Settings, provider: Any, client: Any) -> Any:
    """A timer's run posts the catalogue as the daemon does, after its measurements.

    Only a provider with a catalogue, and only when the last stored post is older than
    BENCH_RUNNER_CATALOG_HOURS; a post that fails is one line, tried again at the next
    run, and changes neither the exit code nor the outbox.
    """
    import logging

    from . import catalog

    if not hasattr(provider, "listing") or not catalog.due(settings, cfg.catalog_hours()):
        return None
    posted = catalog.post(settings, provider, client)
    # To the log file; the terminal (and the journal) gets the caller's one line.
    logging.getLogger("runner").info("%s", posted.describe())
    return posted


def _nothing_to_measure(ctx: click.Context, settings: cfg.Settings, outbox: Any, worklist: Any,
                        as_json: bool) -> None:
    """No model to measure: deliver what waits, say why, exit 0 (the server said so) or 2."""
    from .ingest_client import IngestClient

    with IngestClient(settings) as client:
        drained = outbox.drain(client)
    code = drain_exit_code(drained)
    if worklist.source == "nowhere":
        # Neither the server, nor a fresh cached answer, nor BENCHMARK_MODELS.
        click.echo(f"bench-runner: configuration: no models to measure: {worklist.note} (use "
                   f"--models or set {cfg.ENV_MODELS})", err=True)
        code = ExitCode.CONFIG if code == ExitCode.OK else code
    if worklist.source != "nowhere":  # else the line above says why
        click.echo(f"bench-runner: {worklist.describe()}", err=True)
    if as_json:
        import json

        click.echo(json.dumps({"exit_code": int(code), "models_from": worklist.source,
                               "results": [], "failures": [], "not_measured": [],
                               "problems": [worklist.note, *drained.problems]}, indent=2))
    else:
        click.echo("nothing to measure" + (f": {worklist.note}" if worklist.note else ""))
    for problem in drained.problems:
        click.echo(f"bench-runner: {problem}", err=True)
    ctx.exit(int(code))


class _StopSignal:
    """Set from a signal handler; polled, because taking a lock inside a handler can deadlock."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the signal that asked, if one did

    def set(self, signum: int | None = None) -> None:
        self.requested = True
        self.signum = self.signum or signum

    def is_set(self) -> bool:
        return self.requested

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.2, left))


def _catch_stop_signals(stop: _StopSignal) -> dict[int, Any]:
    """SIGTERM/SIGINT start no new model; the ones in flight finish and are queued.

    A model being measured was called (and billed): killing the run there would lose its
    record. A second signal acts as usual.
    """
    import signal

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: Any) -> None:
        stop.set(signum)
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)


@main.command(epilog=exit_codes_text(
    (ExitCode.OK, ExitCode.CONFIG, ExitCode.AUTH),
    {ExitCode.OK: "stopped by SIGTERM or SIGINT",
     ExitCode.CONFIG: "configuration error at start (nothing was called)"}) + "\n\n" + KEY_TEXT)
@click.option("--interval", type=click.FloatRange(min=0.0), default=60.0,
              envvar=cfg.ENV_INTERVAL, show_envvar=True,
              show_default="the server's interval_minutes, else 60",
              help="Minutes from the start of one cycle to the start of the next. Given "
                   "(or set in the environment), it is pinned; else the daemon follows the "
                   "worklist's interval_minutes.")
@_measure_options(cfg.DASHBOARD_PROFILES)
@_log_level_option("info")
@click.pass_context
def daemon(ctx: click.Context, interval: float, log_level: str, **opts: Any) -> None:
    """Run a cycle every --interval minutes until SIGTERM or SIGINT (for containers).

    Each cycle reads the worklist again (GET /runner-config), so a model added, disabled
    or re-configured on the server is measured accordingly from the next cycle on; the
    catalogue is posted every BENCH_RUNNER_CATALOG_HOURS. A bad cycle is logged and
    reported, never fatal. It exits on a clean stop, on a configuration error at start,
    and when the ingest API refuses the key (every later cycle would only dead-letter
    its records).
    """
    from click.core import ParameterSource

    settings, outbox = _start(log_level, opts, need_models=_no_model_source(opts))
    try:
        catalog_every = cfg.catalog_hours()
    except cfg.ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    pinned = ctx.get_parameter_source("interval") not in (ParameterSource.DEFAULT, None)
    provider = _warm_provider(settings)
    import logging
    import signal

    from . import catalog
    from .cycle import report_cycle_failure, run_profiles
    from .failures import describe
    from .ingest_client import IngestClient
    from .worklist import WorklistRefused

    log = logging.getLogger("runner")
    stop = _StopSignal()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("daemon started profiles=%s interval_min=%s%s catalog_hours=%g",
             ",".join(p.profile_id for p in settings.profiles), interval,
             " (pinned)" if pinned else " (until the worklist says)", catalog_every)
    cycles = 0
    code = ExitCode.OK
    base = settings
    try:
        with IngestClient(settings) as client:
            while not stop.is_set() and code == ExitCode.OK:
                started = time.monotonic()
                wait = interval
                try:
                    worklist = _worklist(base, opts.get("models"))
                    if not pinned and worklist.interval_minutes:
                        wait = float(worklist.interval_minutes)
                    settings = _with_worklist(base, worklist)
                    if worklist.models:
                        report = run_profiles(
                            settings, provider, outbox, client, warm=cycles > 0, stop=stop,
                            on_outcome=lambda o: log.info("%s", _outcome_line(o)))
                        log.info("cycle %d exit=%d %s", cycles + 1, exit_code(report),
                                 _delivery_line(report))
                        problems, refused = report.problems(), report.delivery.auth_refused
                    else:
                        drained = outbox.drain(client)
                        log.warning("cycle %d: nothing to measure: %s", cycles + 1,
                                    worklist.note or "no models")
                        problems, refused = drained.problems, drained.auth_refused
                    for problem in problems:
                        log.warning("cycle %d: %s", cycles + 1, problem)
                    if refused:
                        code = ExitCode.AUTH
                    elif catalog.due(settings, catalog_every):
                        posted = catalog.post(settings, provider, client)
                        # Not stored: tried again next cycle; the records are not touched.
                        (log.info if posted.ok else log.warning)("%s", posted.describe())
                except WorklistRefused as exc:
                    log.error("cycle %d: %s", cycles + 1, exc)
                    code = ExitCode.AUTH
                except ConfigProblem as exc:
                    # A worklist naming something that is not a model id: this cycle only.
                    log.error("cycle %d: %s; the next one runs on schedule", cycles + 1,
                              exc.message)
                except Exception as exc:  # noqa: BLE001 - one bad cycle must not end the daemon
                    log.error("cycle %d failed; the next one runs on schedule: %s", cycles + 1,
                              describe(exc))
                    report_cycle_failure(settings, outbox, exc, client)
                cycles += 1
                if code == ExitCode.OK:
                    log.info("next cycle in %g min", wait)
                    stop.wait(max(0.0, wait * 60 - (time.monotonic() - started)))
    finally:
        provider.close()
    log.info("daemon stopped after %d cycle(s)", cycles)
    if code == ExitCode.AUTH:
        log.error("daemon stopped: the ingest API refused the key; check INGEST_API_KEY, then "
                  "move the refused records back with `bench-runner outbox requeue`")
        sys.exit(int(code))


@main.command(name="models")
@_provider_option("Model host to list.")
@click.option("--region", envvar=cfg.ENV_REGION, show_envvar=True, default=None,
              show_default="boto3's default (AWS_DEFAULT_REGION or config)",
              help="AWS region whose catalogue to list (bedrock only).")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
@click.option("--post", is_flag=True,
              help="Instead of printing it, send the whole catalogue (every model and "
                   "profile, text or not) to the ingest API's POST /ingest/catalog, with the "
                   "runner's key.")
@_ingest_url_option
@_state_dir_option
@click.pass_context
def models_command(ctx: click.Context, provider: str, region: str | None, as_json: bool,
                   post: bool, ingest_url: str | None, state_dir: Path | None) -> None:
    """List the models you can measure (text output, streaming) and inference profiles."""
    import dataclasses
    import json

    from .provider import SetupError, get_provider

    if post:
        _post_catalogue(ctx, provider=provider, region=region, ingest_url=ingest_url,
                        state_dir=state_dir)

    try:
        host = get_provider(provider, region=region)
        try:
            entries = host.catalogue()
        finally:
            host.close()
    except SetupError as exc:
        raise ConfigProblem(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any SDK error becomes one readable line
        raise click.ClickException(f"could not list models: {type(exc).__name__}: {exc}") \
            from None
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return
    rows = [("MODEL ID", "KIND", "VENDOR", "NAME", "NOTE")]
    for e in entries:
        note = "needs an inference-profile id" if e.needs_profile else ""
        if e.status and e.status.upper() != "ACTIVE":
            note = ", ".join(filter(None, [note, e.status.lower()]))
        rows.append((e.model_id, e.kind, e.vendor, e.name, note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _post_catalogue(ctx: click.Context, **opts: Any) -> None:
    """`models --post`: list the whole catalogue, POST it, say what came of it, exit."""
    from .catalog import post
    from .ingest_client import IngestClient
    from .provider import SetupError, get_provider

    _configure_logging("warning")
    settings = _settings(opts, need_models=False, need_delivery=True)
    try:
        host = get_provider(settings.provider, region=settings.region)
    except SetupError as exc:
        raise ConfigProblem(str(exc)) from None
    try:
        with IngestClient(settings) as client:
            outcome = post(settings, host, client)
    finally:
        host.close()
    if outcome.ok:
        click.echo(outcome.describe())
        ctx.exit(0)
    click.echo(f"bench-runner: {outcome.describe()}", err=True)
    ctx.exit(int(ExitCode.AUTH if outcome.status in (401, 403) else ExitCode.ERROR))


@main.group()
def outbox() -> None:
    """Inspect and deliver the records waiting in the outbox."""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m {s % 60}s"
    return f"{s}s"


@outbox.command()
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(state_dir: Path | None, as_json: bool) -> None:
    """Counts, the oldest record's age, and each dead record with its reason."""
    import dataclasses
    import json

    settings = cfg.load(state_dir=state_dir)
    st = _outbox(settings).status()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(st), indent=2))
        return
    click.echo(f"outbox: {settings.state_dir / 'outbox'}")
    if st.pending:
        click.echo(f"pending: {st.pending} (oldest {_age(st.oldest_age)} old, next attempt in "
                   f"{_age(st.next_attempt_in)})")
    else:
        click.echo("pending: 0")
    click.echo(f"dead: {st.dead}")
    for item in st.dead_items:
        status_text = f"HTTP {item.status}" if item.status else "no answer"
        click.echo(f"  {item.name}  {status_text}  {item.reason}")
    if st.partial:
        click.echo(f"partial files in tmp/: {st.partial} (removed at the next drain)")


@outbox.command(epilog=DELIVERY_EPILOG)
@click.option("--now", is_flag=True,
              help="Ignore the backoff between attempts (a Retry-After is still honoured).")
@_ingest_url_option
@_state_dir_option
@_log_level_option("warning")
@click.pass_context
def flush(ctx: click.Context, now: bool, log_level: str, **opts: Any) -> None:
    """Deliver the waiting records now, oldest first."""
    settings, box = _start(log_level, opts, need_models=False)
    from .ingest_client import IngestClient

    with IngestClient(settings) as client:
        report = box.drain(client, ignore_backoff=now)
    click.echo(f"delivered {report.delivered + report.duplicates} ({report.duplicates} already "
               f"stored), dead-lettered {report.dead}, pending {report.pending_left} "
               f"({report.not_due} waiting for their next attempt)")
    for problem in report.problems:
        click.echo(f"bench-runner: {problem}", err=True)
    ctx.exit(int(drain_exit_code(report)))


@outbox.command()
@_state_dir_option
def requeue(state_dir: Path | None) -> None:
    """Move every dead record back to pending (after fixing what refused it, e.g. the key)."""
    from .outbox import OutboxBusy

    try:
        moved = _outbox(cfg.load(state_dir=state_dir)).requeue_dead()
    except OutboxBusy as exc:
        raise click.ClickException(f"{exc}; try again when that run has finished") from None
    click.echo(f"moved {moved} record(s) back to pending")


@outbox.command(name="import")
@click.argument("source", type=click.File("r", encoding="utf-8", errors="replace"),
                default="-")
@_state_dir_option
def import_command(source: Any, state_dir: Path | None) -> None:
    """Put records the outbox could not take back into pending, from log lines.

    When the outbox could not be written and the ingest API did not answer either,
    the record in hand was logged whole, as one 'bench-runner-record' line. Feed the
    log to this command (a file, or - for standard input), e.g.
    `journalctl -u bench-runner | bench-runner outbox import`; other lines are skipped,
    and a record already in pending is not added twice.
    """
    from .outbox import OutboxFull

    box = _outbox(cfg.load(state_dir=state_dir))
    try:
        imported, present, broken = box.import_lines(source)
    except (OutboxFull, OSError) as exc:
        raise click.ClickException(f"cannot write the outbox: {exc}") from None
    click.echo(f"imported {imported} record(s) into pending ({present} already there); "
               f"deliver them with `bench-runner outbox flush`")
    if broken:
        raise click.ClickException(f"{broken} line(s) could not be imported (see the log "
                                   "lines above); the others were")


# What `simulate --provider` serves: each wire protocol's simulator, and what it speaks.
SIMULATORS = {
    "bedrock": "the Bedrock Runtime API (point boto3 at it with AWS_ENDPOINT_URL_*)",
    "openai-compatible": "chat completions over SSE (point the runner at it with "
                         f"{cfg.ENV_OPENAI_BASE_URL})",
    "anthropic": "Anthropic's Messages API over SSE (point the runner at it with "
                 f"{cfg.ENV_ANTHROPIC_BASE_URL} and its key in {cfg.ENV_ANTHROPIC_API_KEY})",
}


def _announce(provider: str, url: str) -> str:
    if provider == "openai-compatible":
        return (f"export {cfg.ENV_OPENAI_BASE_URL}={url}/v1  # with --provider openai (or any "
                f"preset) and its key variable set to any value")
    if provider == "anthropic":
        from .anthropic_simulator import DEFAULT_KEY

        return (f"export {cfg.ENV_ANTHROPIC_BASE_URL}={url} {cfg.ENV_ANTHROPIC_API_KEY}="
                f"{DEFAULT_KEY}  # with --provider anthropic (the key of the default config)")
    return f"export AWS_ENDPOINT_URL_BEDROCK_RUNTIME={url} AWS_ENDPOINT_URL_BEDROCK={url}"


@main.command()
@click.option("--provider", type=click.Choice(tuple(SIMULATORS)), default="bedrock",
              help="Wire protocol to serve: " + "; ".join(
                  f"{name}: {text}" for name, text in SIMULATORS.items()) + ".")
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8599,
              help="Port to listen on (0: any free port).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              default=None, show_default="the embedded demo models",
              help="JSON file of per-model behaviour.")
def simulate(provider: str, host: str, port: int, config_path: Path | None) -> None:
    """Serve a model host's API locally, with simulated models, for tests and demos."""
    _configure_logging("info")
    if provider == "openai-compatible":
        from .openai_simulator import OpenAISimulatorConfig as Config
        from .openai_simulator import run
    elif provider == "anthropic":
        from .anthropic_simulator import AnthropicSimulatorConfig as Config  # type: ignore
        from .anthropic_simulator import run  # type: ignore[assignment]
    else:
        from .simulator import SimulatorConfig as Config  # type: ignore[assignment]
        from .simulator import run  # type: ignore[assignment]

    if config_path is not None:
        try:
            Config.from_file(config_path)
        except (OSError, ValueError, TypeError) as exc:
            raise click.ClickException(
                f"cannot use the simulator config {config_path}: {exc}") from None

    try:
        run(host, port, config_path,
            on_listening=lambda url: click.echo(_announce(provider, url), err=True))
    except OSError as exc:  # the bind: the address is taken or not ours
        raise click.ClickException(f"cannot listen on {host}:{port}: "
                                   f"{exc.strerror or exc}; pick another --port") from None

"""The admin commands that curate `models`: flask --app ingest_app models list|add|enable|...

A thin layer over catalog (what the list means) and health (what the dashboard
reads): every change goes through these, so an operator never edits MongoDB by
hand, and each change brings the model's bench_model_health document in line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Any, TypeVar

import click
import pymongo
from flask import Flask
from flask.cli import AppGroup
from marshmallow import ValidationError
from pymongo.errors import PyMongoError

import bench_contract as contract

from . import discovery, health, settings, store, worklist
from .catalog import DEPRECATED, DISABLED, models, standing
from .schemas import Misc

_MODEL_ID = re.compile(r"^\S{1,256}$")
_REGION = re.compile(r"^[a-z]{2,}(-[a-z]+)+-[0-9]{1,2}$")
F = TypeVar("F", bound=Callable[..., Any])

cli = AppGroup("models", help="""Curate the model list the dashboard and the gate read.

The `models` collection says which models are published: the dashboard's status
page counts a model with no document as disabled, and with INGEST_MODEL_GATE=true
the app stores results of a model that is not listed, disabled or deprecated in
the probe collection instead of the public one. Change it with these commands,
never by hand.

\b
  flask --app ingest_app models list
  flask --app ingest_app models add amazon.nova-micro-v1:0 --display-name "Nova Micro"
  flask --app ingest_app models disable amazon.nova-micro-v1:0 --reason "quota spent"
  flask --app ingest_app models enable amazon.nova-micro-v1:0
  flask --app ingest_app models refresh     (from a timer: freshness ages)
  flask --app ingest_app models deprecate amazon.titan-text-lite-v1 \\
      --successor amazon.nova-micro-v1:0
  flask --app ingest_app models configure us.anthropic.claude-opus-4-7 \\
      --omit-temperature --region us-west-2 --runners runner-us
  flask --app ingest_app models catalogue   (what the runners found, not listed yet)

MODEL_ID is the model_name the runner stores (a model or inference-profile id).
Every runner fetches its worklist (GET /runner-config) at the start of each
cycle: an enabled model is measured there, with its request settings, from the
next cycle on.
""")

_provider = click.option("--provider", default="bedrock", show_default=True,
                         help="Provider the model belongs to, as stored in `provider`.")


def _model_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not _MODEL_ID.match(value):
        raise click.BadParameter("a model id is 1 to 256 characters without spaces")
    return value


_model = click.argument("model_id", callback=_model_id)


class _BadArgument(click.ClickException):
    """A bad argument, said in one line (exit 2, as click's own usage errors)."""

    exit_code = 2


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise _BadArgument("give comma-separated names, e.g. a,b")
    return names


def _request_fields(_ctx: click.Context, _param: click.Parameter, value: str | None
                    ) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        fields = json.loads(value)
    except ValueError as exc:
        raise _BadArgument(f"--request-field is not JSON ({exc}); give an object, e.g. "
                           f"'{{\"thinking\": {{\"type\": \"enabled\", "
                           f"\"budget_tokens\": 1024}}}}'") from None
    if not isinstance(fields, dict):
        raise _BadArgument("--request-field must be a JSON object, e.g. "
                           "'{\"thinking\": {\"type\": \"adaptive\"}}'")
    try:
        return Misc().deserialize(fields)
    except ValidationError as exc:
        raise _BadArgument(f"--request-field: {' '.join(map(str, exc.messages))}") from None


def _profiles(_ctx: click.Context, _param: click.Parameter, value: str | None
              ) -> list[str] | None:
    if value is None:
        return None
    names = _names(value)
    unknown = [n for n in names if n not in contract.PROFILES]
    if unknown:
        raise _BadArgument(f"--profiles: unknown profile {', '.join(unknown)}; the profiles "
                           f"are {', '.join(contract.PROFILES)}")
    return names


def _runners(_ctx: click.Context, _param: click.Parameter, value: str | None
             ) -> list[str] | None:
    if value is None:
        return None
    return _names(value)


def _region(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _REGION.match(value):
        raise _BadArgument(f"--region: {value!r} is not a region name like us-west-2")
    return value


def _request_options(command: F) -> F:
    """The options that say how a model is asked and which runners measure it."""
    for option in reversed((
        click.option("--omit-temperature/--send-temperature", "omit_temperature",
                     default=None, help="Send no temperature (models that refuse one), or "
                                        "send the profile's again."),
        click.option("--request-field", "request_fields", callback=_request_fields,
                     metavar="JSON", help="A JSON object sent as "
                     "additionalModelRequestFields, e.g. a thinking block."),
        click.option("--clear-request-fields", is_flag=True,
                     help="Send no additionalModelRequestFields."),
        click.option("--region", callback=_region,
                     help="Call the model in this region, not the runner's own."),
        click.option("--no-region", is_flag=True, help="Call it in the runner's own region."),
        click.option("--profiles", callback=_profiles, metavar="A,B",
                     help=f"Measure it with these profiles only ({', '.join(contract.PROFILES)})."),
        click.option("--all-profiles", is_flag=True,
                     help="Measure it with every profile of the run."),
        click.option("--runners", callback=_runners, metavar="A,B",
                     help="Only these runners (key names of INGEST_API_KEYS) measure it."),
        click.option("--all-runners", is_flag=True, help="Every runner measures it."),
    )):
        command = option(command)
    return command


def _settings_asked(options: dict[str, Any]) -> tuple[dict[str, Any], list[str] | bool | None]:
    """The request settings the options change, and the runners (a list, True: every
    runner, None: unchanged); a pair of options that contradict is a bad argument."""
    for given, cleared in (("request_fields", "clear_request_fields"), ("region", "no_region"),
                           ("profiles", "all_profiles"), ("runners", "all_runners")):
        if options[given] is not None and options[cleared]:
            raise _BadArgument(f"give --{given.replace('_fields', '-field').replace('_', '-')}"
                               f" or --{cleared.replace('_', '-')}, not both")
    changes: dict[str, Any] = {}
    if options["omit_temperature"] is not None:
        changes["omit_temperature"] = options["omit_temperature"]
    for key, given, cleared in (
            ("additional_model_request_fields", "request_fields", "clear_request_fields"),
            ("region", "region", "no_region"), ("profiles", "profiles", "all_profiles")):
        if options[given] is not None:
            changes[key] = options[given]
        elif options[cleared]:
            changes[key] = None
    runners: list[str] | bool | None = True if options["all_runners"] else options["runners"]
    if isinstance(runners, list):
        # Judged here, in the app's context: the runners are the key names it is configured with.
        known = [name for name, _ in settings.current().api_keys]
        unknown = [n for n in runners if n not in known]
        if unknown:
            raise _BadArgument(f"--runners: {', '.join(unknown)} is not a key name of "
                               f"INGEST_API_KEYS (the runners are {', '.join(known)})")
    return changes, runners


def describe(entry: dict[str, Any]) -> str:
    """The model's request settings and runners in words; empty when none is set."""
    meta = worklist.metadata(entry)
    parts = []
    if meta["omit_temperature"]:
        parts.append("no temperature")
    if meta["additional_model_request_fields"] is not None:
        parts.append("request fields " + json.dumps(meta["additional_model_request_fields"],
                                                    separators=(",", ":"), sort_keys=True))
    if meta["region"]:
        parts.append(f"region {meta['region']}")
    if meta["profiles"] is not None:
        parts.append(f"profiles {','.join(meta['profiles']) or '(none)'}")
    others = sorted(k for k in meta if k not in worklist.KNOWN_SETTINGS)
    if others:
        parts.append(f"other settings {','.join(others)}")
    runners = entry.get("runners")
    if runners is not None:
        parts.append("runners " + (",".join(map(str, runners)) or "(none)")
                     if isinstance(runners, list) else "runners (unreadable: no runner)")
    return "; ".join(parts)


def _database_error(exc: PyMongoError) -> click.ClickException:
    cfg = settings.current()
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return click.ClickException(
        f"the database did not answer ({type(exc).__name__}: {first}); check MONGODB_URI "
        f"and that {cfg.mongodb_db} is reachable, then run the command again")


def _change(provider: str, model_id: str, fields: dict[str, Any], unset: Iterable[str] = ()
            ) -> None:
    update: dict[str, Any] = {"$set": fields}
    if unset:
        update["$unset"] = dict.fromkeys(unset, "")
    try:
        changed = models().update_one({"provider": provider, "model_id": model_id}, update)
        if changed.matched_count:
            health.refresh(provider, model_id)
    except PyMongoError as exc:
        raise _database_error(exc) from exc
    if not changed.matched_count:
        raise click.ClickException(
            f"{provider}/{model_id} is not listed; add it first with "
            f"`flask --app ingest_app models add {model_id} --display-name NAME`")


@cli.command("list")
@click.option("--provider", default=None, help="Only this provider's models (default: all).")
def list_command(provider: str | None) -> None:
    """Show every listed model: its state, display name and freshness."""
    query = {} if provider is None else {"provider": provider}
    try:
        entries = list(models().find(query, {"_id": False}).sort(
            [("provider", pymongo.ASCENDING), ("model_id", pymongo.ASCENDING)]))
        states = {(d.get("provider"), d.get("model_id")): d for d in health.health().find(
            query, {"_id": False, "provider": True, "model_id": True, "freshness_status": True,
                    "last_success_at": True})}
    except PyMongoError as exc:
        raise _database_error(exc) from exc
    if not entries:
        click.echo("no models listed; add one with "
                   "`flask --app ingest_app models add MODEL_ID --display-name NAME`")
        return
    rows = [("PROVIDER", "MODEL_ID", "STATE", "FRESHNESS", "LAST SUCCESS", "DISPLAY NAME")]
    for entry in entries:
        state = standing(entry)
        known = states.get((entry.get("provider"), entry.get("model_id")), {})
        last = known.get("last_success_at")
        rows.append((
            str(entry.get("provider")), str(entry.get("model_id")),
            {None: "enabled", DISABLED: "disabled", DEPRECATED: "deprecated"}[state],
            str(known.get("freshness_status") or "-"),
            last.strftime("%Y-%m-%dT%H:%M:%SZ") if last else "-",
            str(entry.get("display_name") or ""),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    notes = [""] + [describe(entry) for entry in entries]
    for row, note in zip(rows, notes, strict=True):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                   + "  " + row[-1])
        if note:
            click.echo(f"    {note}")


@cli.command("add")
@_model
@click.option("--display-name", required=True,
              help="The name the dashboard shows (models.display_name).")
@_provider
@click.option("--disabled", is_flag=True, help="Add it disabled (listed, not yet published).")
@_request_options
def add_command(model_id: str, display_name: str, provider: str, disabled: bool,
                **options: Any) -> None:
    """List a model, enabled unless --disabled, with its request settings if given."""
    if not display_name.strip():
        raise click.BadParameter("must not be empty", param_hint="--display-name")
    changes, runners = _settings_asked(options)
    document: dict[str, Any] = {
        "provider": provider, "model_id": model_id, "display_name": display_name.strip(),
        "enabled": not disabled, "deprecated": False, "created_at": store.now(),
        "imported_from": "bench-ingest",
    }
    if changes:
        document["request"] = {**worklist.KNOWN_SETTINGS, **changes}
    if isinstance(runners, list):
        document["runners"] = runners
    try:
        added = models().update_one({"provider": provider, "model_id": model_id},
                                    {"$setOnInsert": document}, upsert=True)
        if added.upserted_id is not None:
            health.refresh(provider, model_id)
    except PyMongoError as exc:
        raise _database_error(exc) from exc
    if added.upserted_id is None:
        raise click.ClickException(
            f"{provider}/{model_id} is already listed; change it with "
            f"`models enable`, `models disable` or `models deprecate`")
    settings_line = describe(document)
    click.echo(f"added {provider}/{model_id} ({document['display_name']}), "
               f"{'disabled' if disabled else 'enabled'}"
               + (f"; {settings_line}" if settings_line else ""))


@cli.command("configure")
@_model
@_provider
@_request_options
def configure_command(model_id: str, provider: str, **options: Any) -> None:
    """Change how a listed model is asked and which runners measure it.

    Stored in the model's `models` document (`request`, `runners`); every runner
    reads it with its worklist at the start of its next cycle. Options not given
    are left as they are.
    """
    changes, runners = _settings_asked(options)
    if not changes and runners is None:
        raise _BadArgument("nothing to change; give at least one option (see --help)")
    key = {"provider": provider, "model_id": model_id}
    try:
        entry = models().find_one(key, {"_id": False})
        if entry is not None:
            stored = entry.get("request")
            request = {**worklist.KNOWN_SETTINGS,
                       **(stored if isinstance(stored, dict) else {}), **changes}
            update: dict[str, Any] = {"$set": {"request": request}}
            if isinstance(runners, list):
                update["$set"]["runners"] = runners
            elif runners is True:
                update["$unset"] = {"runners": ""}
            models().update_one(key, update)
            entry = models().find_one(key, {"_id": False})
    except PyMongoError as exc:
        raise _database_error(exc) from exc
    if entry is None:
        raise click.ClickException(
            f"{provider}/{model_id} is not listed; add it first with "
            f"`flask --app ingest_app models add {model_id} --display-name NAME`")
    click.echo(f"configured {provider}/{model_id}: "
               f"{describe(entry) or 'the profiles as they are, on every runner'}")


@cli.command("enable")
@_model
@_provider
def enable_command(model_id: str, provider: str) -> None:
    """Publish the model's results again (clears a disabled reason)."""
    _change(provider, model_id, {"enabled": True}, unset=("disabled_reason",))
    click.echo(f"enabled {provider}/{model_id}")


@cli.command("disable")
@_model
@_provider
@click.option("--reason", default=None, help="Why (shown on the dashboard's status page).")
def disable_command(model_id: str, provider: str, reason: str | None) -> None:
    """Stop publishing the model's results (with the gate on they go to the probe collection)."""
    fields: dict[str, Any] = {"enabled": False}
    if reason:
        fields["disabled_reason"] = reason
    _change(provider, model_id, fields)
    click.echo(f"disabled {provider}/{model_id}")


def _iso_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter("a date as YYYY-MM-DD, e.g. 2026-01-31") from None


@cli.command("deprecate")
@_model
@_provider
@click.option("--successor", default=None, help="The model id that replaces it.")
@click.option("--date", "when", default=None, callback=_iso_date,
              help="The provider's end-of-life date, YYYY-MM-DD.")
@click.option("--reason", default=None, help="Why it is deprecated.")
def deprecate_command(model_id: str, provider: str, successor: str | None, when: str | None,
                      reason: str | None) -> None:
    """Mark the model deprecated (with the gate on, its results are then withheld)."""
    fields: dict[str, Any] = {"deprecated": True}
    for name, value in (("successor_model", successor), ("deprecation_date", when),
                        ("deprecation_reason", reason)):
        if value:
            fields[name] = value
    _change(provider, model_id, fields)
    click.echo(f"deprecated {provider}/{model_id}")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else "-"


@cli.command("catalogue")
@click.option("--provider", default=None, help="Only this provider's catalogue (default: all).")
def catalogue_command(provider: str | None) -> None:
    """What the runners found in the provider's catalogue that is not listed yet, and the
    spellings of one model the dashboard would show twice.

    The catalogue is what runners post (bench-runner models --post, and the daemon
    on its own schedule). A bare id beside its us., eu., apac., global. (...)
    inference-profile ids, or ids that differ only in case, are one model: list one
    spelling of it.
    """
    query = {} if provider is None else {"provider": provider}
    try:
        found = list(discovery.catalog().find(query, {"_id": False}))
        listed = list(models().find(query, {"_id": False, "provider": True, "model_id": True}))
        runs = list(discovery.discovery_runs().find(
            query, {"provider": True, "region": True, "status": True}).sort(
                "received_at", pymongo.DESCENDING))
    except PyMongoError as exc:
        raise _database_error(exc) from exc
    if not found:
        click.echo("no catalogue posted yet; a runner posts one with "
                   "`bench-runner models --post`")
        return
    listed_ids = {(e.get("provider"), e.get("model_id")) for e in listed}
    unlisted: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in found:
        key = (str(entry.get("provider")), str(entry.get("model_id")))
        if key not in listed_ids:
            unlisted.setdefault(key, []).append(entry)
    groups: list[tuple[str, list[str]]] = []
    for prov in sorted({str(e.get("provider")) for e in found}):
        ids = {str(e.get("model_id")) for e in found if e.get("provider") == prov}
        ids |= {str(m) for p, m in listed_ids if p == prov and isinstance(m, str)}
        groups += [(prov, group) for group in discovery.duplicate_spellings(ids)]
    if unlisted:
        rows = [("PROVIDER", "MODEL_ID", "KIND", "REGIONS", "LIFECYCLE", "LAST SEEN", "NAME")]
        for (prov, model_id), entries in sorted(unlisted.items()):
            newest = max(entries, key=lambda e: _when(e.get("last_seen_at")))
            rows.append((prov, model_id, str(newest.get("kind") or "-"),
                         ",".join(sorted(str(e.get("region") or "-") for e in entries)),
                         str(newest.get("lifecycle_status") or "-"),
                         _when(newest.get("last_seen_at")), str(newest.get("name") or "")))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                       + "  " + row[-1])
        click.echo(f"{len(unlisted)} catalogue entr{'y' if len(unlisted) == 1 else 'ies'} not "
                   f"listed; add one with `flask --app ingest_app models add MODEL_ID "
                   f"--display-name NAME`")
    else:
        click.echo("every catalogue entry is listed")
    gone = sorted(discovery.departed(found, runs),
                  key=lambda e: (str(e.get("provider")), str(e.get("region")),
                                 str(e.get("model_id"))))
    if gone:
        click.echo("")
        click.echo("gone from the provider's catalogue (not in the latest complete listing of "
                   "its region; disable or deprecate a listed one):")
        for entry in gone:
            key = (entry.get("provider"), entry.get("model_id"))
            click.echo(f"  {entry.get('provider')}/{entry.get('region') or '-'}: "
                       f"{entry.get('model_id')} ({'listed' if key in listed_ids else 'catalogue'}"
                       f", last seen {_when(entry.get('last_seen_at'))})")
    if not groups:
        return
    click.echo("")
    click.echo("one model, several spellings (the dashboard shows each listed spelling as a "
               "model of its own; list one):")
    for prov, group in groups:
        marks = [f"{m} ({'listed' if (prov, m) in listed_ids else 'catalogue'})" for m in group]
        twice = sum((prov, m) in listed_ids for m in group)
        click.echo(f"  {prov}: " + ", ".join(marks)
                   + (f"  <- listed {twice} times: shows {twice} times" if twice > 1 else ""))


@cli.command("refresh")
def refresh_command() -> None:
    """Recount bench_model_health for every listed model now.

    Writes keep health current, but freshness_status ages with the clock: run this
    from a timer (every few minutes) so a model whose runner went silent turns
    stale, then critical, on the dashboard.
    """
    try:
        n = health.refresh_all()
    except PyMongoError as exc:
        raise _database_error(exc) from exc
    click.echo(f"recounted the health of {n} model(s)")


def init_app(app: Flask) -> None:
    """Add the `models` command group."""
    app.cli.add_command(cli)

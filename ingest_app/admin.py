"""The admin commands that curate `models`: flask --app ingest_app models list|add|enable|...

A thin layer over catalog (what the list means) and health (what the dashboard
reads): every change goes through these, so an operator never edits MongoDB by
hand, and each change brings the model's bench_model_health document in line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Any

import click
import pymongo
from flask import Flask
from flask.cli import AppGroup
from pymongo.errors import PyMongoError

from . import health, settings, store
from .catalog import DEPRECATED, DISABLED, models, standing

_MODEL_ID = re.compile(r"^\S{1,256}$")

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

MODEL_ID is the model_name the runner stores (a model or inference-profile id).
""")

_provider = click.option("--provider", default="bedrock", show_default=True,
                         help="Provider the model belongs to, as stored in `provider`.")


def _model_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not _MODEL_ID.match(value):
        raise click.BadParameter("a model id is 1 to 256 characters without spaces")
    return value


_model = click.argument("model_id", callback=_model_id)


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
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                   + "  " + row[-1])


@cli.command("add")
@_model
@click.option("--display-name", required=True,
              help="The name the dashboard shows (models.display_name).")
@_provider
@click.option("--disabled", is_flag=True, help="Add it disabled (listed, not yet published).")
def add_command(model_id: str, display_name: str, provider: str, disabled: bool) -> None:
    """List a model, enabled unless --disabled."""
    if not display_name.strip():
        raise click.BadParameter("must not be empty", param_hint="--display-name")
    document = {
        "provider": provider, "model_id": model_id, "display_name": display_name.strip(),
        "enabled": not disabled, "deprecated": False, "created_at": store.now(),
        "imported_from": "bench-ingest",
    }
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
    click.echo(f"added {provider}/{model_id} ({document['display_name']}), "
               f"{'disabled' if disabled else 'enabled'}")


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

"""`sbx usage`: the organisation's usage and charges, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

COLUMNS = ("vcpu_seconds", "gib_seconds", "guardrail_checks", "sandbox_charges",
           "guardrails_charges", "credits_added")


@click.command("usage")
@click.option("--from", "since", default=None, help="First day, YYYY-MM-DD (UTC).")
@click.option("--to", "until", default=None, help="Last day, YYYY-MM-DD (UTC).")
@click.option("--by", type=click.Choice(["day", "sandbox"]), default="day", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.option("--api-url", envvar="SBX_API_URL", default=None, help="Server URL (env SBX_API_URL).")
@click.option("--api-key", envvar="SBX_API_KEY", default=None, help="API key (env SBX_API_KEY).")
def usage(since: str | None, until: str | None, by: str, fmt: str, api_url: str | None,
          api_key: str | None) -> None:
    """Usage and charges of your organisation, by day or by sandbox, with
    totals and wallet balances (default: the last 30 days)."""
    from sbx.sdk import SbxError, get_usage

    try:
        report = get_usage(since, until, api_url=api_url, api_key=api_key)
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
        return
    key = "day" if by == "day" else "sandbox_id"
    rows: list[dict[str, Any]] = report["by_day" if by == "day" else "by_sandbox"]
    total = {key: "total", **report["totals"]}
    if fmt == "csv":
        out = csv.writer(sys.stdout)
        out.writerow((key, *COLUMNS))
        for row in [*rows, total]:
            out.writerow((row[key], *(row[c] for c in COLUMNS)))
        return
    table = Table(title=f"{report['organization']}: {report['from']} to {report['to']}")
    for name in (key, *COLUMNS):
        table.add_column(name, justify="left" if name == key else "right")
    for row in rows:
        table.add_row(str(row[key]), *(str(row[c]) for c in COLUMNS))
    table.add_row(*(str(total[c]) for c in (key, *COLUMNS)), style="bold")
    console = Console()
    console.print(table)
    for w in report["wallets"]:
        state = "enforced" if w["enforced"] else "not enforced"
        console.print(f"{w['wallet']} wallet: {w['balance']} credits ({state})")

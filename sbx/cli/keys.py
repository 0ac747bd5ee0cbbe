"""`sbx admin key ...`: create, list and revoke API keys on the server's
data dir (registered in sbx.cli.server's `admin` group)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from sbx.cli.params import store_options

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m` or `45s` as a timedelta (more than zero)."""
    m = _DURATION.match(text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h or 90m")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _duration(ctx: click.Context, param: click.Parameter, value: str | None
              ) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.group("key")
def key() -> None:
    """API keys: create, list (prefixes only), revoke."""


@key.command("create")
@click.option("--org", "org_name", required=True, help="Organisation name.")
@click.option("--admin", "is_admin", is_flag=True,
              help="Role admin: the admin API too (any organisation).")
@click.option("--expires-in", default=None, callback=_duration, metavar="DURATION",
              help="Expire after this long: 30d, 12h, 90m (default: never).")
@store_options
def key_create(org_name: str, is_admin: bool, expires_in: timedelta | None,
               data_dir: Path | None, database_url: str | None) -> None:
    """Create and print a new API key for an organisation (last line; it is
    shown this once)."""
    from sbx.cli.server import in_db
    from sbx.core import accounts
    from sbx.store import repo

    role = "admin" if is_admin else "member"

    async def go(s: Any) -> dict[str, Any]:
        expires_at = repo.now() + expires_in if expires_in is not None else None
        return await accounts.issue_key(s, org_name, role=role, expires_at=expires_at)

    new = in_db(data_dir, database_url, go)
    expiry = f", expires {new['expires_at']}" if new["expires_at"] else ""
    click.echo(f"New {role} API key {new['id']} for {org_name!r}{expiry}:")
    click.echo(new["key"])


@key.command("list")
@click.option("--org", "org_name", default=None, help="Only this organisation's keys.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
@store_options
def key_list(org_name: str | None, as_json: bool, data_dir: Path | None,
             database_url: str | None) -> None:
    """Show keys by id and prefix (a key itself is never stored), with role
    and state: active, expired or revoked."""
    from sbx.cli.server import in_db
    from sbx.core import accounts

    async def go(s: Any) -> list[dict[str, Any]]:
        return await accounts.list_keys(s, org_name)

    rows = in_db(data_dir, database_url, go)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = ("id", "prefix", "org", "role", "state", "created_at", "expires_at", "revoked_at")
    table = [[c.upper() for c in cols]] + [[str(r[c] or "-") for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@key.command("revoke")
@click.argument("id_or_prefix")
@store_options
def key_revoke(id_or_prefix: str, data_dir: Path | None, database_url: str | None) -> None:
    """Revoke the key ID_OR_PREFIX (its id, as `key list` shows, or its
    prefix): requests with it are refused at once. Revoking a revoked key
    changes nothing."""
    from sbx.cli.server import in_db
    from sbx.core import accounts

    async def go(s: Any) -> dict[str, Any]:
        return await accounts.revoke_key(s, id_or_prefix)

    row = in_db(data_dir, database_url, go)
    click.echo(f"Revoked {row['id']} ({row['prefix']}..., org {row['org']!r}, role "
               f"{row['role']}) at {row['revoked_at']}.")

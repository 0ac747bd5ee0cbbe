"""`sbx server` and `sbx admin`: they run on the server's machine and use
its data dir directly."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sbx import datadir
from sbx.cli.keys import key
from sbx.cli.params import DATABASE_URL_HELP, hold_data_dir, store_options
from sbx.config import Settings

T = TypeVar("T")


def _settings(**kw: Any) -> Settings:
    return Settings(**{k: v for k, v in kw.items() if v is not None})


@click.command("server")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port for the API and gateway (3000).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where sbx keeps its database, templates and sandboxes (/var/lib/sbx).")
@click.option("--database-url", default=None, help=DATABASE_URL_HELP)
@click.option("--log-level", default="info", show_default=True)
def server(host: str | None, port: int | None, data_dir: Path | None, database_url: str | None,
           log_level: str) -> None:
    """Run the whole single-machine platform in the foreground."""
    import uvicorn

    from sbx.api.app import create_app
    from sbx.platform import Platform
    from sbx.store.db import masked

    if os.geteuid() != 0:
        raise click.ClickException("sbx server must run as root (it manages gVisor, netns, nft)")
    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url)
    # Before anything touches the host or the store: a second server on
    # this data dir, or on a taken port, stops here, harmless.
    hold_data_dir(settings.data_dir)
    datadir.secure(settings.data_dir, sqlite=settings.database_url is None)
    sock = _bind(settings.host, settings.port)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    url = settings.public_url or f"http://{settings.host}:{settings.port}"

    def progress(line: str) -> None:
        click.echo(f"[template] {line}", err=True)

    def ready(platform: Platform) -> None:
        key_file = settings.data_dir / "api-key"
        lines = [f"sbx server on {url}  (data dir {settings.data_dir}, database "
                 f"{masked(settings.db_url)})"]
        if platform.bootstrap_key:
            lines.append(f"Created organisation 'default' with API key: {platform.bootstrap_key}")
        lines += [
            f"API key file: {key_file}",
            "Use it:",
            f"  export SBX_API_URL={url} SBX_API_KEY=$(cat {key_file})",
            "  sbx sandbox create --template base --vcpu 1 --memory-mib 512",
            f"  curl -H \"X-API-Key: $SBX_API_KEY\" {url}/v1/sandbox/",
            f"  e2b SDK: export E2B_API_URL={url} E2B_SANDBOX_URL={url} E2B_API_KEY=$SBX_API_KEY",
            "The first start builds the base template (about a minute); /health answers 200 "
            "once sandboxes can be created.",
        ]
        click.echo("\n".join(lines), err=True)
        sys.stderr.flush()

    app = create_app(settings, progress=progress, on_ready=ready)
    config = uvicorn.Config(app, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # A restart must not wait for the last run's connections in TIME_WAIT;
    # a port that another process listens on still refuses the bind.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


@click.group("admin")
def admin() -> None:
    """Organisations, keys, tiers and wallets, in the server's store (its
    data dir's database, or --database-url)."""


def in_db(data_dir: Path | None, database_url: str | None,
          fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run fn(session) in one transaction on the server's database, with
    the schema brought up to date first; domain errors, and a database that
    cannot be reached or refuses the credentials, become one line."""
    from sqlalchemy.exc import DBAPIError

    from sbx.core.errors import SbxError
    from sbx.store.db import Database, masked

    settings = _settings(data_dir=data_dir, database_url=database_url)

    # A data dir that an admin command makes first is private from the start
    # (the trees are the running server's, fixed at its start).
    datadir.secure(settings.data_dir, deep=False, sqlite=settings.database_url is None)

    async def go() -> T:
        db = Database(settings.db_url)
        await db.migrate()
        try:
            async with db.transaction() as s:
                return await fn(s)
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except (SbxError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, DBAPIError) as exc:
        why = exc.orig if isinstance(exc, DBAPIError) else exc
        raise click.ClickException(f"database {masked(settings.db_url)}: {why}") from None


@admin.group("org")
def org() -> None:
    """Organisations."""


@org.command("create")
@click.argument("name")
@click.option("--tier", default="default", show_default=True)
@store_options
def org_create(name: str, tier: str, data_dir: Path | None, database_url: str | None) -> None:
    """Create organisation NAME and print a new API key for it."""
    from sbx.core import accounts

    async def go(s: Any) -> str:
        await accounts.create_org(s, name, tier=tier)
        return await accounts.create_key(s, name)

    key = in_db(data_dir, database_url, go)
    click.echo(f"Created organisation {name!r} (tier {tier!r}). API key:")
    click.echo(key)


@org.command("set")
@click.argument("name")
@click.option("--tier", default=None, help="Move the organisation to this tier.")
@store_options
def org_set(name: str, tier: str | None, data_dir: Path | None, database_url: str | None) -> None:
    """Change an organisation."""
    from sbx.core import accounts

    async def go(s: Any) -> None:
        await accounts.set_org(s, name, tier=tier)

    in_db(data_dir, database_url, go)
    click.echo(f"Updated organisation {name!r}.")


@org.command("usage")
@click.argument("name")
@store_options
def org_usage(name: str, data_dir: Path | None, database_url: str | None) -> None:
    """Guardrail checks of organisation NAME by UTC day, and their total."""
    from sbx.core import accounts

    async def go(s: Any) -> dict[str, int]:
        return await accounts.guardrail_usage(s, name)

    days = in_db(data_dir, database_url, go)
    for day, checks in days.items():
        click.echo(f"{day} guardrail_checks={checks}")
    click.echo(f"total guardrail_checks={sum(days.values())}")


@admin.command("pool")
@store_options
def pool_report(data_dir: Path | None, database_url: str | None) -> None:
    """The warm pool: members per size, the memory they reserve, and what
    they use on the host now (memory and CPU time of their cgroups); and
    the spare runtimes with their host memory."""
    from sbx.core.pool import POOL_ORG, sizes
    from sbx.shared.lifecycle import SandboxState
    from sbx.store import repo

    settings = _settings(data_dir=data_dir, database_url=database_url)

    async def go(s: Any) -> list[tuple[str, int, int]]:
        org = await repo.org_by_name(s, POOL_ORG)
        if org is None:
            return []
        rows = await repo.sandboxes(s, org.id, [SandboxState.POOLED])
        return [(r.id, r.vcpu, r.memory_mib) for r in rows]

    members = in_db(data_dir, database_url, go)
    cg = Path("/sys/fs/cgroup")
    parent = f"sbx-{settings.node_tag}"
    total_mem = 0
    total_cpu = 0.0
    for size in sizes(settings):
        mine = [m for m in members if (m[1], m[2]) == (size.vcpu, size.memory_mib)]
        reserved = len(mine) * (size.memory_mib + settings.memory_headroom_mib)
        click.echo(f"{size.vcpu}x{size.memory_mib}: target={size.count} ready={len(mine)} "
                   f"reserved_mib={reserved}")
        for sandbox_id, _, _ in mine:
            mem = _read_int(cg / "memory" / parent / sandbox_id / "memory.usage_in_bytes")
            cpu = _read_int(cg / "cpuacct" / parent / sandbox_id / "cpuacct.usage") / 1e9
            total_mem += mem
            total_cpu += cpu
            click.echo(f"  {sandbox_id} host_memory_mib={mem / 2**20:.1f} cpu_s={cpu:.2f}")
    click.echo(f"total host_memory_mib={total_mem / 2**20:.1f} cpu_s={total_cpu:.2f} "
               f"bound_mib={settings.warm_pool_max_mib}")
    # Spare runtimes live in the server's memory only; runsc knows them as
    # containers created and not started.
    spares = _created_containers(settings.runsc, settings.run_dir / "runsc")
    click.echo(f"spare runtimes: {len(spares)} (SBX_SPARE_RUNTIMES={settings.spare_runtimes})")
    for sandbox_id in spares:
        mem = _read_int(cg / "memory" / parent / sandbox_id / "memory.usage_in_bytes")
        click.echo(f"  {sandbox_id} host_memory_mib={mem / 2**20:.1f}")


def _created_containers(runsc: str, root: Path) -> list[str]:
    if not root.exists():
        return []
    res = subprocess.run([runsc, "--root", str(root), "list", "--format", "json"],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return []
    found = json.loads(res.stdout or "null") or []
    return sorted(c["id"] for c in found if c.get("status") == "created")


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


# `sbx admin key create|list|revoke` (sbx/cli/keys.py).
admin.add_command(key)


@admin.group("tier")
def tier() -> None:
    """Tiers: the limits organisations live within."""


_TIER_FIELDS = ("max_sandboxes", "max_vcpu", "max_memory_mib", "max_disk_mib",
                "max_session_s", "creates_per_minute")


_PRICE_FIELDS = ("price_vcpu_s", "price_gib_s", "price_check")


def _tier_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for name in reversed(_TIER_FIELDS):
        f = click.option(f"--{name.replace('_', '-')}", name, type=int, default=None)(f)
    for name in reversed(_PRICE_FIELDS):
        f = click.option(f"--{name.replace('_', '-')}", name, default=None,
                         help="credits per unit (a decimal, e.g. 0.000014)")(f)
    return f


@tier.command("set")
@click.argument("name")
@_tier_options
@click.option("--no-session-limit", is_flag=True, help="Remove the session-duration limit.")
@store_options
def tier_set(name: str, no_session_limit: bool, data_dir: Path | None,
             database_url: str | None, **limits: int | str | None) -> None:
    """Create tier NAME or change its limits (unset options keep their value;
    a new tier starts from the default tier's)."""
    from sbx.core import accounts

    async def go(s: Any) -> dict[str, Any]:
        return await accounts.set_tier(s, name, no_session_limit=no_session_limit, **limits)

    row = in_db(data_dir, database_url, go)
    click.echo(" ".join(f"{k}={v}" for k, v in row.items()))


@tier.command("list")
@store_options
def tier_list(data_dir: Path | None, database_url: str | None) -> None:
    """Show every tier."""
    from sbx.core import accounts

    rows = in_db(data_dir, database_url, accounts.list_tiers)
    for row in rows:
        click.echo(" ".join(f"{k}={v}" for k, v in row.items()))


@admin.group("wallet")
def wallet() -> None:
    """Wallets: balances are sums of the ledger; an enforced wallet that is
    empty refuses creates (402) and pauses the organisation's sandboxes."""


@wallet.command("set")
@click.argument("org_name")
@click.option("--wallet", "which", type=click.Choice(["sandbox", "guardrails"]), required=True)
@click.argument("amount")
@store_options
def wallet_set(org_name: str, which: str, amount: str, data_dir: Path | None,
               database_url: str | None) -> None:
    """Bring ORG_NAME's wallet to exactly AMOUNT credits (one adjusting
    ledger entry) and enforce it, or `off`: not enforced (still charged)."""
    from sbx.core import billing, money

    async def go(s: Any) -> int | None:
        return await billing.set_balance(s, org_name, which, None if amount == "off" else amount)

    value = in_db(data_dir, database_url, go)
    shown = "off (not enforced)" if value is None else money.to_credits(value)
    click.echo(f"{org_name}: {which} wallet = {shown}")


@wallet.command("topup")
@click.argument("org_name")
@click.argument("amount")
@click.option("--wallet", "which", type=click.Choice(["sandbox", "guardrails"]),
              default="sandbox", show_default=True)
@store_options
def wallet_topup(org_name: str, amount: str, which: str, data_dir: Path | None,
                 database_url: str | None) -> None:
    """Add AMOUNT credits to ORG_NAME's wallet (and enforce it). Sandboxes
    paused because it was empty resume within a metering interval."""
    from sbx.core import billing, money

    async def go(s: Any) -> int:
        return await billing.topup(s, org_name, which, amount)

    balance = in_db(data_dir, database_url, go)
    click.echo(f"{org_name}: {which} wallet = {money.to_credits(balance)}")


@wallet.command("show")
@click.argument("org_name")
@click.option("--json", "as_json", is_flag=True)
@store_options
def wallet_show(org_name: str, as_json: bool, data_dir: Path | None,
                database_url: str | None) -> None:
    """ORG_NAME's wallets: balance and whether each is enforced."""
    import json

    from sbx.core import accounts, billing

    async def go(s: Any) -> list[dict[str, Any]]:
        org = await accounts.org_named(s, org_name)
        return [w.to_json() for w in await billing.wallets(s, org)]

    rows = in_db(data_dir, database_url, go)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['wallet']}: {r['balance']} ({'enforced' if r['enforced'] else 'off'})")


@admin.command("teardown")
@store_options
def teardown(data_dir: Path | None, database_url: str | None) -> None:
    """Remove every host resource of this data dir's sandboxes (runsc
    containers, netns, veths, disks, cgroups, the nft table) and mark them
    deleted. For uninstalling, and for tests. Stop the server first."""
    from sbx.node.agent import NodeAgent
    from sbx.shared.lifecycle import LIVE
    from sbx.store import repo

    settings = _settings(data_dir=data_dir, database_url=database_url)
    # Teardown under a running server would pull its sandboxes from under it.
    hold_data_dir(settings.data_dir)

    async def go(s: Any) -> int:
        from sbx.templates_build.layers import LayerStore

        await NodeAgent(settings).shutdown_all()
        # Mounts of a build a killed server left behind.
        await LayerStore(settings.data_dir / "layers").recover()
        rows = await repo.sandboxes(s, None, LIVE)
        for row in rows:
            # Every live state may go to deleting, and deleting to deleted.
            if row.state != "deleting":
                await repo.set_state(s, row.id, row.state, "deleting", "teardown")
            await repo.set_state(s, row.id, "deleting", "deleted", "teardown")
        return len(rows)

    n = in_db(data_dir, database_url, go)
    click.echo(f"Removed host resources; {n} sandboxes marked deleted.")

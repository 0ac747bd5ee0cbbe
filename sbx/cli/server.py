"""`sbx server` and `sbx admin`: they run on the server's machine and use
its data dir directly."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click

from sbx.config import Settings


def _settings(**kw: object) -> Settings:
    return Settings(**{k: v for k, v in kw.items() if v is not None})


@click.command("server")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port for the API and gateway (3000).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where sbx keeps its database, templates and sandboxes (/var/lib/sbx).")
@click.option("--log-level", default="info", show_default=True)
def server(host: str | None, port: int | None, data_dir: Path | None, log_level: str) -> None:
    """Run the whole single-machine platform in the foreground."""
    import uvicorn

    from sbx.api.app import create_app
    from sbx.platform import Platform

    if os.geteuid() != 0:
        raise click.ClickException("sbx server must run as root (it manages gVisor, netns, nft)")
    settings = _settings(host=host, port=port, data_dir=data_dir)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = settings.public_url or f"http://{settings.host}:{settings.port}"

    def progress(line: str) -> None:
        click.echo(f"[template] {line}", err=True)

    def ready(platform: Platform) -> None:
        key_file = settings.data_dir / "api-key"
        lines = [f"sbx server on {url}  (data dir {settings.data_dir})"]
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
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=5)


@click.group("admin")
def admin() -> None:
    """Organisations and API keys (on this machine's data dir)."""


def _data_dir_option(f: object) -> object:
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="The server's data dir (/var/lib/sbx).")(f)  # type: ignore[arg-type]


async def _with_db(settings: Settings, fn: object) -> object:
    from sbx.store.db import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    await db.migrate()
    try:
        async with db.transaction() as s:
            return await fn(s)  # type: ignore[operator]
    finally:
        await db.close()


@admin.group("org")
def org() -> None:
    """Organisations."""


@org.command("create")
@click.argument("name")
@click.option("--max-sandboxes", type=int, default=None)
@_data_dir_option  # type: ignore[arg-type]
def org_create(name: str, max_sandboxes: int | None, data_dir: Path | None) -> None:
    """Create organisation NAME and print a new API key for it."""
    from sbx.core import accounts
    from sbx.core.errors import SbxError

    settings = _settings(data_dir=data_dir)
    limit = max_sandboxes if max_sandboxes is not None else settings.max_sandboxes_default

    async def go(s: object) -> str:
        await accounts.create_org(s, name, limit)  # type: ignore[arg-type]
        return await accounts.create_key(s, name)  # type: ignore[arg-type]

    try:
        key = asyncio.run(_with_db(settings, go))
    except (SbxError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created organisation {name!r}. API key:")
    click.echo(str(key))


@admin.group("key")
def key() -> None:
    """API keys."""


@key.command("create")
@click.option("--org", "org_name", required=True, help="Organisation name.")
@_data_dir_option  # type: ignore[arg-type]
def key_create(org_name: str, data_dir: Path | None) -> None:
    """Create and print a new API key for an organisation."""
    from sbx.core import accounts
    from sbx.core.errors import SbxError

    settings = _settings(data_dir=data_dir)

    async def go(s: object) -> str:
        return await accounts.create_key(s, org_name)  # type: ignore[arg-type]

    try:
        new = asyncio.run(_with_db(settings, go))
    except SbxError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"New API key for {org_name!r}:")
    click.echo(str(new))


@admin.command("teardown")
@_data_dir_option  # type: ignore[arg-type]
def teardown(data_dir: Path | None) -> None:
    """Remove every host resource of this data dir's sandboxes (runsc
    containers, netns, veths, disks, cgroups, the nft table) and mark them
    deleted. For uninstalling, and for tests. Stop the server first."""
    from sbx.core.lifecycle import LIVE
    from sbx.node.agent import NodeAgent
    from sbx.store import repo

    settings = _settings(data_dir=data_dir)

    async def go(s: object) -> int:
        agent = NodeAgent(settings)
        await agent.shutdown_all()
        rows = await repo.sandboxes(s, None, LIVE)  # type: ignore[arg-type]
        for row in rows:
            await repo.set_state(s, row.id, row.state, "deleted", "teardown")  # type: ignore[arg-type]
        return len(rows)

    n = asyncio.run(_with_db(settings, go))
    click.echo(f"Removed host resources; {n} sandboxes marked deleted.")

"""A cluster's processes: `sbx api` (control plane and gateway, no root),
`sbx node` (the privileged agent of one host), and `sbx admin node …`
(join tokens). See docs/operations.md ("A cluster")."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import click

from sbx import datadir
from sbx.cli.params import hold_data_dir, store_options
from sbx.cli.server import in_db
from sbx.config import Settings


def _settings(**kw: Any) -> Settings:
    return Settings(**{k: v for k, v in kw.items() if v is not None})


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per node call at info would drown everything else.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.command("api")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port for the API and gateway (3000).")
@click.option("--database-url", default=None, envvar="SBX_DATABASE_URL",
              help="The cluster's database (postgresql+asyncpg://…); every replica uses it.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="This replica's own files: the first start writes DATA/api-key.")
@click.option("--log-level", default="info", show_default=True)
def api(host: str | None, port: int | None, database_url: str | None, data_dir: Path | None,
        log_level: str) -> None:
    """Run a cluster's control plane (API and gateway) in the foreground."""
    import uvicorn

    from sbx.api.app import create_app
    from sbx.platform import Platform

    settings = _settings(host=host, port=port, database_url=database_url, data_dir=data_dir)
    _logging(log_level)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"

    def ready(platform: Platform) -> None:
        lines = [f"sbx api on {url}  (data dir {settings.data_dir})"]
        if platform.bootstrap_key:
            lines.append(f"Created organisation 'default' with API key: {platform.bootstrap_key}")
        lines.append("Nodes join with: sbx node --control-plane URL --join-token "
                     "$(sbx admin node token --database-url …)")
        click.echo("\n".join(lines), err=True)
        sys.stderr.flush()

    app = create_app(settings, on_ready=ready, cluster=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=5)


def _default_node_id() -> str:
    return re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower())[:40].strip("-") or "node"


@click.command("node")
@click.option("--control-plane", required=True, help="URL of the control plane (sbx api).")
@click.option("--join-token", required=True, envvar="SBX_JOIN_TOKEN",
              help="From `sbx admin node token` (or SBX_JOIN_TOKEN).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="This node's sandboxes, snapshots and disks (/var/lib/sbx).")
@click.option("--subnet", default=None, help="The node's sandbox addresses (a CIDR of its own).")
@click.option("--listen", default="127.0.0.1:3100", show_default=True,
              help="HOST:PORT the node serves the control plane on.")
@click.option("--advertise", default=None,
              help="URL the control plane reaches this node at (default http://LISTEN).")
@click.option("--node-id", default=None, help="The node's name (default: the host name).")
@click.option("--snapshot-dir", type=click.Path(path_type=Path), default=None,
              help="Where pause snapshots go: storage every node reads (NFS, CephFS, EFS).")
@click.option("--vcpu", type=int, default=None, help="vCPUs offered (default: the host's).")
@click.option("--memory-mib", type=int, default=None, help="Memory offered (the host's).")
@click.option("--disk-mib", type=int, default=None, help="Disk offered (the data dir's).")
@click.option("--log-level", default="info", show_default=True)
def node(control_plane: str, join_token: str, data_dir: Path | None, subnet: str | None,
         listen: str, advertise: str | None, node_id: str | None, snapshot_dir: Path | None,
         vcpu: int | None, memory_mib: int | None, disk_mib: int | None,
         log_level: str) -> None:
    """Run the node agent of this host for a cluster, in the foreground."""
    from sbx.node.daemon import NodeDaemon, NodeOptions, Refused

    if os.geteuid() != 0:
        raise click.ClickException("sbx node must run as root (it manages gVisor, netns, nft)")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.ClickException("--listen is HOST:PORT")
    settings = _settings(data_dir=data_dir, subnet=subnet, snapshot_dir=snapshot_dir)
    # As for sbx server: a second agent on this data dir would rebuild the
    # node's nft table and remove the live one's spares; it stops here.
    hold_data_dir(settings.data_dir)
    # (A node keeps no store of its own.)
    datadir.secure(settings.data_dir, sqlite=False)
    _logging(log_level)
    opts = NodeOptions(node_id=node_id or _default_node_id(), control_plane=control_plane,
                       join_token=join_token, listen_host=host, listen_port=int(port),
                       advertise_url=advertise or f"http://{listen}", vcpu=vcpu,
                       memory_mib=memory_mib, disk_mib=disk_mib)
    try:
        asyncio.run(NodeDaemon(settings, opts).run())
    except Refused as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


@click.group("node")
def node_admin() -> None:
    """A cluster's nodes: join tokens."""


@node_admin.command("token")
@store_options
def node_token(data_dir: Path | None, database_url: str | None) -> None:
    """Print a new join token (nodes present it to join)."""
    from sbx.core.cluster import issue_join_token
    from sbx.store import nodes as node_repo
    from sbx.store import repo

    token_id, secret_hash, token = issue_join_token()

    async def add(s: Any) -> None:
        await node_repo.add_join_token(s, token_id, secret_hash, repo.now())

    in_db(data_dir, database_url, add)
    click.echo(token)


@node_admin.command("revoke")
@click.argument("token_id")
@store_options
def node_revoke(token_id: str, data_dir: Path | None, database_url: str | None) -> None:
    """Revoke join token TOKEN_ID (the part after sbxjoin_, before the dot):
    the nodes it admitted are refused from their next call."""
    from sbx.store import nodes as node_repo
    from sbx.store import repo

    async def revoke(s: Any) -> bool:
        return await node_repo.revoke_join_token(s, token_id, repo.now())

    if not in_db(data_dir, database_url, revoke):
        raise click.ClickException(f"no live join token {token_id}")
    click.echo(f"revoked {token_id}")

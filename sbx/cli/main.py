"""Entry point of the `sbx` command."""

from __future__ import annotations

import click

from sbx import __version__
from sbx.cli.cluster import api, node, node_admin
from sbx.cli.sandbox import sandbox
from sbx.cli.server import admin, server
from sbx.cli.template import template
from sbx.cli.usage import usage


@click.group()
@click.version_option(__version__, prog_name="sbx")
def cli() -> None:
    """sbx: self-hosted sandboxes for untrusted code."""


cli.add_command(server)
cli.add_command(admin)
cli.add_command(sandbox)
cli.add_command(usage)
cli.add_command(template)
cli.add_command(api)
cli.add_command(node)
admin.add_command(node_admin)


def main() -> None:
    cli()

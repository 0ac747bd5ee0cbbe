"""Option values shared by the `sbx` commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sbx import datadir

F = TypeVar("F", bound=Callable[..., Any])

DATABASE_URL_HELP = ("The database: sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:"
                     "PASSWORD@HOST/DB (default DATA_DIR/sbx.db; also SBX_DATABASE_URL).")


def store_options(f: F) -> F:
    """--data-dir and --database-url: the server's store, for the commands
    that run on its machine (parameters data_dir and database_url)."""
    f = click.option("--database-url", default=None, help=DATABASE_URL_HELP)(f)
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="The server's data dir (/var/lib/sbx).")(f)


def hold_data_dir(data_dir: Path) -> None:
    """Take the data dir's lock for this process's life (one server or node
    per data dir), or stop here, naming its holder."""
    try:
        datadir.lock(data_dir)
    except datadir.DataDirBusy as exc:
        raise click.ClickException(str(exc)) from None


def pairs(values: tuple[str, ...], option: str, what: str = "NAME") -> dict[str, str]:
    """Repeated `NAME=VALUE` options as a dict (a later one wins)."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not {what}=VALUE", param_hint=option)
        out[name] = value
    return out

"""Option values shared by the `sbx` commands."""

from __future__ import annotations

import click


def pairs(values: tuple[str, ...], option: str, what: str = "NAME") -> dict[str, str]:
    """Repeated `NAME=VALUE` options as a dict (a later one wins)."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not {what}=VALUE", param_hint=option)
        out[name] = value
    return out

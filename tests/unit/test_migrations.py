"""The migrations build exactly the schema the models describe, on SQLite
and on PostgreSQL (a model change without its migration fails here), and
running them again, or from several processes at once, changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

import sbx.store
from sbx.store.db import migrate
from sbx.store.models import Base


def _compare(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": False})
    return list(compare_metadata(ctx, Base.metadata))


async def _diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_compare)
    finally:
        await engine.dispose()


def _newest() -> str:
    """The newest revision the migration scripts define (one head)."""
    scripts = ScriptDirectory(str(Path(sbx.store.__file__).parent / "migrations"))
    (head,) = scripts.get_heads()
    return str(head)


async def _head(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text("SELECT version_num FROM alembic_version")))
                        .scalars())
    finally:
        await engine.dispose()


async def test_migrations_match_the_models(db_url: str) -> None:
    await asyncio.to_thread(migrate, db_url)
    assert await _diff(db_url) == []


async def test_migrating_at_once_and_again_is_harmless(db_url: str) -> None:
    """Replicas starting together each migrate the same database."""
    await asyncio.gather(*(asyncio.to_thread(migrate, db_url) for _ in range(3)))
    await asyncio.to_thread(migrate, db_url)
    assert await _head(db_url) == [_newest()]
    assert await _diff(db_url) == []

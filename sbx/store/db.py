"""The database handle: async engine, sessions, and migrations at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_MIGRATIONS = Path(__file__).parent / "migrations"


def _sync_url(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; a crash loses no committed write.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _migration_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA foreign_keys=OFF")


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (blocking; run in a thread)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    engine = create_engine(_sync_url(url))
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        # SQLite alters a table by copying it: foreign keys must be off
        # meanwhile (outside the transaction), and are checked afterwards.
        event.listen(engine, "connect", _migration_connect)
        # pysqlite would run DDL outside any transaction; with our own BEGIN
        # a migration that fails half-way leaves nothing half-done.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        if sqlite:
            bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if bad:
                raise RuntimeError(f"migration broke foreign keys: {bad[:5]}")
    engine.dispose()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate, self.url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as s:
            yield s

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as s, s.begin():
            yield s

    async def close(self) -> None:
        await self.engine.dispose()

"""The database handle: async engine, sessions, and migrations at start.

Two backends: SQLite (embedded, the default; one writer at a time) and
PostgreSQL (`postgresql+asyncpg://`; concurrent writers, so code that reads
then writes takes a lock: see repo.write_lock and repo.lock_org)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_MIGRATIONS = Path(__file__).parent / "migrations"


def masked(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit key) of a lock's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    # WAL: readers never block the writer; a crash loses no committed write.
    # Switching a new database to WAL needs it unlocked, and SQLite does not
    # wait on its busy timeout for that: another process (a second server
    # start, an admin command) migrating it meanwhile is waited for here.
    for attempt in range(200):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _migration_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA foreign_keys=OFF")


def _upgrade(conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (blocking; run in a thread)."""
    if not is_sqlite(url):
        asyncio.run(_migrate_postgres(url))
        return
    engine = create_engine(url.replace("+aiosqlite", ""))
    event.listen(engine, "connect", _sqlite_pragmas)
    # SQLite alters a table by copying it: foreign keys must be off
    # meanwhile (outside the transaction), and are checked afterwards.
    event.listen(engine, "connect", _migration_connect)
    # pysqlite would run DDL outside any transaction; with our own BEGIN
    # a migration that fails half-way leaves nothing half-done. IMMEDIATE:
    # processes migrating at once wait for each other (busy_timeout)
    # instead of failing when the one that read first tries to write.
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    with engine.begin() as conn:
        _upgrade(conn)
        bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise RuntimeError(f"migration broke foreign keys: {bad[:5]}")
    engine.dispose()


async def _migrate_postgres(url: str) -> None:
    # PostgreSQL's DDL is transactional: a failed migration leaves nothing.
    # Servers starting together migrate one after the other (the later ones
    # find nothing to do).
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                               {"k": lock_key("migrations")})
            await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        # pool_pre_ping: a PostgreSQL restart leaves dead pooled connections.
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not is_sqlite(url))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({masked(self.url)})"

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

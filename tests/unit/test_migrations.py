"""The migrations build exactly the schema the models describe (a model
change without its migration fails here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from sbx.store.db import migrate
from sbx.store.models import Base


def _diff(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_migrations_match_the_models(tmp_path: Path) -> None:
    path = tmp_path / "sbx.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    assert _diff(f"sqlite:///{path}") == []

"""Persistence: SQLAlchemy tables, the database handle and migrations.
SQLite (WAL) is the embedded default; PostgreSQL is selected by URL."""

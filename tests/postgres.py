"""A real PostgreSQL for the tests, from Debian's packages: initdb and pg_ctl
in a temporary directory (as the `postgres` user when the tests run as
root: PostgreSQL refuses to run as root), listening on a free port of
127.0.0.1 with password authentication, so that its URLs carry a password
as production ones do. One server per test session; a database per test."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server import free_port

USER = "sbx"


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install.sh")
    return found[-1].parent


class Postgres:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.bin = _bin_dir()

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "-E", "UTF8",
                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync")
        pwfile.unlink()
        # Durability is of no use to a test database; speed is.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=300")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                  "-w", "-t", "60", "start")

    def _run(self, tool: str, *args: str) -> None:
        res = subprocess.run(self._as_owner(str(self.bin / tool), *args), capture_output=True,
                             text=True, timeout=120)
        if res.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(f"{tool} failed: {res.stdout}{res.stderr}"
                               + (log.read_text()[-2000:] if log.exists() else ""))

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}"
                f"/{database}")

    def sql(self, statement: str, database: str = "postgres") -> str:
        res = subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", statement],
            env={**os.environ, "PGPASSWORD": self.password}, capture_output=True, text=True,
            timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"psql {statement!r}: {res.stderr}")
        return res.stdout

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new, empty database, dropped afterwards (its connections too)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            self.sql(f"DROP DATABASE {name} WITH (FORCE)")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        """Stop the server (killing it when a fast stop fails) and remove
        its directory."""
        try:
            if self.data.exists():
                res = subprocess.run(self._as_owner(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                    "-t", "30", "stop"), capture_output=True, timeout=60)
                pid = self._postmaster_pid()
                if res.returncode != 0 and pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    pg = Postgres(Path(tempfile.mkdtemp(prefix="sbx-pg-")))
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store's URL on each backend: a new SQLite file, or a new database
    on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'sbx.db'}"
        return
    pg: Postgres = request.getfixturevalue("postgres")
    with pg.database() as url:
        yield url

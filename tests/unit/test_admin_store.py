"""`sbx admin` on either store: --database-url (or SBX_DATABASE_URL) picks
it over the data dir's SQLite file; a PostgreSQL URL's password appears in
no message, also when the database refuses it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from sbx.cli.main import cli
from sbx.config import Settings
from sbx.store.db import Database, masked
from tests.postgres import Postgres


def _admin(data_dir: Path, *args: str, url: str | None = None,
           env: dict[str, str] | None = None) -> Result:
    opts = ["--data-dir", str(data_dir)] + (["--database-url", url] if url else [])
    return CliRunner().invoke(cli, ["admin", *args, *opts], env=env, catch_exceptions=False)


def test_admin_commands_take_the_database_url(db_url: str, tmp_path: Path) -> None:
    ok = _admin(tmp_path, "org", "create", "acme", url=db_url)
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip().splitlines()[-1].startswith("sbx_")
    assert _admin(tmp_path, "tier", "set", "big", "--max-sandboxes", "7", url=db_url
                  ).exit_code == 0
    assert _admin(tmp_path, "org", "set", "acme", "--tier", "big", url=db_url).exit_code == 0
    assert _admin(tmp_path, "wallet", "set", "acme", "--wallet", "sandbox", "2.5",
                  url=db_url).exit_code == 0
    assert _admin(tmp_path, "wallet", "topup", "acme", "0.5", url=db_url).exit_code == 0
    shown = _admin(tmp_path, "wallet", "show", "acme", url=db_url)
    assert "sandbox: 3" in shown.output and "(enforced)" in shown.output, shown.output
    assert _admin(tmp_path, "key", "create", "--org", "acme", "--admin", url=db_url
                  ).exit_code == 0
    keys = _admin(tmp_path, "key", "list", "--org", "acme", url=db_url).output
    assert keys.count("acme") == 2, keys
    # SBX_DATABASE_URL names the same store; the option wins over it.
    via_env = _admin(tmp_path, "tier", "list", env={"SBX_DATABASE_URL": db_url})
    assert "name=big max_sandboxes=7" in via_env.output, via_env.output
    wins = _admin(tmp_path, "tier", "list", url=db_url,
                  env={"SBX_DATABASE_URL": "sqlite+aiosqlite:////nonexistent/x.db"})
    assert "name=big" in wins.output, wins.output
    # Only the database was written: the data dir holds no SQLite file of
    # its own when the URL names another store.
    assert (tmp_path / "sbx.db").exists() == db_url.endswith(f"{tmp_path}/sbx.db")


def test_a_url_without_a_driver_names_the_async_one(postgres: Postgres, tmp_path: Path
                                                    ) -> None:
    plain = postgres.url().replace("postgresql+asyncpg://", "postgresql://")
    assert Settings(database_url=plain).db_url == postgres.url()
    assert Settings(database_url="sqlite:////x/sbx.db").db_url == "sqlite+aiosqlite:////x/sbx.db"
    assert _admin(tmp_path, "tier", "list", url=plain).exit_code == 0


def test_a_database_password_is_never_shown(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.url()
    assert postgres.password not in masked(url) and "***" in masked(url)
    assert postgres.password not in repr(Database(url))
    wrong = url.replace(postgres.password, "not-the-password-0123")
    res = CliRunner().invoke(cli, ["admin", "tier", "list", "--data-dir", str(tmp_path),
                                   "--database-url", wrong])
    assert res.exit_code == 1
    assert "password authentication failed" in res.output, res.output
    assert "not-the-password-0123" not in res.output and "***" in res.output
    # Nothing listens there: one line too.
    gone = CliRunner().invoke(cli, ["admin", "tier", "list", "--data-dir", str(tmp_path),
                                    "--database-url",
                                    "postgresql+asyncpg://sbx:not-the-password-0123@127.0.0.1:1/x"])
    assert gone.exit_code == 1 and "not-the-password-0123" not in gone.output, gone.output

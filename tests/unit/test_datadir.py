"""sbx.datadir: the data dir's lock and modes, on real files and processes
(the servers themselves: tests/integration/test_data_dir.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sbx import datadir

HOLD = ("import sys, time; from pathlib import Path; from sbx import datadir; "
        "datadir.lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_lock_names_its_holder_and_is_free_once_it_ends(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            with pytest.raises(datadir.DataDirBusy, match=f"PID {holder.pid}"):
                datadir.lock(tmp_path)
        finally:
            holder.kill()
    fd = datadir.lock(tmp_path)
    try:
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
        assert _mode(tmp_path / "lock") == 0o600
        # Not inherited: a child (runsc, say) cannot keep the data dir locked.
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_secure_fixes_an_old_data_dir_and_leaves_what_is_not_its_own(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside.txt"
    outside.write_text("not sbx's")
    outside.chmod(0o644)
    files = [data / "sbx.db", data / "sbx.db-wal", data / "api-key",
             data / "snapshots" / "sbx-1" / "pages.img",
             data / "sandboxes" / "sbx-2" / "disk.img", data / "egress" / "sbx-2" / "ca.key",
             data / "layers" / "k" / "usr" / "bin" / "tool"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
        f.chmod(0o644)
    (data / "snapshots" / "link").symlink_to(outside)
    data.chmod(0o755)

    datadir.secure(data, deep=False)
    assert _mode(data) == 0o700
    assert _mode(data / "sbx.db") == _mode(data / "api-key") == 0o600
    assert _mode(data / "snapshots" / "sbx-1" / "pages.img") == 0o644

    datadir.secure(data)
    for f in files[:-1]:
        assert _mode(f) == 0o600, f
        assert _mode(f.parent) == 0o700, f.parent
    # Template layers keep their files' own modes; a symlink is not followed.
    assert _mode(files[-1]) == 0o644
    assert _mode(outside) == 0o644


def test_a_new_database_is_private_before_sqlite_makes_its_wal(tmp_path: Path) -> None:
    import sqlite3

    datadir.secure(tmp_path / "data")
    db = tmp_path / "data" / "sbx.db"
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (secret TEXT)")
        conn.execute("INSERT INTO t VALUES ('s')")
        conn.commit()
        assert _mode(db) == _mode(Path(f"{db}-wal")) == _mode(Path(f"{db}-shm")) == 0o600
    finally:
        conn.close()

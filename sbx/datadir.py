"""The data dir: one server at a time, and nothing in it for other users.

A second `sbx server` on a live data dir must stop before it touches the
host or the store (it would rebuild the node's nft table around its own
resolver and proxy, and remove the live server's spare runtimes as
leftovers): `lock()` takes an exclusive flock on DATA_DIR/lock for the
process's life, and names the holder's PID when it cannot.

The store holds brokered credentials and envd tokens, snapshots hold
sandboxes' memory: the data dir is 0700 and its secret files 0600, also in
a data dir made by an older sbx (`secure()` at every start)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK = "lock"
# Files at the top of the data dir that only root may read (SQLite makes
# -wal and -shm with the database file's mode, but an older sbx left them
# 0644).
_SECRET_FILES = ("sbx.db", "sbx.db-wal", "sbx.db-shm", "sbx.db-journal", "api-key", LOCK)
# Trees whose every file is secret: memory images and disks of sandboxes,
# their egress CAs' keys, build contexts and output.
_SECRET_TREES = ("snapshots", "sandboxes", "spares", "egress", "builds")


class DataDirBusy(Exception):
    def __init__(self, data_dir: Path, holder: int | None) -> None:
        who = f"PID {holder}" if holder is not None else "another process"
        super().__init__(f"data dir {data_dir} is in use by another sbx server ({who}); "
                         "one server per data dir")
        self.holder = holder


def lock(data_dir: Path) -> int:
    """Take the data dir's lock; answer its descriptor, held (and the lock
    with it) until the process ends. Not inherited by children: a runsc
    process that outlives the server must not keep the data dir locked."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise DataDirBusy(data_dir, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    # The holder writes its PID just after locking: empty for a moment.
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


def secure(data_dir: Path, deep: bool = True, sqlite: bool = True) -> None:
    """Make the data dir 0700 and its secret files 0600; with deep, also
    every file of the secret trees (and their directories 0700); sqlite:
    the store is the data dir's own SQLite file. Blocking: call before the
    event loop runs."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if sqlite:
        # SQLite creates the WAL and shared-memory files with the database
        # file's mode: a database made 0600 here keeps all three private.
        db = data_dir / "sbx.db"
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for name in _SECRET_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(data_dir / name, 0o600)
    for tree in _SECRET_TREES if deep else ():
        root = data_dir / tree
        if not root.is_dir():
            continue
        os.chmod(root, 0o700)
        for parent, dirs, files in os.walk(root):
            # A running sandbox's disk is mounted in its directory: what is
            # inside belongs to the sandbox, and its modes are its own.
            dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(parent, d))]
            for d in dirs:
                _chmod(os.path.join(parent, d), 0o700)
            for f in files:
                _chmod(os.path.join(parent, f), 0o600)


def _chmod(path: str, mode: int) -> None:
    # A symlink is left alone: chmod would follow it out of the tree.
    if not os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, mode)

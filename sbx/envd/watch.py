"""Directory watching: inotify through ctypes, polling when inotify is missing."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import stat
import struct
from collections.abc import Callable

log = logging.getLogger("envd.watch")

EVENT_CREATE = "EVENT_TYPE_CREATE"
EVENT_WRITE = "EVENT_TYPE_WRITE"
EVENT_REMOVE = "EVENT_TYPE_REMOVE"
EVENT_RENAME = "EVENT_TYPE_RENAME"
EVENT_CHMOD = "EVENT_TYPE_CHMOD"

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)

# The operations fsnotify (and so E2B's envd) reports, in its order.
_OPS = (
    (IN_CREATE | IN_MOVED_TO, EVENT_CREATE),
    (IN_MOVED_FROM | IN_MOVE_SELF, EVENT_RENAME),
    (IN_ATTRIB, EVENT_CHMOD),
    (IN_MODIFY, EVENT_WRITE),
    (IN_DELETE | IN_DELETE_SELF, EVENT_REMOVE),
)

_HEADER = struct.Struct("iIII")
POLL_INTERVAL = 0.2

# (relative name, event type)
Sink = Callable[[str, str], None]


class WatchError(Exception):
    pass


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        libc.inotify_rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


class InotifyWatcher:
    def __init__(self, root: str, recursive: bool, sink: Sink, libc: ctypes.CDLL) -> None:
        self._root = root
        self._recursive = recursive
        self._sink = sink
        self._libc = libc
        self._paths: dict[int, str] = {}
        self._loop = asyncio.get_running_loop()
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd
        try:
            self._add(root, must=True)
            if recursive:
                self._add_tree(root)
        except BaseException:
            os.close(fd)
            raise
        self._loop.add_reader(fd, self._on_readable)

    def _add(self, path: str, must: bool = False) -> None:
        wd = int(self._libc.inotify_add_watch(self._fd, os.fsencode(path), WATCH_MASK))
        if wd < 0:
            err = ctypes.get_errno()
            if must:
                raise WatchError(f"error adding path {path} to watcher: {os.strerror(err)}")
            return
        self._paths[wd] = path

    def _add_tree(self, top: str) -> None:
        for dirpath, dirnames, _ in os.walk(top):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    self._add(full)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("inotify read failed: %s", e)
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            raw_name = data[offset + _HEADER.size : offset + _HEADER.size + length]
            offset += _HEADER.size + length
            self._handle(wd, mask, os.fsdecode(raw_name.rstrip(b"\0")))

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            log.warning("inotify queue overflow under %s", self._root)
            return
        base = self._paths.get(wd)
        if base is None:
            return
        if mask & IN_IGNORED:
            del self._paths[wd]
            return
        full = os.path.join(base, name) if name else base
        if not name and base != self._root:
            # Self events of subdirectories repeat what their parent reports.
            return
        if self._recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            self._add(full)
            self._add_tree(full)
        rel = os.path.relpath(full, self._root)
        if rel == ".":
            rel = ""
        for bits, op in _OPS:
            if mask & bits:
                self._sink(rel, op)

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


Snapshot = dict[str, tuple[int, int, int, int]]


class PollingWatcher:
    """Fallback for kernels without inotify: diffs directory snapshots."""

    def __init__(self, root: str, recursive: bool, sink: Sink) -> None:
        self._root = root
        self._recursive = recursive
        self._sink = sink
        self._state = self._scan()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _scan(self) -> Snapshot:
        out: Snapshot = {}
        stack = [self._root]
        while stack:
            top = stack.pop()
            try:
                entries = list(os.scandir(top))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                rel = os.path.relpath(entry.path, self._root)
                out[rel] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)
                if self._recursive and stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
        return out

    def poll(self) -> None:
        new = self._scan()
        old = self._state
        for rel in sorted(new.keys() - old.keys()):
            self._sink(rel, EVENT_CREATE)
        for rel in sorted(old.keys() - new.keys()):
            self._sink(rel, EVENT_REMOVE)
        for rel in sorted(new.keys() & old.keys()):
            (ino0, mt0, size0, mode0), (ino1, mt1, size1, mode1) = old[rel], new[rel]
            if ino0 != ino1:
                self._sink(rel, EVENT_CREATE)
            elif mt0 != mt1 or size0 != size1:
                self._sink(rel, EVENT_WRITE)
            elif mode0 != mode1:
                self._sink(rel, EVENT_CHMOD)
        self._state = new

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.poll()

    def close(self) -> None:
        self._task.cancel()


Watcher = InotifyWatcher | PollingWatcher


def watch(root: str, recursive: bool, sink: Sink, force_polling: bool = False) -> Watcher:
    libc = None if force_polling else _libc()
    if libc is not None:
        try:
            return InotifyWatcher(root, recursive, sink, libc)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EMFILE, errno.ENOSPC):
                raise
            log.warning("inotify unavailable (%s), polling %s", e, root)
    return PollingWatcher(root, recursive, sink)


def mount_fstype(path: str) -> str:
    """Filesystem type of the mount holding ``path`` (from mountinfo)."""
    best, fstype = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            mount_point = fields[4].replace("\\040", " ")
            inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, right.split()[0]
    return fstype


# Not 9p: gVisor serves the root filesystem itself over a 9p-style gofer.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs")


def is_network_mount(path: str) -> bool:
    fstype = mount_fstype(path)
    return fstype in NETWORK_FS or fstype.startswith("fuse")

"""``filesystem.EntryInfo`` messages and file metadata (``user.e2b.*`` xattrs)."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import Any

from .users import group_name, user_name

FILE_TYPE_UNSPECIFIED = "FILE_TYPE_UNSPECIFIED"
FILE_TYPE_FILE = "FILE_TYPE_FILE"
FILE_TYPE_DIRECTORY = "FILE_TYPE_DIRECTORY"
FILE_TYPE_SYMLINK = "FILE_TYPE_SYMLINK"

XATTR_PREFIX = "user.e2b."


def rfc3339(ns: int) -> str:
    """Proto3 JSON Timestamp: UTC, 'Z', 0/3/6/9 fractional digits."""
    secs, nanos = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"


def file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE_TYPE_FILE
    if stat.S_ISDIR(mode):
        return FILE_TYPE_DIRECTORY
    if stat.S_ISLNK(mode):
        return FILE_TYPE_SYMLINK
    return FILE_TYPE_UNSPECIFIED


def read_metadata(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for name in names:
        if not name.startswith(XATTR_PREFIX):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out[name[len(XATTR_PREFIX) :]] = value.decode("utf-8", "replace")
    return out


def write_metadata(path: str, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        os.setxattr(path, XATTR_PREFIX + key.lower(), value.encode())


class EntryBuilder:
    """Builds EntryInfo dicts, caching owner/group names for one request."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def build(self, path: str, st: os.stat_result | None = None) -> dict[str, Any]:
        """EntryInfo of ``path`` (not following a final symlink); raises OSError."""
        if st is None:
            st = os.lstat(path)
        entry: dict[str, Any] = {
            "name": os.path.basename(path) or path,
            "type": file_type(st.st_mode),
            "path": path,
            "size": str(st.st_size),
            "mode": stat.S_IMODE(st.st_mode) & 0o777,
            "permissions": stat.filemode(st.st_mode),
            "owner": user_name(st.st_uid, self._users),
            "group": group_name(st.st_gid, self._groups),
            "modifiedTime": rfc3339(st.st_mtime_ns),
        }
        if stat.S_ISLNK(st.st_mode):
            # Like current E2B envd: the type is the target's, the link is
            # flagged; a dangling link stays FILE_TYPE_SYMLINK.
            entry["isSymlink"] = True
            entry["symlinkTarget"] = os.path.realpath(path)
            with contextlib.suppress(OSError):
                entry["type"] = file_type(os.stat(path).st_mode)
        metadata = read_metadata(path)
        if metadata:
            entry["metadata"] = metadata
        return entry

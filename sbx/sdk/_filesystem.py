"""The ``filesystem.Filesystem`` service and the ``/files`` endpoint of envd,
as operations (sans-IO): what to send and how to read the answer."""

from __future__ import annotations

import json
from typing import Any

import httpx

from sbx.sdk._config import envd_user_header
from sbx.sdk._connect import Message, unary
from sbx.sdk._exceptions import ConflictError, NotFoundError, ServerError
from sbx.sdk._models import EntryInfo, FileType, WriteInfo
from sbx.sdk._ops import Op, Request, iso_datetime, raise_for_status

SERVICE = "/filesystem.Filesystem/"
FILES_PATH = "/files"
# Large transfers must not be cut by the default request timeout.
TRANSFER_TIMEOUT = 600.0

_FILE_TYPES = {
    "FILE_TYPE_FILE": FileType.FILE,
    "FILE_TYPE_DIRECTORY": FileType.DIR,
    "FILE_TYPE_SYMLINK": FileType.SYMLINK,
    # /files answers with the short names.
    "file": FileType.FILE,
    "dir": FileType.DIR,
    "directory": FileType.DIR,
    "symlink": FileType.SYMLINK,
}


def _params(path: str, user: str | None) -> dict[str, str]:
    return {"path": path, "username": user} if user else {"path": path}


def read(path: str, user: str | None = None) -> Op[bytes]:
    def parse(response: httpx.Response) -> bytes:
        raise_for_status(response)
        return response.content

    request = Request(
        "GET", FILES_PATH, params=_params(path, user), timeout=TRANSFER_TIMEOUT
    )
    return Op(request, parse)


def write(path: str, data: str | bytes, user: str | None = None) -> Op[WriteInfo]:
    """An octet-stream upload: no multipart encoding to build or parse."""
    content = data.encode() if isinstance(data, str) else bytes(data)

    def parse(response: httpx.Response) -> WriteInfo:
        raise_for_status(response)
        try:
            items: Any = json.loads(response.content)
            item = items[0]
            return WriteInfo(
                name=str(item.get("name") or ""),
                type=_FILE_TYPES.get(str(item.get("type"))),
                path=str(item.get("path") or path),
            )
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise ServerError("envd did not describe the written file") from exc

    request = Request(
        "POST",
        FILES_PATH,
        headers={"Content-Type": "application/octet-stream"},
        params=_params(path, user),
        content=content,
        timeout=TRANSFER_TIMEOUT,
    )
    return Op(request, parse)


def list_dir(path: str, depth: int = 1, user: str | None = None) -> Op[list[EntryInfo]]:
    def result(message: Message) -> list[EntryInfo]:
        entries = (entry_info(e) for e in message.get("entries") or [])
        # An unknown type (a socket, a device) is not something callers can act on.
        return [e for e in entries if e.type is not None]

    message = {"path": path, "depth": depth}
    return unary(SERVICE + "ListDir", message, result, envd_user_header(user))


def stat(path: str, user: str | None = None) -> Op[EntryInfo]:
    return unary(SERVICE + "Stat", {"path": path}, _entry, envd_user_header(user))


def exists(path: str, user: str | None = None) -> Op[bool]:
    inner = stat(path, user)

    def parse(response: httpx.Response) -> bool:
        try:
            inner.parse(response)
        except NotFoundError:
            return False
        return True

    return Op(inner.request, parse)


def make_dir(path: str, user: str | None = None) -> Op[bool]:
    """True when created, False when it was already there."""
    inner = unary(SERVICE + "MakeDir", {"path": path}, lambda _: True, envd_user_header(user))

    def parse(response: httpx.Response) -> bool:
        try:
            return inner.parse(response)
        except ConflictError:
            return False

    return Op(inner.request, parse)


def move(source: str, destination: str, user: str | None = None) -> Op[EntryInfo]:
    return unary(
        SERVICE + "Move",
        {"source": source, "destination": destination},
        _entry,
        envd_user_header(user),
    )


def remove(path: str, user: str | None = None) -> Op[None]:
    return unary(SERVICE + "Remove", {"path": path}, lambda _: None, envd_user_header(user))


def _entry(message: Message) -> EntryInfo:
    return entry_info(message.get("entry") or {})


def entry_info(entry: Message) -> EntryInfo:
    return EntryInfo(
        name=str(entry.get("name") or ""),
        type=_FILE_TYPES.get(str(entry.get("type"))),
        path=str(entry.get("path") or ""),
        # Proto3 JSON carries int64 as a string.
        size=int(entry.get("size") or 0),
        mode=int(entry.get("mode") or 0),
        permissions=str(entry.get("permissions") or ""),
        owner=str(entry.get("owner") or ""),
        group=str(entry.get("group") or ""),
        modified_time=iso_datetime(entry.get("modifiedTime")),
        symlink_target=entry.get("symlinkTarget") or None,
    )



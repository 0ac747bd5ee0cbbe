"""``sandbox.files``: sync and async twins over :mod:`sbx.sdk._filesystem`."""

from __future__ import annotations

from typing import Literal, overload

from sbx.sdk import _filesystem as fs
from sbx.sdk._models import EntryInfo, WriteInfo
from sbx.sdk._transport import AsyncTransport, Transport

Format = Literal["text", "bytes"]


def _decode(data: bytes, format: Format) -> str | bytes:
    # Like httpx's response.text: a stray invalid byte must not make a file unreadable.
    return data.decode("utf-8", "replace") if format == "text" else data


class Files:
    """Read, write and manage files in the sandbox. Paths may be absolute or
    relative to the user's home directory."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @overload
    def read(self, path: str, format: Literal["text"] = "text", user: str | None = None) -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"], user: str | None = None) -> bytes: ...

    def read(self, path: str, format: Format = "text", user: str | None = None) -> str | bytes:
        return _decode(self._transport.call(fs.read(path, user)), format)

    def write(self, path: str, data: str | bytes, user: str | None = None) -> WriteInfo:
        """Create or replace a file; missing parent directories are created."""
        return self._transport.call(fs.write(path, data, user))

    def list(self, path: str, depth: int = 1, user: str | None = None) -> list[EntryInfo]:
        return self._transport.call(fs.list_dir(path, depth, user))

    def exists(self, path: str, user: str | None = None) -> bool:
        return self._transport.call(fs.exists(path, user))

    def get_info(self, path: str, user: str | None = None) -> EntryInfo:
        return self._transport.call(fs.stat(path, user))

    def remove(self, path: str, user: str | None = None) -> None:
        """Remove a file or a directory with everything in it."""
        self._transport.call(fs.remove(path, user))

    def make_dir(self, path: str, user: str | None = None) -> bool:
        """Create a directory and its parents; False when it already existed."""
        return self._transport.call(fs.make_dir(path, user))

    def rename(self, old_path: str, new_path: str, user: str | None = None) -> EntryInfo:
        return self._transport.call(fs.move(old_path, new_path, user))


class AsyncFiles:
    """``sandbox.files`` of an :class:`~sbx.sdk.AsyncSandbox`; see :class:`Files`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    @overload
    async def read(
        self, path: str, format: Literal["text"] = "text", user: str | None = None
    ) -> str: ...

    @overload
    async def read(self, path: str, format: Literal["bytes"], user: str | None = None) -> bytes: ...

    async def read(
        self, path: str, format: Format = "text", user: str | None = None
    ) -> str | bytes:
        return _decode(await self._transport.call(fs.read(path, user)), format)

    async def write(self, path: str, data: str | bytes, user: str | None = None) -> WriteInfo:
        return await self._transport.call(fs.write(path, data, user))

    async def list(self, path: str, depth: int = 1, user: str | None = None) -> list[EntryInfo]:
        return await self._transport.call(fs.list_dir(path, depth, user))

    async def exists(self, path: str, user: str | None = None) -> bool:
        return await self._transport.call(fs.exists(path, user))

    async def get_info(self, path: str, user: str | None = None) -> EntryInfo:
        return await self._transport.call(fs.stat(path, user))

    async def remove(self, path: str, user: str | None = None) -> None:
        await self._transport.call(fs.remove(path, user))

    async def make_dir(self, path: str, user: str | None = None) -> bool:
        return await self._transport.call(fs.make_dir(path, user))

    async def rename(self, old_path: str, new_path: str, user: str | None = None) -> EntryInfo:
        return await self._transport.call(fs.move(old_path, new_path, user))

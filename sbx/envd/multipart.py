"""Streaming ``multipart/form-data`` parsing: parts are read piece by piece,
never held whole in memory (uploads can be large)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

Read = Callable[[], Awaitable[bytes]]

_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MultipartError(Exception):
    pass


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=b; c="d"`` into the value and its parameters (RFC 2231 aware)."""
    main, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(value):
        key = key.lower()
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key.endswith("*"):
            charset, _, rest = raw.partition("'")
            _, _, encoded = rest.partition("'")
            params[key[:-1]] = unquote(encoded, encoding=charset or "utf-8", errors="replace")
        else:
            params.setdefault(key, raw)
    return main.strip().lower(), params


class Part:
    def __init__(self, parser: MultipartParser, headers: dict[str, str]) -> None:
        self._parser = parser
        self.headers = headers
        _, params = header_params(headers.get("content-disposition", ""))
        self.name = params.get("name")
        self.filename = params.get("filename")

    async def read(self) -> bytes:
        """Next piece of this part's content; b"" at its end."""
        return await self._parser.read_part()


class MultipartParser:
    def __init__(self, read: Read, boundary: str) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("invalid multipart boundary")
        self._read = read
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        # The first boundary has no CRLF before it; pretend it does.
        self._buf = bytearray(b"\r\n")
        self._in_part = False
        self._done = False

    async def _fill(self) -> bool:
        data = await self._read()
        if not data:
            return False
        self._buf += data
        return True

    async def _need(self, n: int) -> None:
        while len(self._buf) < n:
            if not await self._fill():
                raise MultipartError("unexpected end of multipart body")

    async def next_part(self) -> Part | None:
        while self._in_part:
            await self.read_part()
        if self._done:
            return None
        keep = len(self._delim) - 1
        while True:
            i = self._buf.find(self._delim)
            if i >= 0:
                del self._buf[: i + len(self._delim)]
                break
            if len(self._buf) > keep:
                del self._buf[:-keep]
            if not await self._fill():
                raise MultipartError("multipart boundary not found")
        await self._need(2)
        if self._buf[:2] == b"--":
            self._done = True
            return None
        # Rest of the boundary line (RFC 2046 allows trailing whitespace).
        while (eol := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > 1024 or not await self._fill():
                raise MultipartError("bad multipart boundary line")
        del self._buf[: eol + 2]
        while (end := self._buf.find(b"\r\n\r\n")) < 0 and not self._buf.startswith(b"\r\n"):
            if len(self._buf) > 64 * 1024 or not await self._fill():
                raise MultipartError("bad multipart part headers")
        if self._buf.startswith(b"\r\n"):
            raw, cut = b"", 2
        else:
            raw, cut = bytes(self._buf[:end]), end + 4
        del self._buf[:cut]
        headers: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self._in_part = True
        return Part(self, headers)

    async def read_part(self) -> bytes:
        if not self._in_part:
            return b""
        keep = len(self._delim) - 1
        while True:
            i = self._buf.find(self._delim)
            if i == 0:
                self._in_part = False
                return b""
            if i > 0:
                data = bytes(self._buf[:i])
                del self._buf[:i]
                return data
            # Hold back what could be the start of a delimiter split across reads.
            safe = len(self._buf) - keep
            if safe > 0:
                data = bytes(self._buf[:safe])
                del self._buf[:safe]
                return data
            if not await self._fill():
                raise MultipartError("unexpected end of multipart body")

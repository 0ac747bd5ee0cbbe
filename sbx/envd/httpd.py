"""A small HTTP/1.1 server on asyncio streams.

``http.server`` is unusable here: it resolves the peer's name (getfqdn) on every
request, which stalls for seconds in a sandbox without DNS, and it is
thread-per-request. This server supports exactly what envd needs: keep-alive,
Content-Length and chunked request bodies, chunked streaming responses,
``Expect: 100-continue`` and noticing a client that goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

log = logging.getLogger("envd.http")

MAX_HEAD = 64 * 1024
READ_SIZE = 256 * 1024
# A request body left unread by a handler is discarded up to this size so the
# connection can be reused; beyond it closing is cheaper than reading.
MAX_DISCARD = 4 * 1024 * 1024
# Connections idle between requests this long are closed, so peers that
# vanished without a FIN do not hold descriptors forever.
IDLE_TIMEOUT = 600.0

Headers = Iterable[tuple[str, str]]


class HttpError(Exception):
    """A malformed request: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def reason(status: int) -> str:
    if status == 499:
        return "Client Closed Request"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Connection:
    """Buffered access to one client socket.

    All reads go through ``buf`` so that bytes read ahead (by the disconnect
    watcher or past the end of a body) are never lost to the next request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        if self.eof:
            return False
        data = await self.reader.read(READ_SIZE)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes before ``sep`` (consumed with it); None on EOF before any byte."""
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise HttpError(431, "request head too large")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not await self._fill():
                if not self.buf:
                    return None
                raise HttpError(400, "connection closed mid-request")

    async def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes, b"" only at EOF."""
        if self.buf:
            if len(self.buf) <= n:
                out = bytes(self.buf)
                self.buf.clear()
            else:
                out = bytes(self.buf[:n])
                del self.buf[:n]
            return out
        if self.eof:
            return b""
        data = await self.reader.read(n)
        if not data:
            self.eof = True
        return data

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise HttpError(400, "connection closed mid-body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def wait_disconnect(self) -> None:
        """Return once the peer has closed its side.

        Only call this when no request body is pending: anything the client
        sends meanwhile (a pipelined request) is kept in ``buf``.
        """
        while not self.eof:
            if len(self.buf) > MAX_HEAD:
                # A client flooding us while we stream is not going away; stop
                # reading and let TCP flow control hold it back.
                await asyncio.Event().wait()
            if not await self._fill():
                return

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()


class Body:
    """A request body, read incrementally (Content-Length or chunked)."""

    def __init__(
        self,
        conn: Connection,
        length: int | None,
        chunked: bool,
        expect_continue: bool,
    ) -> None:
        self._conn = conn
        self._remaining = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self._continue = expect_continue
        self.complete = not chunked and not length

    @property
    def awaiting_continue(self) -> bool:
        return self._continue

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Next piece of the body, b"" once it is complete."""
        if self.complete:
            return b""
        if self._continue:
            # The client waits for this before sending a large body.
            self._continue = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self._chunked:
            data = await self._conn.read_some(min(n, self._remaining))
            if not data:
                raise HttpError(400, "request body truncated")
            self._remaining -= len(data)
            if self._remaining == 0:
                self.complete = True
            return data
        while self._chunk_left == 0:
            line = await self._conn.read_until(b"\r\n", 4096)
            if line is None:
                raise HttpError(400, "request body truncated")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad chunk size") from None
            if size < 0:
                raise HttpError(400, "bad chunk size")
            if size == 0:
                # Trailers, if any, end with an empty line.
                while True:
                    trailer = await self._conn.read_until(b"\r\n", MAX_HEAD)
                    if not trailer:
                        break
                self.complete = True
                return b""
            self._chunk_left = size
        data = await self._conn.read_some(min(n, self._chunk_left))
        if not data:
            raise HttpError(400, "request body truncated")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await self._conn.read_exact(2) != b"\r\n":
            raise HttpError(400, "bad chunk terminator")
        return data

    async def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > limit:
                raise HttpError(413, "request body too large")
            parts.append(data)

    async def discard(self, limit: int) -> bool:
        """Read and drop the rest; False when more than ``limit`` bytes remain."""
        seen = 0
        while not self.complete:
            seen += len(await self.read())
            if seen > limit:
                return False
        return True


class Request:
    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        conn: Connection,
        body: Body,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.conn = conn
        self.body = body
        if target.startswith(("http://", "https://")):
            # Absolute form, as sent to proxies: keep only the path and query.
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        self.path = path
        self.query: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            self.query.setdefault(key, value)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


class Response:
    """Writes one response: whole (``send``) or streamed (``start``/``write``/``end``)."""

    def __init__(self, conn: Connection, keep_alive: bool, http10: bool, head_only: bool) -> None:
        self._conn = conn
        self.keep_alive = keep_alive
        self._http10 = http10
        self._head_only = head_only
        self.started = False
        self.finished = False
        self._chunked = False
        self._pending_head = b""

    def _head(self, status: int, headers: Headers, extra: str) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason(status)}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers)
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif self._http10:
            lines.append("Connection: keep-alive\r\n")
        lines.append(extra)
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def send(
        self,
        status: int,
        body: bytes = b"",
        headers: Headers = (),
        content_type: str | None = None,
    ) -> None:
        hdrs = list(headers)
        if content_type:
            hdrs.append(("Content-Type", content_type))
        if status == 204 or status == 304:
            head = self._head(status, hdrs, "")
            body = b""
        else:
            head = self._head(status, hdrs, f"Content-Length: {len(body)}\r\n")
        self.started = True
        self._conn.write(head if self._head_only or not body else head + body)
        self.finished = True
        await self._conn.drain()

    async def send_json(self, status: int, obj: Any, headers: Headers = ()) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        await self.send(status, body, headers, "application/json")

    def start(self, status: int, headers: Headers = ()) -> None:
        """Begin a streamed response; the head goes out with the first write."""
        if self._http10:
            # HTTP/1.0 has no chunked encoding: the end of the body is the close.
            self.keep_alive = False
            self._pending_head = self._head(status, headers, "")
        else:
            self._chunked = True
            self._pending_head = self._head(status, headers, "Transfer-Encoding: chunked\r\n")
        self.started = True

    async def write(self, data: bytes) -> None:
        if not data:
            return
        out = self._pending_head
        self._pending_head = b""
        if self._chunked:
            out += b"%x\r\n" % len(data) + data + b"\r\n"
        else:
            out += data
        self._conn.write(out)
        await self._conn.drain()

    async def end(self, last: bytes = b"") -> None:
        out = self._pending_head
        self._pending_head = b""
        if self._chunked:
            if last:
                out += b"%x\r\n" % len(last) + last + b"\r\n"
            out += b"0\r\n\r\n"
        else:
            out += last
        self._conn.write(out)
        self.finished = True
        await self._conn.drain()

    async def send_file(self, status: int, headers: Headers, fd: int, size: int) -> None:
        """Send ``size`` bytes of ``fd`` with Content-Length, zero-copy when possible."""
        self._conn.write(self._head(status, headers, f"Content-Length: {size}\r\n"))
        self.started = True
        await self._conn.drain()
        if not self._head_only and size:
            loop = asyncio.get_running_loop()
            with os.fdopen(os.dup(fd), "rb") as f:
                sent = await loop.sendfile(self._conn.writer.transport, f, 0, size, fallback=True)
            if sent != size:
                # The file shrank under us; the client cannot tell where this
                # body ends any more, so the connection must go.
                self.keep_alive = False
        self.finished = True


Handler = Callable[[Request, Response], Awaitable[None]]


def _parse_head(raw: bytes) -> tuple[str, str, str, dict[str, str]]:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, target, version, headers


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._address: tuple[str | None, int] = (None, 0)
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self, host: str | None, port: int) -> asyncio.Server:
        self._address = (host, port)
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=READ_SIZE * 4, backlog=1024, reuse_address=True
        )
        return self._server

    async def relisten(self, keep: asyncio.StreamWriter | None = None) -> None:
        """Close every client connection (but keep) and listen on a fresh
        socket. Before a checkpoint: gVisor (2024-07) restores a listening
        socket that had accepted connections deaf to new ones, so the image
        must hold a listener that never had any."""
        for writer in list(self._writers):
            if writer is not keep:
                writer.close()
        if self._server is not None:
            self._server.close()
        await self.listen(*self._address)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        self._writers.add(writer)
        try:
            while await self._one_request(conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_request(self, conn: Connection) -> bool:
        """Serve one request; True when the connection can carry another."""
        idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, conn.writer.close)
        try:
            raw = await conn.read_until(b"\r\n\r\n", MAX_HEAD)
            if raw is None:
                return False
            if not raw:
                # Tolerate stray CRLFs between requests (RFC 9112 section 2.2).
                return True
            method, target, version, headers = _parse_head(raw)
            body = self._body(conn, headers)
        except HttpError as e:
            await _plain_error(conn, e.status, e.message)
            return False
        finally:
            idle.cancel()
        http10 = version == "HTTP/1.0"
        conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "keep-alive" in conn_tokens if http10 else "close" not in conn_tokens
        req = Request(method, target, version, headers, conn, body)
        resp = Response(conn, keep_alive, http10, method == "HEAD")
        try:
            await self._handler(req, resp)
        except HttpError as e:
            if resp.started:
                return False
            resp.keep_alive = False
            await resp.send_json(e.status, {"code": e.status, "message": e.message})
            return False
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s %s failed", method, req.path)
            if resp.started:
                return False
            resp.keep_alive = False
            await resp.send_json(500, {"code": 500, "message": "internal error"})
            return False
        if not resp.finished or not resp.keep_alive or body.awaiting_continue:
            # A client still waiting for "100 Continue" may or may not send the
            # body now that it got a final answer; only closing is unambiguous.
            return False
        try:
            return await body.discard(MAX_DISCARD)
        except HttpError:
            return False

    @staticmethod
    def _body(conn: Connection, headers: dict[str, str]) -> Body:
        te = headers.get("transfer-encoding")
        expect = headers.get("expect", "").lower() == "100-continue"
        if te is not None:
            if te.lower() != "chunked":
                raise HttpError(501, f"unsupported transfer-encoding: {te}")
            return Body(conn, None, True, expect)
        cl = headers.get("content-length")
        if cl is None:
            return Body(conn, 0, False, False)
        try:
            length = int(cl)
        except ValueError:
            raise HttpError(400, "bad content-length") from None
        if length < 0:
            raise HttpError(400, "bad content-length")
        return Body(conn, length, False, expect and length > 0)


async def _plain_error(conn: Connection, status: int, message: str) -> None:
    body = json.dumps({"code": status, "message": message}).encode()
    conn.write(
        f"HTTP/1.1 {status} {reason(status)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await conn.drain()

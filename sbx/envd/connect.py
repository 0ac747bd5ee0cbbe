"""The Connect RPC protocol (JSON codec) on top of :mod:`httpd`.

Unary calls are plain JSON POSTs; streaming calls carry enveloped frames
(1 flag byte, 4-byte big-endian length, JSON) in both directions and end with
an end-stream frame (flag 0x02) holding ``{}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import json
import logging
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .httpd import Body, HttpError, Request, Response

log = logging.getLogger("envd.connect")

JsonObj = dict[str, Any]

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
MAX_MESSAGE = 64 * 1024 * 1024
STREAM_CONTENT_TYPE = "application/connect+json"
UNARY_CONTENT_TYPE = "application/json"


class Code(enum.StrEnum):
    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"


HTTP_STATUS: dict[Code, int] = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ConnectError(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> JsonObj:
        return {"code": self.code.value, "message": self.message}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def end_stream(error: ConnectError | None = None) -> bytes:
    return envelope(dumps({"error": error.to_json()}) if error else b"{}", FLAG_END_STREAM)


async def send_error(resp: Response, err: ConnectError) -> None:
    await resp.send(HTTP_STATUS[err.code], dumps(err.to_json()), content_type=UNARY_CONTENT_TYPE)


# --- proto3 JSON helpers -----------------------------------------------------

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")


def field(msg: Mapping[str, Any], name: str) -> Any:
    """Field ``name`` (camelCase) of a JSON message; proto3 JSON also allows snake_case."""
    if name in msg:
        return msg[name]
    return msg.get(_CAMEL_HUMP.sub("_", name).lower())


def as_obj(value: Any, name: str = "message") -> JsonObj:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected an object")
    return value


def as_str(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected a string")
    return value


def as_int(value: Any, name: str) -> int:
    """Integers arrive as numbers or (64-bit ones) as decimal strings."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected an integer")


def as_bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected a boolean")
    return value


def as_bytes(value: Any, name: str) -> bytes:
    """Proto3 JSON bytes: standard or URL-safe base64, padding optional."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected base64 string")
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: invalid base64") from None


def as_str_map(value: Any, name: str) -> dict[str, str]:
    obj = as_obj(value, name)
    if not all(isinstance(v, str) for v in obj.values()):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: expected string values")
    return dict(obj)


def as_enum(value: Any, names: Mapping[str, int], name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in names:
        return names[value]
    return as_int(value, name)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- calls ------------------------------------------------------------------


@dataclass
class Call:
    """What a handler may need to know about the request besides its message."""

    request: Request
    username: str | None
    timeout: float | None

    def header(self, name: str, default: str = "") -> str:
        return self.request.header(name, default)


Unary = Callable[[JsonObj, Call], Awaitable[JsonObj]]
ServerStream = Callable[[JsonObj, Call], AsyncIterator[JsonObj]]
ClientStream = Callable[[AsyncIterator[JsonObj], Call], Awaitable[JsonObj]]


class FrameReader:
    """Decodes envelopes from a request body as they arrive."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self._buf = bytearray()

    async def next(self) -> tuple[int, bytes] | None:
        while True:
            if len(self._buf) >= 5:
                flags, size = struct.unpack_from(">BI", self._buf)
                if size > MAX_MESSAGE:
                    raise ConnectError(Code.RESOURCE_EXHAUSTED, "message too large")
                if len(self._buf) >= 5 + size:
                    payload = bytes(self._buf[5 : 5 + size])
                    del self._buf[: 5 + size]
                    return flags, payload
            data = await self._body.read()
            if not data:
                if self._buf:
                    raise ConnectError(Code.INVALID_ARGUMENT, "truncated message envelope")
                return None
            self._buf += data

    async def messages(self) -> AsyncIterator[JsonObj]:
        while (frame := await self.next()) is not None:
            flags, payload = frame
            if flags & FLAG_END_STREAM:
                return
            if flags & FLAG_COMPRESSED:
                raise ConnectError(Code.INTERNAL, "compressed messages are not supported")
            yield parse_message(payload)


def parse_message(payload: bytes) -> JsonObj:
    try:
        msg = json.loads(payload) if payload.strip() else {}
    except ValueError as e:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid JSON message: {e}") from None
    if not isinstance(msg, dict):
        raise ConnectError(Code.INVALID_ARGUMENT, "message must be a JSON object")
    return msg


def _timeout(req: Request) -> float | None:
    raw = req.header("connect-timeout-ms")
    if not raw:
        return None
    try:
        ms = int(raw)
    except ValueError:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid timeout header: {raw!r}") from None
    return ms / 1000.0 if ms > 0 else None


class ConnectRouter:
    """Maps ``/<pkg.Service>/<Method>`` to handlers and speaks the protocol."""

    def __init__(self) -> None:
        self._unary: dict[str, Unary] = {}
        self._server: dict[str, ServerStream] = {}
        self._client: dict[str, ClientStream] = {}

    def unary(self, path: str, fn: Unary) -> None:
        self._unary[path] = fn

    def server_stream(self, path: str, fn: ServerStream) -> None:
        self._server[path] = fn

    def client_stream(self, path: str, fn: ClientStream) -> None:
        self._client[path] = fn

    def handles(self, path: str) -> bool:
        return path in self._unary or path in self._server or path in self._client

    async def handle(self, req: Request, resp: Response, username: str | None) -> None:
        if req.method != "POST":
            await resp.send(405, headers=[("Allow", "POST")])
            return
        stream = req.path in self._server or req.path in self._client
        ctype = req.header("content-type").partition(";")[0].strip().lower()
        wanted = STREAM_CONTENT_TYPE if stream else UNARY_CONTENT_TYPE
        if ctype != wanted:
            await resp.send(
                415,
                dumps({"code": "unknown", "message": f"unsupported content-type {ctype!r}"}),
                headers=[("Accept-Post", wanted)],
                content_type=UNARY_CONTENT_TYPE,
            )
            return
        try:
            call = Call(req, username, _timeout(req))
        except ConnectError as e:
            await send_error(resp, e)
            return
        if req.path in self._unary:
            await self._handle_unary(self._unary[req.path], req, resp, call)
        elif req.path in self._server:
            await self._handle_server_stream(self._server[req.path], req, resp, call)
        else:
            await self._handle_client_stream(self._client[req.path], req, resp, call)

    @staticmethod
    async def _handle_unary(fn: Unary, req: Request, resp: Response, call: Call) -> None:
        try:
            try:
                payload = await req.body.read_all(MAX_MESSAGE)
            except HttpError as e:
                code = Code.RESOURCE_EXHAUSTED if e.status == 413 else Code.INVALID_ARGUMENT
                raise ConnectError(code, e.message) from None
            out = await fn(parse_message(payload), call)
        except ConnectError as e:
            await send_error(resp, e)
            return
        except Exception as e:
            log.exception("%s failed", req.path)
            await send_error(resp, ConnectError(Code.INTERNAL, str(e)))
            return
        await resp.send(200, dumps(out), content_type=UNARY_CONTENT_TYPE)

    @staticmethod
    async def _handle_client_stream(
        fn: ClientStream, req: Request, resp: Response, call: Call
    ) -> None:
        frames = FrameReader(req.body)
        try:
            out = await fn(frames.messages(), call)
            payload = envelope(dumps(out)) + end_stream()
        except ConnectError as e:
            payload = end_stream(e)
        except HttpError:
            raise
        except Exception as e:
            log.exception("%s failed", req.path)
            payload = end_stream(ConnectError(Code.INTERNAL, str(e)))
        await resp.send(200, payload, content_type=STREAM_CONTENT_TYPE)

    async def _handle_server_stream(
        self, fn: ServerStream, req: Request, resp: Response, call: Call
    ) -> None:
        try:
            frame = await FrameReader(req.body).next()
            if frame is None or frame[0] & FLAG_END_STREAM:
                raise ConnectError(Code.INVALID_ARGUMENT, "missing request message")
            if frame[0] & FLAG_COMPRESSED:
                raise ConnectError(Code.INTERNAL, "compressed messages are not supported")
            msg = parse_message(frame[1])
            # Anything after the single request message is ignored.
            if not await req.body.discard(MAX_MESSAGE):
                raise ConnectError(Code.INVALID_ARGUMENT, "request body too large")
        except ConnectError as e:
            resp.start(200, [("Content-Type", STREAM_CONTENT_TYPE)])
            await resp.end(end_stream(e))
            return
        resp.start(200, [("Content-Type", STREAM_CONTENT_TYPE)])
        pump = asyncio.ensure_future(self._pump(fn(msg, call), resp))
        gone = asyncio.ensure_future(req.conn.wait_disconnect())
        try:
            done, _ = await asyncio.wait(
                {pump, gone}, timeout=call.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if pump in done:
                pump.result()
                return
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
            if gone in done:
                # The client went away; there is nobody left to answer.
                resp.keep_alive = False
                return
            await resp.end(end_stream(ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")))
        finally:
            # Both must be gone before the connection reads its next request.
            for task in (gone, pump):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task

    @staticmethod
    async def _pump(events: AsyncIterator[JsonObj], resp: Response) -> None:
        try:
            async for event in events:
                await resp.write(envelope(dumps(event)))
            last = end_stream()
        except ConnectError as e:
            last = end_stream(e)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("stream handler failed")
            last = end_stream(ConnectError(Code.INTERNAL, str(e)))
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        await resp.end(last)

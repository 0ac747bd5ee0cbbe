"""The Connect RPC protocol with the JSON codec, as envd speaks it; sans-IO.

Unary calls are JSON POSTs. Server-streaming calls send and receive
*envelopes*: 1 flag byte (0x02 marks the end of the stream), a 4-byte
big-endian length, then a JSON message. A stream ends with an end-stream
envelope holding ``{}`` or ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sbx.sdk._exceptions import SbxConnectionError, ServerError, connect_error
from sbx.sdk._ops import Op, Request, raise_for_status

T = TypeVar("T")
Message = dict[str, Any]

UNARY_CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "application/connect+json"
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
# Matches envd's own limit; a bigger frame means a broken or hostile peer.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
# envd sends keepalives at most this far apart (it caps what clients ask for),
# so a stream that stays silent for a few intervals is dead.
KEEPALIVE_INTERVAL_S = 15
KEEPALIVE_HEADER = "Keepalive-Ping-Interval"
# Silence longer than this on a stream means the connection is dead; it does
# not bound the call (Connect-Timeout-Ms does), so it ignores request_timeout.
STREAM_IDLE_TIMEOUT = 4.0 * KEEPALIVE_INTERVAL_S
_HEADER = struct.Struct(">BI")


def encode_message(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def encode_envelope(message: Mapping[str, Any], flags: int = 0) -> bytes:
    payload = encode_message(message)
    return _HEADER.pack(flags, len(payload)) + payload


def timeout_header(timeout: float | None) -> dict[str, str]:
    """Connect's deadline header; envd kills a started process when it passes."""
    if not timeout:
        return {}
    return {"Connect-Timeout-Ms": str(max(1, round(timeout * 1000)))}


def unary_request(
    procedure: str, message: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Request:
    return Request(
        "POST",
        procedure,
        headers={
            "Content-Type": UNARY_CONTENT_TYPE,
            "Connect-Protocol-Version": "1",
            **(headers or {}),
        },
        content=encode_message(message),
    )


def stream_request(
    procedure: str,
    message: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Request:
    return Request(
        "POST",
        procedure,
        headers={
            "Content-Type": STREAM_CONTENT_TYPE,
            "Connect-Protocol-Version": "1",
            KEEPALIVE_HEADER: str(KEEPALIVE_INTERVAL_S),
            **timeout_header(timeout),
            **(headers or {}),
        },
        content=encode_envelope(message),
        timeout=STREAM_IDLE_TIMEOUT,
    )


def parse_unary(response: httpx.Response) -> Message:
    raise_for_status(response)
    try:
        body = json.loads(response.content) if response.content else {}
    except ValueError as exc:
        raise ServerError("envd answered a unary call with invalid JSON") from exc
    if not isinstance(body, dict):
        raise ServerError("envd answered a unary call with a non-object")
    return body


def unary(
    procedure: str,
    message: Mapping[str, Any],
    result: Callable[[Message], T],
    headers: Mapping[str, str] | None = None,
) -> Op[T]:
    """A unary call; ``result`` maps the answer message to what the caller gets."""

    def parse(response: httpx.Response) -> T:
        return result(parse_unary(response))

    return Op(unary_request(procedure, message, headers), parse)


@dataclass(frozen=True, slots=True)
class Frame:
    flags: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM)


class EnvelopeDecoder:
    """Cuts a byte stream into envelopes, however the bytes were chunked."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        offset = 0
        buf = self._buf
        while len(buf) - offset >= _HEADER.size:
            flags, size = _HEADER.unpack_from(buf, offset)
            if size > self._max_size:
                raise ServerError(f"Connect message of {size} bytes exceeds the limit")
            end = offset + _HEADER.size + size
            if len(buf) < end:
                break
            frames.append(Frame(flags, bytes(buf[offset + _HEADER.size : end])))
            offset = end
        if offset:
            del buf[:offset]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


class StreamReader:
    """Turns the bytes of a server-streaming answer into its messages.

    Raises the mapped SDK error when the stream ends with an error, and
    :meth:`close` complains about a stream cut before its end.
    """

    def __init__(self) -> None:
        self._decoder = EnvelopeDecoder()
        self.ended = False

    def feed(self, data: bytes) -> list[Message]:
        messages: list[Message] = []
        for frame in self._decoder.feed(data):
            if self.ended:
                raise ServerError("Connect stream sent data after its end")
            if frame.flags & FLAG_COMPRESSED:
                raise ServerError("Connect stream sent a compressed message; none was asked for")
            message = _decode(frame.payload)
            if frame.end_stream:
                self.ended = True
                _raise_end_error(message)
            else:
                messages.append(message)
        return messages

    def close(self) -> None:
        if not self.ended:
            raise SbxConnectionError("The stream from the sandbox ended before it was complete")


def _decode(payload: bytes) -> Message:
    if not payload:
        return {}
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise ServerError("Connect stream sent invalid JSON") from exc
    if not isinstance(message, dict):
        raise ServerError("Connect stream sent a non-object message")
    return message


def _raise_end_error(message: Message) -> None:
    error = message.get("error")
    if isinstance(error, dict):
        raise connect_error(str(error.get("code") or "unknown"), str(error.get("message") or ""))

"""Connect envelope framing and stream parsing (sans-IO)."""

from __future__ import annotations

import json
import struct

import pytest

from sbx.sdk import NotFoundError, SbxConnectionError, SbxTimeoutError, ServerError
from sbx.sdk._connect import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    EnvelopeDecoder,
    StreamReader,
    encode_envelope,
    stream_request,
    timeout_header,
    unary_request,
)


def frame(obj: object, flags: int = 0) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


def test_encode_envelope_is_flag_length_json() -> None:
    data = encode_envelope({"a": 1})
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == len(data) - 5
    assert json.loads(data[5:]) == {"a": 1}


def test_encode_envelope_end_stream_flag() -> None:
    assert encode_envelope({}, FLAG_END_STREAM)[0] == FLAG_END_STREAM


def test_decoder_handles_every_split_point() -> None:
    stream = frame({"n": 1}) + frame({"n": 2}) + frame({}, FLAG_END_STREAM)
    for cut in range(len(stream) + 1):
        decoder = EnvelopeDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [json.loads(f.payload) for f in frames] == [{"n": 1}, {"n": 2}, {}]
        assert [f.end_stream for f in frames] == [False, False, True]
        assert decoder.pending == 0


def test_decoder_byte_by_byte() -> None:
    stream = frame({"x": "y" * 300}) * 3
    decoder = EnvelopeDecoder()
    frames = [f for b in stream for f in decoder.feed(bytes([b]))]
    assert len(frames) == 3


def test_decoder_refuses_oversized_frame() -> None:
    with pytest.raises(ServerError, match="exceeds"):
        EnvelopeDecoder(max_size=10).feed(struct.pack(">BI", 0, 11))


def test_reader_yields_messages_and_accepts_clean_end() -> None:
    reader = StreamReader()
    assert reader.feed(frame({"event": {"start": {"pid": 7}}})) == [
        {"event": {"start": {"pid": 7}}}
    ]
    assert reader.feed(frame({}, FLAG_END_STREAM)) == []
    assert reader.ended
    reader.close()


@pytest.mark.parametrize(
    ("code", "error"),
    [("not_found", NotFoundError), ("deadline_exceeded", SbxTimeoutError),
     ("internal", ServerError), ("no_such_code", ServerError)],
)
def test_reader_maps_end_stream_error(code: str, error: type[Exception]) -> None:
    reader = StreamReader()
    end = frame({"error": {"code": code, "message": "boom"}}, FLAG_END_STREAM)
    with pytest.raises(error, match="boom"):
        reader.feed(end)


def test_reader_messages_before_error_in_same_chunk_raise() -> None:
    # The error ends the stream: it must not be lost behind earlier messages.
    reader = StreamReader()
    chunk = frame({"a": 1}) + frame({"error": {"code": "not_found", "message": "x"}}, 2)
    with pytest.raises(NotFoundError):
        reader.feed(chunk)


def test_reader_close_before_end_is_a_connection_error() -> None:
    reader = StreamReader()
    reader.feed(frame({"a": 1}))
    with pytest.raises(SbxConnectionError):
        reader.close()


def test_reader_refuses_compressed_and_invalid_json() -> None:
    with pytest.raises(ServerError, match="compressed"):
        StreamReader().feed(frame({}, FLAG_COMPRESSED))
    bad = struct.pack(">BI", 0, 3) + b"{x}"
    with pytest.raises(ServerError, match="invalid JSON"):
        StreamReader().feed(bad)


def test_reader_refuses_data_after_end() -> None:
    reader = StreamReader()
    with pytest.raises(ServerError, match="after its end"):
        reader.feed(frame({}, FLAG_END_STREAM) + frame({"a": 1}))


def test_stream_request_is_enveloped_with_headers() -> None:
    req = stream_request("/process.Process/Start", {"a": 1}, {"X-Extra": "1"}, timeout=2.5)
    assert req.method == "POST"
    assert req.headers["Content-Type"] == "application/connect+json"
    assert req.headers["Connect-Timeout-Ms"] == "2500"
    assert req.headers["X-Extra"] == "1"
    assert "Keepalive-Ping-Interval" in req.headers
    assert req.content is not None
    assert json.loads(req.content[5:]) == {"a": 1}


def test_unary_request_is_plain_json() -> None:
    req = unary_request("/process.Process/List", {})
    assert req.headers["Content-Type"] == "application/json"
    assert req.content == b"{}"


@pytest.mark.parametrize(
    ("timeout", "header"),
    [(None, {}), (0, {}), (0.0001, {"Connect-Timeout-Ms": "1"}),
     (60, {"Connect-Timeout-Ms": "60000"})],
)
def test_timeout_header(timeout: float | None, header: dict[str, str]) -> None:
    assert timeout_header(timeout) == header

"""Pure parsers: DNS messages, TLS ClientHello, HTTP request heads, NFLOG."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest

from sbx.egress import dnswire as w
from sbx.egress import nflog, sni


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """A real ClientHello, made by OpenSSL through a memory BIO."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- DNS -------------------------------------------------------------------------------------
def test_dns_query_round_trip_and_local_answers() -> None:
    q = w.build_query(0x1234, "Api.Example.COM", w.QTYPE_A)
    parsed = w.parse_query(q)
    assert (parsed.id, parsed.name, parsed.qtype, parsed.rd) == (0x1234, "api.example.com", 1, True)
    nx = w.local_answer(q, parsed, w.RCODE_NXDOMAIN)
    ans = w.parse_answer(nx)
    assert ans.rcode == w.RCODE_NXDOMAIN and ans.addresses == frozenset()
    assert ans.question == "api.example.com"
    ok = w.build_a_answer(q, parsed, ["198.18.0.1", "198.18.0.2"], ttl=42)
    ans = w.parse_answer(ok)
    assert ans.addresses == {"198.18.0.1", "198.18.0.2"} and ans.ttl == 42
    assert w.response_header_id(w.with_id(ok, 7)) == 7


@pytest.mark.parametrize("msg", [
    b"",
    b"\x00" * 11,
    struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # a response
    struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # two questions
    struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # self pointer
    struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x3fabc",  # label past the end
    struct.pack("!HHHHHH", 1, 0x2100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # opcode 4
])
def test_malformed_queries_are_refused(msg: bytes) -> None:
    with pytest.raises(w.DnsFormatError):
        w.parse_query(msg)


# -- TLS / HTTP sniffing -----------------------------------------------------------------------
def test_sni_and_alpn_from_a_real_client_hello() -> None:
    hello = client_hello("api.example.com", ["h2", "http/1.1"])
    got = sni.sniff(hello)
    assert got.kind == sni.Kind.TLS and got.host == "api.example.com"
    assert got.alpn == ("h2", "http/1.1") and not got.ambiguous


def test_client_hello_without_sni_and_in_pieces() -> None:
    hello = client_hello(None)
    assert sni.sniff(hello).host is None
    hello = client_hello("a.example")
    for cut in (1, 4, 5, 40, len(hello) - 1):
        with pytest.raises(sni.NeedMore):
            sni.sniff(hello[:cut])


def test_http_heads() -> None:
    got = sni.sniff(b"GET /x HTTP/1.1\r\nHost: Api.Example.com:80\r\nA: b\r\n\r\n")
    assert (got.kind, got.method, got.target, got.host) == (
        sni.Kind.HTTP, "GET", "/x", "Api.Example.com")
    with pytest.raises(sni.NeedMore):
        sni.sniff(b"GET /x HTTP/1.1\r\nHost: a")
    with pytest.raises(sni.NeedMore):
        sni.sniff(b"GE")
    twice = sni.sniff(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    assert twice.ambiguous
    absolute = sni.sniff(b"GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert absolute.ambiguous
    connect = sni.sniff(b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n")
    assert connect.method == "CONNECT" and connect.host == "b.example"


def test_h2c_preface_and_other_protocols() -> None:
    assert sni.sniff(sni.H2_PREFACE + b"\x00\x00").kind == sni.Kind.H2C
    with pytest.raises(sni.NeedMore):
        sni.sniff(b"PRI * HTTP")
    assert sni.sniff(b"SSH-2.0-OpenSSH_9.2\r\n").kind == sni.Kind.OTHER
    assert sni.sniff(b"\x00\x01binary").kind == sni.Kind.OTHER


# -- NFLOG ---------------------------------------------------------------------------------------
def test_nflog_message_parsing() -> None:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     socket.inet_aton("10.0.0.2"), socket.inet_aton("198.18.0.12"))
    tcp = struct.pack("!HH", 40000, 8080) + b"\0" * 16

    def attr(kind: int, value: bytes) -> bytes:
        n = 4 + len(value)
        return struct.pack("HH", n, kind) + value + b"\0" * ((4 - n % 4) % 4)

    body = struct.pack("BBH", 2, 0, 0) + attr(10, b"sbx d not-allowed \0") + attr(
        4, struct.pack("!I", 7)) + attr(9, ip + tcp)
    msg = struct.pack("IHHII", 16 + len(body), 0x400, 0, 0, 0) + body
    [(text, payload, indev)] = nflog.parse_messages(msg)
    assert nflog.parse_prefix(text) == ("deny", "not-allowed")
    assert nflog.parse_packet(payload) == ("tcp", "198.18.0.12", 8080)
    assert indev == 7
    assert nflog.parse_prefix("other prefix") is None
    assert all(1000 <= g < 32768 for g in nflog.candidate_groups("abc"))

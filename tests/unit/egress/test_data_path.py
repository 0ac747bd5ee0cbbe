"""The data path in one process, over loopback: the byte splice, the HTTP
relay's per-request checks and transforms, and the resolver's answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sbx.egress import dnswire as w
from sbx.egress.dns import Asker, Resolver
from sbx.egress.http_relay import HttpRelay, RelayTarget
from sbx.egress.policy_engine import CompiledPolicy, Ranges, compile_policy
from sbx.egress.splice import Splice
from sbx.shared.audit import AuditEvent
from sbx.shared.policy import NetworkPolicy

OPEN = Ranges(never=(), private=())
SECRET = "Bearer tok-9f8e7d6c5b4a"


def policy(**kw: Any) -> CompiledPolicy:
    return compile_policy(NetworkPolicy.model_validate(kw, strict=False), OPEN)


# -- splice ------------------------------------------------------------------------------------
async def test_splice_moves_bytes_both_ways_and_passes_half_closes() -> None:
    loop = asyncio.get_running_loop()
    app_c, proxy_c = socket.socketpair()
    proxy_u, app_u = socket.socketpair()
    for s in (app_c, app_u):
        s.setblocking(False)
    splice = Splice()
    await splice.start(proxy_c, proxy_u)
    payload = random.randbytes(8 << 20)
    send = asyncio.ensure_future(loop.sock_sendall(app_c, payload))
    got = b""
    while len(got) < len(payload):
        got += await loop.sock_recv(app_u, 1 << 20)
    await send
    assert got == payload
    app_c.shutdown(socket.SHUT_WR)
    assert await loop.sock_recv(app_u, 10) == b""  # the EOF came through
    await loop.sock_sendall(app_u, b"reply after half close")
    assert await loop.sock_recv(app_c, 100) == b"reply after half close"
    app_u.close()
    await asyncio.wait_for(splice.wait(), 5)
    assert splice.bytes_up == len(payload) and splice.bytes_down == 22
    app_c.close()


# -- the HTTP relay --------------------------------------------------------------------------------
class Upstream:
    """A keep-alive HTTP/1.1 server that records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self.ip = f"127.77.{random.randint(1, 254)}.{random.randint(1, 254)}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, self.ip, 80)

    async def _conn(self, r: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = [tuple(x.split(": ", 1)) for x in lines[1:] if x]
                hd = {k.lower(): v for k, v in headers}
                body = b""
                if "content-length" in hd:
                    body = await r.readexactly(int(hd["content-length"]))
                elif hd.get("transfer-encoding") == "chunked":
                    while (size := int((await r.readline()).strip(), 16)) > 0:
                        body += (await r.readexactly(size + 2))[:-2]
                    await r.readline()
                self.seen.append({"method": method, "target": target, "headers": headers,
                                  "body": body})
                if target == "/ws":
                    wr.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")
                    while data := await r.read(100):
                        wr.write(b"echo:" + data)
                    return
                out = json.dumps({"headers": dict(headers), "body": body.decode()}).encode()
                wr.write(b"HTTP/1.1 200 OK\r\nX-Seen: " + json.dumps(dict(headers)).encode()
                         + b"\r\nContent-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
                await wr.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            wr.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    assert up.server is not None
    up.server.close()


async def relay_pair(up: Upstream, pol: CompiledPolicy, binds: bool = True,
                     audit: list[AuditEvent] | None = None
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[None]]:
    """A client connected to a relay that forwards to the upstream."""
    events = audit if audit is not None else []
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())

    async def on_conn(r: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
        accepted.set_result((r, wr))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cr, cw = await asyncio.open_connection("127.0.0.1", port)
    sr, sw = await accepted
    server.close()

    async def bound(_ip: str, _name: str) -> bool:
        return binds

    target = RelayTarget("sbx-unit0001", up.ip, 80, None, lambda: pol, bound, None,
                         events.append)
    task = asyncio.ensure_future(HttpRelay(target, sr, sw).run())
    return cr, cw, task


async def close(cw: asyncio.StreamWriter) -> None:
    cw.close()
    with contextlib.suppress(ConnectionError):
        await cw.wait_closed()


async def exchange(cr: asyncio.StreamReader, cw: asyncio.StreamWriter, raw: bytes
                   ) -> tuple[int, dict[str, str], bytes]:
    cw.write(raw)
    await cw.drain()
    head = await asyncio.wait_for(cr.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    hd = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if x)}
    body = await cr.readexactly(int(hd.get("content-length", "0")))
    return status, hd, body


async def test_transforms_inject_strip_and_mask_echoes(upstream: Upstream) -> None:
    pol = policy(mode="allow-all", transforms=[
        {"domain": "api.test", "inject_headers": {"Authorization": SECRET},
         "strip_headers": ["X-Internal"]}])
    events: list[AuditEvent] = []
    cr, cw, task = await relay_pair(upstream, pol, audit=events)
    status, hd, body = await exchange(cr, cw, (
        b"GET /a?q=" + SECRET.replace(" ", "%20").encode() + b" HTTP/1.1\r\nHost: api.test\r\n"
        b"Authorization: sandbox-own\r\nX-Internal: 1\r\nAccept-Encoding: gzip\r\n\r\n"))
    assert status == 200
    sent = {k.lower(): v for k, v in upstream.seen[-1]["headers"]}
    assert sent["authorization"] == SECRET and "x-internal" not in sent
    assert sent["accept-encoding"] == "identity"
    assert SECRET.encode() not in body and b"tok-9f8e" not in hd["x-seen"].encode()
    assert "sandbox-own" not in json.dumps(sent)
    # The same connection, a second request: still transformed.
    status, _, body = await exchange(cr, cw, b"POST /b HTTP/1.1\r\nHost: api.test\r\n"
                                             b"Content-Length: 5\r\n\r\nhello")
    assert status == 200 and json.loads(body)["body"] == "hello"
    assert dict(upstream.seen[-1]["headers"])["Authorization"] == SECRET
    await close(cw)
    await asyncio.wait_for(task, 5)
    assert [e.path for e in events] == ["/a?q=" + "*" * len(SECRET.replace(" ", "%20")), "/b"]
    assert all(SECRET not in repr(e) for e in events)


@pytest.mark.parametrize("raw,rule", [
    (b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n", "connect"),
    (b"GET http://denied.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", "host-mismatch"),
    (b"GET / HTTP/1.1\r\nHost: api.test\r\nHost: denied.test\r\n\r\n", "bad-request"),
    (b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n", "not-allowed"),
    (b"GET / HTTP/1.0\r\n\r\n", "no-host"),
])
async def test_refused_requests_never_reach_upstream(upstream: Upstream, raw: bytes,
                                                     rule: str) -> None:
    events: list[AuditEvent] = []
    cr, cw, task = await relay_pair(upstream, policy(mode="custom", allow_domains=["api.test"]),
                                    audit=events)
    status, hd, body = await exchange(cr, cw, raw)
    assert status in (400, 403, 421) and hd["x-sbx-egress"] == "denied"
    assert rule.encode() in body
    await asyncio.wait_for(task, 5)
    await close(cw)
    assert upstream.seen == []
    assert events[-1].decision == "deny" and events[-1].rule == rule


async def test_custom_mode_pins_the_host_and_the_address(upstream: Upstream) -> None:
    pol = policy(mode="custom", allow_domains=["api.test", "other.test"])
    cr, cw, task = await relay_pair(upstream, pol)
    assert (await exchange(cr, cw, b"GET /1 HTTP/1.1\r\nHost: api.test\r\n\r\n"))[0] == 200
    # Another allowed name on the same connection would reach api.test's server.
    status, _, _ = await exchange(cr, cw, b"GET /2 HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert status == 421
    await asyncio.wait_for(task, 5)
    await close(cw)
    assert [s["target"] for s in upstream.seen] == ["/1"]
    # An address that does not belong to the name: refused.
    cr, cw, task = await relay_pair(upstream, pol, binds=False)
    status, _, body = await exchange(cr, cw, b"GET /3 HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert status == 403 and b"ip-mismatch" in body
    await asyncio.wait_for(task, 5)
    await close(cw)


async def test_h2c_upgrade_removed_websocket_spliced_and_100_continue(
        upstream: Upstream) -> None:
    pol = policy(mode="custom", allow_domains=["api.test"])
    cr, cw, task = await relay_pair(upstream, pol)
    await exchange(cr, cw, b"GET /u HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, "
                           b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n")
    sent = {k.lower() for k, _ in upstream.seen[-1]["headers"]}
    assert "upgrade" not in sent and "http2-settings" not in sent
    cw.write(b"POST /c HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\n"
             b"Content-Length: 3\r\n\r\n")
    await cw.drain()
    assert (await asyncio.wait_for(cr.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
    status, _, body = await exchange(cr, cw, b"abc")
    assert status == 200 and json.loads(body)["body"] == "abc"
    cw.write(b"GET /ws HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\n\r\n")
    await cw.drain()
    assert (await asyncio.wait_for(cr.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
    cw.write(b"frame")
    await cw.drain()
    assert await asyncio.wait_for(cr.read(100), 5) == b"echo:frame"
    await close(cw)
    await asyncio.wait_for(task, 5)


# -- the resolver --------------------------------------------------------------------------------
class FakeUpstreamDns(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.names: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        q = w.parse_query(data)
        self.names.append(q.name)
        self.transport.sendto(w.build_a_answer(data, q, ["198.18.0.10"], ttl=300), addr)


async def test_resolver_answers_by_policy_and_never_forwards_refused_names() -> None:
    loop = asyncio.get_running_loop()
    fake = FakeUpstreamDns()
    transport, _ = await loop.create_datagram_endpoint(lambda: fake, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    events: list[AuditEvent] = []
    pol = policy(mode="custom", allow_domains=["api.test"])
    resolver = Resolver(lambda ip: Asker("sbx-unit0001", pol) if ip == "10.0.0.2" else None,
                        ("127.0.0.1", port), events.append)
    try:
        ok = await resolver.answer(w.build_query(1, "api.test"), "10.0.0.2", tcp=False)
        assert ok is not None and w.parse_answer(ok).addresses == {"198.18.0.10"}
        assert resolver.book.known("sbx-unit0001", "api.test") == {"198.18.0.10"}
        nx = await resolver.answer(w.build_query(2, "c2VjcmV0.tunnel.test", w.QTYPE_ANY),
                                   "10.0.0.2", tcp=False)
        assert nx is not None and w.parse_answer(nx).rcode == w.RCODE_NXDOMAIN
        v6 = await resolver.answer(w.build_query(3, "api.test", w.QTYPE_AAAA), "10.0.0.2",
                                   tcp=False)
        assert v6 is not None and w.parse_answer(v6).rcode == w.RCODE_NOERROR
        assert await resolver.answer(w.build_query(4, "api.test"), "10.9.9.9", tcp=False) is None
        bad = await resolver.answer(b"\x00\x05garbage", "10.0.0.2", tcp=False)
        assert bad is not None and bad[3] & 0xF == w.RCODE_FORMERR
        assert fake.names == ["api.test"]
        assert await resolver.addresses("sbx-unit0001", "api.test") == {"198.18.0.10"}
        assert [(e.host, e.decision) for e in events] == [
            ("api.test", "allow"), ("c2vjcmv0.tunnel.test", "deny"), (None, "deny")]
        refused = 0
        for i in range(600):
            r = await resolver.answer(w.build_query(i, "x.test"), "10.0.0.2", tcp=False)
            assert r is not None
            refused += w.parse_answer(r).rcode == w.RCODE_REFUSED
        assert refused > 0
    finally:
        transport.close()

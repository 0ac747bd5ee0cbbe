"""The node's DNS resolver for sandboxes (UDP and TCP, one per node).

The host's nftables send every sandbox packet to port 53, whatever its
destination, here. A question is answered by the asking sandbox's policy
(found by its source address, which the firewall pins to its interface):
a refused name gets NXDOMAIN made locally and never reaches the upstream
resolver, so no data leaves through the names a sandbox asks about (DNS
tunnelling). Allowed names are forwarded to the upstream resolver (the
host's, from /etc/resolv.conf, or SBX_EGRESS_UPSTREAM_DNS), and the
addresses in the answer are remembered: the proxy later checks that a
connection allowed by its host name goes to an address of that name.
IPv6 answers are empty: sandboxes have no IPv6 path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbx.egress import dnswire as w
from sbx.egress.policy_engine import CompiledPolicy, decide_dns
from sbx.shared.audit import AuditEvent, AuditSink

log = logging.getLogger(__name__)

MIN_TTL = 30
MAX_TTL = 3600
# A sandbox asking faster than this gets REFUSED: the upstream resolver is
# shared by every sandbox on the node.
RATE_PER_S = 200.0
BURST = 400.0


@dataclass(frozen=True)
class Asker:
    sandbox_id: str
    policy: CompiledPolicy


Lookup = Callable[[str], Asker | None]


def upstream_from_resolv_conf(path: Path = Path("/etc/resolv.conf")) -> tuple[str, int]:
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1], 53
    except OSError:
        pass
    return "127.0.0.1", 53


def parse_upstream(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if sep and host and "]" not in port and host.count(":") == 0:
        return host, int(port)
    return value.strip("[]"), 53


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self) -> None:
        self.tokens = BURST
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.at) * RATE_PER_S)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class AddressBook:
    """Which addresses a name had, per asking sandbox and node-wide, until
    the answer's TTL (bounded) runs out."""

    def __init__(self) -> None:
        self._by_sandbox: dict[tuple[str, str], tuple[frozenset[str], float]] = {}
        self._global: dict[str, tuple[frozenset[str], float]] = {}

    def record(self, sandbox_id: str | None, name: str, addrs: frozenset[str], ttl: int) -> None:
        if not addrs:
            return
        until = time.monotonic() + max(MIN_TTL, min(ttl, MAX_TTL))
        if sandbox_id is not None:
            old = self._by_sandbox.get((sandbox_id, name))
            merged = addrs | old[0] if old and old[1] > time.monotonic() else addrs
            self._by_sandbox[(sandbox_id, name)] = (merged, until)
        self._global[name] = (addrs, until)

    def known(self, sandbox_id: str, name: str) -> frozenset[str]:
        now = time.monotonic()
        out: frozenset[str] = frozenset()
        for entry in (self._by_sandbox.get((sandbox_id, name)), self._global.get(name)):
            if entry and entry[1] > now:
                out |= entry[0]
        return out

    def forget(self, sandbox_id: str) -> None:
        for key in [k for k in self._by_sandbox if k[0] == sandbox_id]:
            del self._by_sandbox[key]

    def prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._by_sandbox.items() if v[1] <= now]:
            del self._by_sandbox[key]
        for name in [k for k, v in self._global.items() if v[1] <= now]:
            del self._global[name]


class Upstream:
    def __init__(self, addr: tuple[str, int], timeout: float = 2.0) -> None:
        self.addr = addr
        self.timeout = timeout
        self.family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET

    async def query(self, msg: bytes, tcp: bool = False) -> bytes:
        """Forward one query under a fresh random ID (and a fresh source
        port for UDP); answer the reply with the caller's ID."""
        orig_id = w.response_header_id(msg)
        qid = secrets.randbelow(65536)
        wire = w.with_id(msg, qid)
        reply = await (self._tcp(wire) if tcp else self._udp(wire, qid))
        if not tcp and w.parse_answer(reply).truncated:
            reply = await self._tcp(wire)
        if w.response_header_id(reply) != qid:
            raise ConnectionError("upstream answered another question")
        return w.with_id(reply, orig_id)

    async def _udp(self, wire: bytes, qid: int) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self.addr)
            for attempt in range(2):
                await loop.sock_sendall(sock, wire)
                end = loop.time() + self.timeout / 2 * (attempt + 1)
                while (left := end - loop.time()) > 0:
                    try:
                        reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), left)
                    except TimeoutError:
                        break
                    if len(reply) >= 2 and struct.unpack_from("!H", reply)[0] == qid:
                        return reply
            raise TimeoutError("upstream resolver did not answer")
        finally:
            sock.close()

    async def _tcp(self, wire: bytes) -> bytes:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*self.addr), self.timeout
        )
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            n = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.timeout))[0]
            return await asyncio.wait_for(reader.readexactly(n), self.timeout)
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.resolver.spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.answer(data, addr[0], tcp=False)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class Resolver:
    def __init__(self, lookup: Lookup, upstream: tuple[str, int], audit: AuditSink) -> None:
        self.lookup = lookup
        self.upstream = Upstream(upstream)
        self.audit = audit
        self.book = AddressBook()
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._buckets: dict[str, _Bucket] = {}
        self._inflight: dict[str, asyncio.Future[w.Answer]] = {}

    async def start(self, port: int = 0) -> int:
        """Listen on UDP and TCP on one port (an ephemeral one by default)."""
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind(("0.0.0.0", port))
                chosen = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("0.0.0.0", chosen))
                tcp.listen(128)
            except OSError as exc:
                udp.close()
                tcp.close()
                last = exc
                if port:
                    break
                continue
            self.port = int(chosen)
            udp.setblocking(False)
            tcp.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
            self._udp = transport
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
            return self.port
        raise OSError(f"cannot bind the sandbox DNS resolver: {last}")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                raw = await asyncio.wait_for(reader.readexactly(2), 10)
                msg = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", raw)[0]), 10)
                reply = await self.answer(msg, peer[0], tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, msg: bytes, source_ip: str, tcp: bool) -> bytes | None:
        asker = self.lookup(source_ip)
        if asker is None:
            # Not a sandbox of this node: no answer at all.
            return None
        try:
            q = w.parse_query(msg)
        except w.DnsFormatError:
            self._audit(asker, None, "deny", "dns-malformed")
            return w.format_error(msg)
        bucket = self._buckets.setdefault(asker.sandbox_id, _Bucket())
        if not bucket.take():
            return w.local_answer(msg, q, w.RCODE_REFUSED)
        decision = decide_dns(asker.policy, q.name)
        if not decision.allow:
            self._audit(asker, q, "deny", decision.rule)
            return w.local_answer(msg, q, w.RCODE_NXDOMAIN)
        if q.qtype == w.QTYPE_AAAA or q.qclass != w.CLASS_IN:
            # No IPv6 path from a sandbox: an empty answer makes clients use
            # IPv4 at once instead of trying an address that cannot work.
            return w.local_answer(msg, q, w.RCODE_NOERROR)
        try:
            reply = await self.upstream.query(msg, tcp=tcp)
            parsed = w.parse_answer(reply)
        except (OSError, TimeoutError, w.DnsFormatError) as exc:
            log.debug("upstream resolver failed for %s: %s", q.name, exc)
            self._audit(asker, q, "allow", f"{decision.rule} (upstream failed)")
            return w.local_answer(msg, q, w.RCODE_SERVFAIL)
        self.book.record(asker.sandbox_id, q.name, parsed.addresses, parsed.ttl)
        self._audit(asker, q, "allow", decision.rule)
        return reply

    def _audit(self, asker: Asker, q: w.Question | None, decision: str, rule: str) -> None:
        self.audit(AuditEvent(
            sandbox_id=asker.sandbox_id, protocol="dns", decision=decision, rule=rule,
            host=q.name if q else None, port=53, method="QUERY",
            path=_qtype_name(q.qtype) if q else None,
        ))

    async def addresses(self, sandbox_id: str, name: str) -> frozenset[str]:
        """The IPv4 addresses of name: those this sandbox was told, or those
        the upstream resolver gives now (one lookup at a time per name)."""
        known = self.book.known(sandbox_id, name)
        if known:
            return known
        fut = self._inflight.get(name)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[name] = fut
            try:
                q = w.build_query(secrets.randbelow(65536), name)
                ans = w.parse_answer(await self.upstream.query(q))
                self.book.record(None, name, ans.addresses, ans.ttl)
                fut.set_result(ans)
            except (OSError, TimeoutError, w.DnsFormatError, ConnectionError) as exc:
                fut.set_result(w.Answer(w.RCODE_SERVFAIL, False, name, frozenset(), 0))
                log.debug("lookup of %s failed: %s", name, exc)
            finally:
                self._inflight.pop(name, None)
        return (await fut).addresses

    def forget(self, sandbox_id: str) -> None:
        self.book.forget(sandbox_id)
        self._buckets.pop(sandbox_id, None)


_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
           33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


def _qtype_name(qtype: int) -> str:
    return _QTYPES.get(qtype, f"TYPE{qtype}")

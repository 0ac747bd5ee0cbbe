"""The transparent proxy for sandbox TCP to ports 80 and 443.

nftables redirects those connections here; the original destination comes
from SO_ORIGINAL_DST and the sandbox from the source address. The first
bytes are read without being consumed (MSG_PEEK) until the TLS ClientHello
or the HTTP request head is complete, then:
- TLS whose server name is allowed and has no transform: the bytes are
  spliced to the original destination untouched (the ClientHello included,
  still unread in the socket);
- TLS to a domain with transforms: intercepted with the sandbox's CA and
  relayed request by request (http_relay), the upstream verified against
  the trust store;
- plain HTTP: relayed request by request, every Host checked;
- anything else (no SNI, h2c, other protocols): decided by address alone.
A refusal resets the connection (or answers 403 for HTTP) at once, and is
audited like every allowed connection."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
from collections import defaultdict
from collections.abc import Callable

from sbx.egress import sni
from sbx.egress.dns import Resolver
from sbx.egress.http_relay import HttpRelay, RelayTarget
from sbx.egress.policy_engine import Decision, decide, normalise_host
from sbx.egress.registry import Flow, Registry, SandboxEgress
from sbx.egress.splice import Splice
from sbx.shared.audit import AuditEvent, AuditSink
from sbx.shared.policy import PolicyMode

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
SNIFF_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
MAX_FLOWS_PER_SANDBOX = 2048


def original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class LocalAddresses:
    """Whether an address is one of this host's own: binding to it works
    only then. Cached briefly, since the answer rarely changes."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[bool, float]] = {}

    def __call__(self, ip: str) -> bool:
        loop = asyncio.get_running_loop()
        hit = self._cache.get(ip)
        if hit is not None and hit[1] > loop.time():
            return hit[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, 0))
                local = True
            except OSError as exc:
                local = exc.errno != errno.EADDRNOTAVAIL
        self._cache[ip] = (local, loop.time() + 10)
        return local


class Proxy:
    def __init__(self, registry: Registry, resolver: Resolver, audit: AuditSink,
                 upstream_tls: ssl.SSLContext,
                 is_local: Callable[[str], bool] | None = None) -> None:
        self.registry = registry
        self.resolver = resolver
        self.audit = audit
        self.upstream_tls = upstream_tls
        self.is_local = is_local or LocalAddresses()
        self.port = 0
        self._sock: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: defaultdict[str, int] = defaultdict(int)

    async def start(self, port: int = 0) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept = asyncio.create_task(self._accept_loop(), name="egress-proxy")
        return self.port

    async def stop(self) -> None:
        if self._accept is not None:
            self._accept.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept
        if self._sock is not None:
            self._sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:
                log.warning("egress proxy accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            task = asyncio.create_task(self._serve(conn, peer[0]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, peer_ip: str) -> None:
        conn.setblocking(False)
        sb = self.registry.by_ip(peer_ip)
        if sb is None:
            reset(conn)
            return
        try:
            ip, port = original_dst(conn)
        except OSError:
            reset(conn)
            return
        if self.is_local(ip):
            # Straight to the proxy's own port, or to the host: never.
            self._deny(sb, conn, "tcp", None, ip, port, "never:host")
            return
        # Counted from accept on, so idle connections that never say what
        # they want cannot exhaust the host's descriptors either.
        if self._open[sb.sandbox_id] >= MAX_FLOWS_PER_SANDBOX:
            self._deny(sb, conn, "tcp", None, ip, port, "too-many-connections")
            return
        self._open[sb.sandbox_id] += 1
        try:
            await self._dispatch(sb, conn, ip, port)
        except Exception:
            log.exception("egress proxy failed on a connection of %s", sb.sandbox_id)
            reset(conn)
        finally:
            self._open[sb.sandbox_id] -= 1
            if self._open[sb.sandbox_id] <= 0:
                del self._open[sb.sandbox_id]

    async def _dispatch(self, sb: SandboxEgress, conn: socket.socket, ip: str, port: int) -> None:
        try:
            seen = await self._peek(conn)
        except TimeoutError:
            # Nothing said yet: a protocol where the server speaks first.
            seen = sni.Sniffed(sni.Kind.OTHER)
        if seen is None:
            conn.close()
            return
        if seen.kind == sni.Kind.HTTP:
            await self._relay(sb, conn, ip, port, None)
            return
        host = normalise_host(seen.host) if seen.kind == sni.Kind.TLS else None
        proto = "tls" if seen.kind == sni.Kind.TLS else seen.kind.value
        d = decide(sb.policy, host, ip, port)
        if d.allow and seen.ambiguous and sb.policy.mode != PolicyMode.ALLOW_ALL:
            d = Decision(False, "sni-ambiguous")
        if d.allow and d.by_domain and host is not None and not await self._binds(sb, ip, host):
            d = Decision(False, "ip-mismatch")
        if not d.allow:
            self._deny(sb, conn, proto, host or seen.host, ip, port, d.rule)
            return
        if host is not None and seen.kind == sni.Kind.TLS and sb.policy.intercepts(host):
            await self._relay(sb, conn, ip, port, host)
            return
        await self._splice(sb, conn, ip, port, host, proto, d, seen.kind == sni.Kind.TLS)

    async def _binds(self, sb: SandboxEgress, ip: str, host: str) -> bool:
        return ip in await self.resolver.addresses(sb.sandbox_id, host)

    # -- first bytes, unconsumed -------------------------------------------------------
    async def _peek(self, conn: socket.socket) -> sni.Sniffed | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SNIFF_TIMEOUT_S
        try:
            while True:
                await _readable(conn, deadline)
                data = conn.recv(sni.MAX_HEAD, socket.MSG_PEEK)
                if not data:
                    return None
                try:
                    return sni.sniff(data)
                except sni.NeedMore as more:
                    if len(data) >= sni.MAX_HEAD:
                        return sni.Sniffed(sni.Kind.OTHER)
                    # Wake only once that many bytes are buffered.
                    want = min(max(more.want, len(data) + 1), sni.MAX_HEAD)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
        finally:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    # -- the three ways on ------------------------------------------------------------
    async def _splice(self, sb: SandboxEgress, conn: socket.socket, ip: str, port: int,
                      host: str | None, proto: str, d: Decision, tls: bool) -> None:
        try:
            upstream = await _connect(ip, port)
        except (OSError, TimeoutError) as exc:
            self._audit(sb, proto, host, ip, port, "allow", f"{d.rule} (upstream: {exc})")
            reset(conn)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        splice = Splice()
        flow = Flow(host, ip, port, passthrough_tls=tls, close=splice.close)
        sb.flows.add(flow)
        try:
            await splice.start(conn, upstream)
            await splice.wait()
        finally:
            sb.flows.discard(flow)
            splice.close(reset=False)
            self._audit(sb, proto, host, ip, port, "allow", d.rule,
                        up=splice.bytes_up, down=splice.bytes_down)

    async def _relay(self, sb: SandboxEgress, conn: socket.socket, ip: str, port: int,
                     tls_host: str | None) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        protocol = asyncio.StreamReaderProtocol(reader)
        ctx = sb.ca.server_context(tls_host) if tls_host else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock=conn, ssl=ctx, ssl_handshake_timeout=10 if ctx else None
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._audit(sb, "https", tls_host, ip, port, "allow", f"intercept failed: {exc}")
            reset(conn)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        target = RelayTarget(
            sandbox_id=sb.sandbox_id, ip=ip, port=port, tls_host=tls_host,
            policy=lambda: sb.policy,
            binds=lambda addr, name: self._binds(sb, addr, name),
            upstream_tls=self.upstream_tls, audit=self.audit,
        )
        relay = HttpRelay(target, reader, writer)
        flow = Flow(tls_host, ip, port, passthrough_tls=False, close=relay.close)
        sb.flows.add(flow)
        try:
            await relay.run()
        finally:
            sb.flows.discard(flow)

    # -- refusals and the log -----------------------------------------------------------
    def _deny(self, sb: SandboxEgress, conn: socket.socket, proto: str, host: str | None,
              ip: str, port: int, rule: str) -> None:
        reset(conn)
        self._audit(sb, proto, host, ip, port, "deny", rule)

    def _audit(self, sb: SandboxEgress, proto: str, host: str | None, ip: str, port: int,
               decision: str, rule: str, up: int = 0, down: int = 0) -> None:
        self.audit(AuditEvent(
            sandbox_id=sb.sandbox_id, protocol=proto, decision=decision, rule=rule,
            host=host, ip=ip, port=port, bytes_up=up, bytes_down=down,
        ))


async def _readable(sock: socket.socket, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
    finally:
        loop.remove_reader(fd)


async def _connect(ip: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), CONNECT_TIMEOUT_S)
    except BaseException:
        sock.close()
        raise
    return sock

"""HTTP/1.1 relayed request by request (h11 on both sides), for plain HTTP
and for intercepted TLS. Every request is checked on its own: its Host
must be the one the connection was allowed for, the method and target
must not ask the upstream to go elsewhere (CONNECT, an absolute URL for
another host, an h2c upgrade), and the domain's transforms are applied.
Responses coming back have every injected value masked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from sbx.egress import transforms as tf
from sbx.egress.guard import (
    MAX_INSPECT,
    Guard,
    audit_body,
    decode_body,
    inspect_request,
    inspect_response,
    is_text,
    readable_accept_encoding,
)
from sbx.egress.policy_engine import CompiledPolicy, Decision, decide, normalise_host
from sbx.egress.sni import strip_port, target_authority
from sbx.egress.splice import abort
from sbx.shared.audit import AuditEvent, AuditSink
from sbx.shared.policy import PolicyMode, Transform

log = logging.getLogger(__name__)

READ = 256 * 1024
IDLE_S = 300.0
CONNECT_S = 10.0


@dataclass
class RelayTarget:
    sandbox_id: str
    ip: str
    port: int
    # The verified host name of an intercepted TLS connection (its SNI);
    # None for plain HTTP.
    tls_host: str | None
    policy: Callable[[], CompiledPolicy]
    # Does this address belong to this name (the resolver's view)?
    binds: Callable[[str, str], Awaitable[bool]]
    upstream_tls: ssl.SSLContext | None
    audit: AuditSink


class Refused(Exception):
    def __init__(self, status: int, rule: str) -> None:
        super().__init__(rule)
        self.status = status
        self.rule = rule


class _Closed(Exception):
    pass


def _header(headers: Any, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


class HttpRelay:
    def __init__(self, target: RelayTarget, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.t = target
        self.creader, self.cwriter = reader, writer
        self.cconn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.ureader: asyncio.StreamReader | None = None
        self.uwriter: asyncio.StreamWriter | None = None
        self.uconn: h11.Connection | None = None
        self.bound_host: str | None = target.tls_host
        self.closed = False

    # -- control from outside (a policy change) -----------------------------------
    def close(self) -> None:
        self.closed = True
        for w in (self.cwriter, self.uwriter):
            if w is not None:
                abort(w.transport)

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while not self.closed:
                try:
                    ev = await self._next(self.cconn, self.creader, IDLE_S)
                except h11.RemoteProtocolError as exc:
                    # A request h11 will not parse (two Host headers, bad
                    # framing...) goes nowhere, and says why.
                    proto = "https" if self.t.tls_host else "http"
                    self._audit(proto, None, "?", "", 400, 0, 0, "deny", "bad-request")
                    await self._refuse(exc.error_status_hint, "bad-request")
                    break
                if not isinstance(ev, h11.Request):
                    break
                if not await self._one(ev):
                    break
                if (self.cconn.our_state is h11.DONE and self.cconn.their_state is h11.DONE
                        and self.uconn is not None and self.uconn.our_state is h11.DONE
                        and self.uconn.their_state is h11.DONE):
                    self.cconn.start_next_cycle()
                    self.uconn.start_next_cycle()
                else:
                    break
        except (h11.ProtocolError, _Closed, ConnectionError, TimeoutError, ssl.SSLError,
                asyncio.IncompleteReadError):
            pass
        finally:
            await self._close_all()

    async def _close_all(self) -> None:
        for w in (self.uwriter, self.cwriter):
            if w is not None:
                w.close()
        for w in (self.uwriter, self.cwriter):
            if w is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 2)

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    timeout: float | None = None) -> Any:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(READ), timeout)
                conn.receive_data(data)
                continue
            return ev

    # -- one request -------------------------------------------------------------------
    async def _one(self, req: h11.Request) -> bool:
        method = req.method.decode("latin-1")
        target = req.target.decode("latin-1")
        proto = "https" if self.t.tls_host else "http"
        try:
            decision, host, transforms = await self._check(req, method, target)
        except Refused as r:
            self._audit(proto, None, method, target, r.status, 0, 0, "deny", r.rule)
            await self._refuse(r.status, r.rule)
            return False
        headers = tf.apply(req.headers.raw_items(), transforms)
        policy = self.t.policy()
        guard = policy.guard
        if policy.mode != PolicyMode.ALLOW_ALL:
            # An h2c upgrade would turn the connection into streams whose
            # hosts this relay cannot check; the server answers in HTTP/1.1.
            headers = _without_h2c_upgrade(headers)
        if self.cconn.they_are_waiting_for_100_continue:
            await self._send_client(h11.InformationalResponse(status_code=100, headers=[]))
        headers = [(n, v) for n, v in headers if n.lower() != b"expect"]
        try:
            await self._ensure_upstream(host)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            rule = f"{decision.rule} (upstream: {type(exc).__name__})"
            self._audit(proto, host, method, target, 502, 0, 0, "allow", rule)
            await self._refuse(502, "upstream unreachable", allowed=True)
            return False
        assert self.uconn is not None
        if guard.inspects:
            return await self._one_guarded(req, method, target, proto, host, decision, headers,
                                           transforms, guard)
        await self._send_up(h11.Request(method=req.method, target=req.target, headers=headers,
                                        http_version=req.http_version))
        masker = tf.Masker(tf.secrets_of(transforms))
        up = asyncio.ensure_future(self._pump_request())
        try:
            status, down, switched = await self._relay_response(masker)
        finally:
            # A response that is over while the request body is not (an early
            # answer) ends the connection: the pump goes too.
            if not up.done():
                up.cancel()
            # wait() never raises: our own cancellation is not swallowed.
            await asyncio.wait([up])
        sent = up.result() if up.done() and not up.cancelled() and up.exception() is None else 0
        self._audit(proto, host, method, target, status, sent, down, "allow", decision.rule)
        if switched:
            await self._switch()
            return False
        return True

    # -- one request under the security policy's guardrails -------------------------------
    async def _one_guarded(self, req: h11.Request, method: str, target: str, proto: str,
                           host: str | None, decision: Decision, headers: tf.Headers,
                           transforms: list[Transform], guard: Guard) -> bool:
        """Like the plain path, but the request body is held (up to
        MAX_INSPECT) and scanned for PII before anything goes upstream, and
        a text response is held and scored for prompt injection before the
        sandbox sees it."""
        body, complete = await self._read_body(MAX_INSPECT)
        findings: dict[str, Any] = {}
        checks = 0
        out_target = req.target
        if guard.pii:
            v = inspect_request(guard, req.target, body if complete else None,
                                _first(headers, b"content-type"),
                                _first(headers, b"content-encoding") not in (None, b"identity"))
            checks += v.checks
            findings.update(v.findings)
            if v.note:
                findings["note"] = v.note
            if v.block:
                kinds = ",".join(sorted(v.findings)) or "uninspectable"
                rule = f"pii:{kinds}"[:120]
                self._audit(proto, host, method, target, 403, 0, 0, "deny", rule,
                            findings=findings, checks=checks,
                            request_body=audit_body(body) if guard.include_bodies else None)
                await self._refuse(403, rule, guardrail=True)
                return False
            out_target = v.target
            if v.body is not None:
                body = v.body
                headers = _with_length(headers, len(body))
        if guard.injection:
            headers = [(n, readable_accept_encoding(v) if n.lower() == b"accept-encoding" else v)
                       for n, v in headers]
        await self._send_up(h11.Request(method=req.method, target=out_target, headers=headers,
                                        http_version=req.http_version))
        masker = tf.Masker(tf.secrets_of(transforms))

        async def send_body() -> int:
            if body:
                await self._send_up(h11.Data(data=body))
            if complete:
                await self._send_up(h11.EndOfMessage())
                return len(body)
            return len(body) + await self._pump_request()

        up = asyncio.ensure_future(send_body())
        try:
            held = await self._relay_response_guarded(masker, guard)
        finally:
            if not up.done():
                up.cancel()
            await asyncio.wait([up])
        sent = up.result() if up.done() and not up.cancelled() and up.exception() is None else 0
        checks += held.checks
        findings.update(held.findings)
        decision_text, rule = "allow", decision.rule
        if held.blocked:
            decision_text, rule = "deny", held.rule
        self._audit(proto, host, method, target, held.status, sent, held.down, decision_text, rule,
                    findings=findings, checks=checks,
                    request_body=audit_body(body) if guard.include_bodies else None,
                    response_body=held.body if guard.include_bodies else None)
        if held.switched:
            await self._switch()
            return False
        return not held.blocked

    async def _read_body(self, limit: int) -> tuple[bytes, bool]:
        """The request body, up to limit: (bytes, whether that is all)."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            ev = await self._next(self.cconn, self.creader, IDLE_S)
            if isinstance(ev, h11.Data):
                parts.append(bytes(ev.data))
                size += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return b"".join(parts), True
            else:
                raise _Closed()
        return b"".join(parts), False

    async def _relay_response_guarded(self, masker: tf.Masker, guard: Guard) -> Held:
        held = Held()
        head = await self._response_head(masker)
        if head is None:
            held.status, held.switched = 101, True
            return held
        held.status = head.status_code
        resp_headers = tf.mask_headers(head.headers.raw_items(), masker)
        ctype = _first(resp_headers, b"content-type")
        if not is_text(ctype) or (ctype or b"").lower().startswith(b"text/event-stream"):
            # Not text, or a stream that never ends: passed as it comes.
            await self._send_client(h11.Response(
                status_code=head.status_code, reason=head.reason, headers=resp_headers,
                http_version=head.http_version))
            held.down = await self._stream_rest(masker)
            return held
        return await self._hold_and_judge(head, resp_headers, masker, guard, held)

    async def _hold_and_judge(self, resp: h11.Response, headers: tf.Headers, masker: tf.Masker,
                              guard: Guard, held: Held) -> Held:
        assert self.uconn is not None and self.ureader is not None
        parts: list[bytes] = []
        size = 0
        complete = False
        trailers: tf.Headers = []
        while size <= MAX_INSPECT:
            ev = await self._next(self.uconn, self.ureader, IDLE_S)
            if isinstance(ev, h11.Data):
                held.down += len(ev.data)
                chunk = masker.feed(bytes(ev.data))
                parts.append(chunk)
                size += len(chunk)
            elif isinstance(ev, h11.EndOfMessage):
                parts.append(masker.flush())
                complete = True
                trailers = tf.mask_headers(ev.headers.raw_items(), masker)
                break
            else:
                raise _Closed()
        body = b"".join(parts)
        encoding = _first(headers, b"content-encoding")
        if guard.include_bodies:
            held.body = audit_body(decode_body(body, encoding) or body)
        if guard.injection:
            v = inspect_response(guard, body, complete, _first(headers, b"content-type"),
                                 encoding)
            held.checks += v.checks
            held.findings = v.findings
            if v.note:
                held.findings["note"] = v.note
            if v.block:
                held.blocked = True
                held.rule = f"injection:{v.score:.2f}"
                held.status = 403
                await self._refuse(403, held.rule, guardrail=True)
                return held
            if v.checks and v.score >= guard.threshold and guard.injection_action == "flag":
                headers = [*headers, (b"x-sbx-injection-score", f"{v.score:.3f}".encode()),
                           (b"x-sbx-injection-signals", ",".join(v.signals).encode())]
        await self._send_client(h11.Response(status_code=resp.status_code, reason=resp.reason,
                                             headers=headers, http_version=resp.http_version))
        if body:
            await self._send_client(h11.Data(data=body))
        if complete:
            await self._send_client(h11.EndOfMessage(headers=trailers))
        else:
            held.down += await self._stream_rest(masker)
        return held

    async def _stream_rest(self, masker: tf.Masker) -> int:
        """The rest of a response, as it comes; answers the bytes read."""
        assert self.uconn is not None and self.ureader is not None
        down = 0
        while True:
            ev = await self._next(self.uconn, self.ureader, IDLE_S)
            if isinstance(ev, h11.Data):
                down += len(ev.data)
                chunk = masker.feed(bytes(ev.data))
                if chunk:
                    await self._send_client(h11.Data(data=chunk))
            elif isinstance(ev, h11.EndOfMessage):
                rest = masker.flush()
                if rest:
                    await self._send_client(h11.Data(data=rest))
                await self._send_client(h11.EndOfMessage(
                    headers=tf.mask_headers(ev.headers.raw_items(), masker)))
                return down
            else:
                raise _Closed()

    async def _check(self, req: h11.Request, method: str,
                     target: str) -> tuple[Decision, str | None, list[Transform]]:
        hosts = _header(req.headers, b"host")
        if len(hosts) > 1:
            raise Refused(400, "host-ambiguous")
        raw_host = hosts[0].decode("latin-1") if hosts else None
        authority = target_authority(target) if method != "CONNECT" else target
        if method == "CONNECT":
            raise Refused(403, "connect")
        if authority is not None and raw_host is not None and (
            strip_port(authority).lower() != strip_port(raw_host).lower()
        ):
            raise Refused(403, "host-mismatch")
        raw = raw_host or authority
        host = normalise_host(strip_port(raw)) if raw else None
        policy = self.t.policy()
        if self.t.tls_host is not None and host != self.t.tls_host:
            raise Refused(421, "host-mismatch")
        if (self.bound_host is not None and host != self.bound_host
                and policy.mode != PolicyMode.ALLOW_ALL):
            raise Refused(421, "host-mismatch")
        decision = decide(policy, host, self.t.ip, self.t.port)
        if not decision.allow:
            raise Refused(403, decision.rule)
        transforms = policy.transforms_for(host)
        # The address must be the name's when the name is what allowed the
        # request, or when secrets are about to be sent to it in clear.
        needs_binding = decision.by_domain or (transforms and self.t.tls_host is None)
        if (needs_binding and host is not None and self.t.tls_host is None
                and not await self.t.binds(self.t.ip, host)):
            raise Refused(403, "ip-mismatch")
        if self.bound_host is None and self.uconn is None:
            self.bound_host = host
        return decision, host, transforms

    async def _ensure_upstream(self, host: str | None) -> None:
        if self.uconn is not None:
            return
        ctx = self.t.upstream_tls
        if self.t.tls_host is not None and ctx is not None:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self.t.ip, self.t.port, ssl=ctx, server_hostname=self.t.tls_host,
            ), CONNECT_S)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.t.ip, self.t.port), CONNECT_S
            )
        self.ureader, self.uwriter = reader, writer
        self.uconn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    async def _pump_request(self) -> int:
        sent = 0
        assert self.uconn is not None
        while True:
            ev = await self._next(self.cconn, self.creader, IDLE_S)
            if isinstance(ev, h11.Data):
                sent += len(ev.data)
                await self._send_up(ev)
            elif isinstance(ev, h11.EndOfMessage):
                await self._send_up(ev)
                return sent
            elif isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                raise _Closed()

    async def _relay_response(self, masker: tf.Masker) -> tuple[int, int, bool]:
        head = await self._response_head(masker)
        if head is None:
            return 101, 0, True
        await self._send_client(h11.Response(
            status_code=head.status_code, reason=head.reason,
            headers=tf.mask_headers(head.headers.raw_items(), masker),
            http_version=head.http_version))
        return head.status_code, await self._stream_rest(masker), False

    async def _response_head(self, masker: tf.Masker) -> h11.Response | None:
        """The upstream's final response head, not yet sent; interim ones
        (but 100) are passed on. None after passing on a 101."""
        assert self.uconn is not None and self.ureader is not None
        while True:
            ev = await self._next(self.uconn, self.ureader, IDLE_S)
            if isinstance(ev, h11.Response):
                return ev
            if not isinstance(ev, h11.InformationalResponse):
                raise _Closed()
            if ev.status_code != 100:
                await self._send_client(h11.InformationalResponse(
                    status_code=ev.status_code, reason=ev.reason,
                    headers=tf.mask_headers(ev.headers.raw_items(), masker)))
            if ev.status_code == 101:
                return None

    async def _switch(self) -> None:
        """After a 101 (WebSocket): raw bytes both ways, leftovers first."""
        assert self.uconn is not None and self.uwriter is not None and self.ureader is not None
        c_left, _ = self.cconn.trailing_data
        u_left, _ = self.uconn.trailing_data
        if c_left:
            self.uwriter.write(c_left)
        if u_left:
            self.cwriter.write(u_left)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(READ):
                    w.write(data)
                    await w.drain()
            finally:
                with contextlib.suppress(Exception):
                    if w.can_write_eof():
                        w.write_eof()
                    else:
                        w.close()

        await asyncio.gather(pipe(self.creader, self.uwriter), pipe(self.ureader, self.cwriter),
                             return_exceptions=True)

    async def _send_client(self, ev: Any) -> None:
        data = self.cconn.send(ev)
        if data:
            self.cwriter.write(data)
            await self.cwriter.drain()

    async def _send_up(self, ev: Any) -> None:
        assert self.uconn is not None and self.uwriter is not None
        data = self.uconn.send(ev)
        if data:
            self.uwriter.write(data)
            await self.uwriter.drain()

    async def _refuse(self, status: int, rule: str, allowed: bool = False,
                      guardrail: bool = False) -> None:
        reason = ("upstream unreachable" if allowed
                  else "refused by the sandbox's security policy" if guardrail
                  else "refused by the sandbox's network policy")
        body = f"sbx egress: {reason} ({rule})\n".encode()
        if self.cconn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.ProtocolError, ConnectionError):
            await self._send_client(h11.Response(status_code=status, headers=[
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"x-sbx-egress", b"error" if allowed else b"denied"),
            ]))
            await self._send_client(h11.Data(data=body))
            await self._send_client(h11.EndOfMessage())

    def _audit(self, proto: str, host: str | None, method: str, target: str, status: int,
               up: int, down: int, decision: str, rule: str,
               findings: dict[str, Any] | None = None, checks: int = 0,
               request_body: str | None = None, response_body: str | None = None) -> None:
        # A brokered value in a URL (echoed into a link, say) stays out of the log.
        secrets = tf.secrets_of(self.t.policy().transforms)
        if secrets:
            target = tf.Masker(secrets).mask_once(target.encode("latin-1")).decode("latin-1")
        self.t.audit(AuditEvent(
            sandbox_id=self.t.sandbox_id, protocol=proto, decision=decision, rule=rule,
            host=host or self.bound_host, ip=self.t.ip, port=self.t.port, method=method,
            path=target, status=status, bytes_up=up, bytes_down=down,
            findings=findings or None, guard_checks=checks,
            request_body=request_body, response_body=response_body,
        ))


@dataclass
class Held:
    """What became of a response under the guardrails."""

    status: int = 0
    down: int = 0
    switched: bool = False
    blocked: bool = False
    rule: str = ""
    checks: int = 0
    findings: dict[str, Any] = field(default_factory=dict)
    body: str | None = None


def _first(headers: tf.Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _with_length(headers: tf.Headers, length: int) -> tf.Headers:
    """Headers for a body that was rewritten: its new length, no chunking."""
    out = [(n, v) for n, v in headers
           if n.lower() not in (b"content-length", b"transfer-encoding")]
    out.append((b"content-length", str(length).encode()))
    return out


def _without_h2c_upgrade(headers: tf.Headers) -> tf.Headers:
    if not any(n.lower() == b"upgrade" and b"h2c" in v.lower() for n, v in headers):
        return headers
    out: tf.Headers = []
    for n, v in headers:
        key = n.lower()
        if key in (b"upgrade", b"http2-settings"):
            continue
        if key == b"connection":
            tokens = [t.strip() for t in v.split(b",")
                      if t.strip().lower() not in (b"upgrade", b"http2-settings")]
            if not tokens:
                continue
            v = b", ".join(tokens)
        out.append((n, v))
    return out

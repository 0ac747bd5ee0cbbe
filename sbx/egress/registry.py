"""The egress state of the node's sandboxes in memory: who a source address
is, its compiled policy, its CA, and its open proxied connections (so a
policy change can end those it no longer allows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sbx.egress.policy_engine import CompiledPolicy, decide
from sbx.egress.tls_ca import SandboxCA


@dataclass(eq=False)
class Flow:
    host: str | None
    ip: str
    port: int
    # TLS spliced without interception: a transform added later for its
    # host needs a new (intercepted) connection.
    passthrough_tls: bool
    close: Callable[[], None]


@dataclass(eq=False)
class SandboxEgress:
    sandbox_id: str
    ip: str
    host_if: str
    policy: CompiledPolicy
    ca: SandboxCA
    flows: set[Flow] = field(default_factory=set)

    def recheck(self) -> int:
        """End the open connections the current policy would not open now
        (or would open differently: a newly intercepted domain). Answers how
        many were ended."""
        ended = 0
        for flow in list(self.flows):
            d = decide(self.policy, flow.host, flow.ip, flow.port)
            now_intercepted = flow.passthrough_tls and self.policy.intercepts(flow.host)
            if not d.allow or now_intercepted:
                self.flows.discard(flow)
                flow.close()
                ended += 1
        return ended


class Registry:
    def __init__(self) -> None:
        self._by_ip: dict[str, SandboxEgress] = {}
        self._by_id: dict[str, SandboxEgress] = {}

    def put(self, sb: SandboxEgress) -> None:
        old = self._by_id.get(sb.sandbox_id)
        if old is not None:
            self._by_ip.pop(old.ip, None)
            sb.flows |= old.flows
        self._by_id[sb.sandbox_id] = sb
        self._by_ip[sb.ip] = sb

    def pop(self, sandbox_id: str) -> SandboxEgress | None:
        sb = self._by_id.pop(sandbox_id, None)
        if sb is not None and self._by_ip.get(sb.ip) is sb:
            del self._by_ip[sb.ip]
        return sb

    def by_ip(self, ip: str) -> SandboxEgress | None:
        return self._by_ip.get(ip)

    def by_id(self, sandbox_id: str) -> SandboxEgress | None:
        return self._by_id.get(sandbox_id)

    def ids(self) -> set[str]:
        return set(self._by_id)

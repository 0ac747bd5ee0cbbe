"""EgressService: the node agent's one handle on egress enforcement.

It runs the node's DNS resolver, transparent proxy and packet-log reader,
keeps each sandbox's compiled policy in memory (by source address, for
them) and in the firewall (per-sandbox nft chains), and changes both
together:

    ports = await egress.start()            # before the base nft table
    await egress.attach(sandbox, policy)    # before the sandbox boots
    await egress.set_policy(id, policy)     # at runtime, atomically
    await egress.detach(id, host_if)        # when it stops; idempotent
    await egress.stop()                     # server shutdown

detach works without start (admin teardown runs with no listeners)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import socket
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sbx.config import Settings
from sbx.egress import trust
from sbx.egress.dns import Asker, Resolver, parse_upstream, upstream_from_resolv_conf
from sbx.egress.nflog import NflogReader, candidate_groups
from sbx.egress.policy_engine import NEVER, PRIVATE, Ranges, compile_policy
from sbx.egress.proxy import Proxy
from sbx.egress.registry import Registry, SandboxEgress
from sbx.egress.tls_ca import SandboxCA, upstream_context
from sbx.node.network import firewall
from sbx.node.proc import run
from sbx.shared.audit import DEFAULT_RETENTION_DAYS, AuditEvent, AuditSink
from sbx.shared.policy import NetworkPolicy
from sbx.shared.security import SecurityPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxNet:
    """Where a sandbox sits on the node's network."""

    sandbox_id: str
    host_if: str
    sandbox_ip: str
    # A root-only host directory for its CA (not visible in the sandbox).
    state_dir: Path

    @property
    def key(self) -> str:
        return self.sandbox_id.removeprefix("sbx-")


def _key(sandbox_id: str) -> str:
    return sandbox_id.removeprefix("sbx-")


async def host_lan() -> list[str]:
    """The IPv4 networks of the host's default-route interface: the LAN the
    host sits on is private to sandboxes unless a CIDR names it."""
    res = await run("ip", "-j", "-4", "route", "show", "default", check=False)
    try:
        routes = json.loads(res.stdout or "[]")
    except ValueError:
        return []
    devs = {r.get("dev") for r in routes if r.get("dev")}
    nets: list[str] = []
    for dev in sorted(devs):
        out = await run("ip", "-j", "-4", "addr", "show", "dev", str(dev), check=False)
        with contextlib.suppress(ValueError):
            for link in json.loads(out.stdout or "[]"):
                for a in link.get("addr_info", []):
                    net = ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
                    nets.append(str(net))
    return nets


class EgressService:
    def __init__(self, settings: Settings, table: str, audit: AuditSink) -> None:
        self.settings = settings
        self.table = table
        self.audit = self._stamped(audit)
        self.registry = Registry()
        upstream = (parse_upstream(settings.egress_upstream_dns)
                    if settings.egress_upstream_dns else upstream_from_resolv_conf())
        self.resolver = Resolver(self._asker, upstream, self.audit)
        self.proxy = Proxy(self.registry, self.resolver, self.audit,
                           upstream_context(settings.egress_upstream_ca))
        self.nflog = NflogReader(self.audit, self._sandbox_of_ifindex)
        self.ranges = Ranges.for_node(settings.subnet)
        self.ports: firewall.EgressPorts | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # The rules last applied per sandbox: an attach that changes nothing
        # in nft (a warm-pool claim keeping the default policy) skips the
        # nft transaction, a process of its own (~30 ms).
        self._applied: dict[str, firewall.SandboxRules] = {}
        self._ifindex: dict[int, str] = {}

    # -- the node's listeners ----------------------------------------------------------
    async def start(self) -> firewall.EgressPorts:
        extra = [c.strip() for c in self.settings.egress_private_extra.split(",") if c.strip()]
        self.ranges = Ranges.for_node(self.settings.subnet, [*await host_lan(), *extra])
        dns_port = await self.resolver.start(self.settings.egress_dns_port)
        proxy_port = await self.proxy.start(self.settings.egress_proxy_port)
        group = self.nflog.bind(candidate_groups(self.settings.node_tag))
        self.ports = firewall.EgressPorts(dns_port, proxy_port, group)
        log.info("egress: resolver on :%d, proxy on :%d, packet log group %s, upstream DNS %s",
                 dns_port, proxy_port, group, self.resolver.upstream.addr)
        return self.ports

    @property
    def never(self) -> list[str]:
        return list(NEVER)

    @property
    def private(self) -> list[str]:
        return [str(n) for n in self.ranges.private] or list(PRIVATE)

    async def stop(self) -> None:
        self.nflog.close()
        await self.proxy.stop()
        await self.resolver.stop()

    # -- sandboxes -------------------------------------------------------------------------
    async def attach(self, net: SandboxNet, policy: NetworkPolicy,
                     security: SecurityPolicy | None = None) -> bool:
        """Enforce policy for the sandbox (idempotent). Answers whether its
        CA is new, i.e. not yet in the sandbox's trust store."""
        if self.ports is None:
            raise RuntimeError("egress service not started")
        async with self._locks[net.sandbox_id]:
            ca, created = await asyncio.to_thread(
                SandboxCA.load_or_create, net.state_dir, net.sandbox_id
            )
            compiled = compile_policy(policy, self.ranges, security)
            await self._apply(net, policy)
            self.registry.put(SandboxEgress(net.sandbox_id, net.sandbox_ip, net.host_if,
                                            compiled, ca))
            self._ifindex.clear()
            return created

    async def set_policy(self, sandbox_id: str, policy: NetworkPolicy) -> bool:
        """Replace a running sandbox's policy: firewall first (one nft
        transaction), then the resolver and proxy, then connections the new
        policy would not open are ended. False: not attached here."""
        if self.ports is None:
            return False
        async with self._locks[sandbox_id]:
            sb = self.registry.by_id(sandbox_id)
            if sb is None:
                return False
            net = SandboxNet(sandbox_id, sb.host_if, sb.ip, sb.ca.directory)
            await self._apply(net, policy)
            # The security policy is the sandbox's own; only the network
            # policy changes at runtime.
            sb.policy = compile_policy(policy, self.ranges, sb.policy.security)
            ended = sb.recheck()
            if ended:
                log.info("egress: policy change of %s ended %d connections", sandbox_id, ended)
            return True

    async def _apply(self, net: SandboxNet, policy: NetworkPolicy) -> None:
        assert self.ports is not None
        rules = self._rules(net, policy)
        if self._applied.get(net.sandbox_id) == rules:
            return
        self._applied.pop(net.sandbox_id, None)
        await firewall.apply_sandbox(self.table, rules, self.ports)
        self._applied[net.sandbox_id] = rules

    def policy_of(self, sandbox_id: str) -> NetworkPolicy | None:
        sb = self.registry.by_id(sandbox_id)
        return sb.policy.source if sb is not None else None

    async def detach(self, sandbox_id: str, host_if: str) -> None:
        async with self._locks[sandbox_id]:
            sb = self.registry.pop(sandbox_id)
            if sb is not None:
                for flow in list(sb.flows):
                    flow.close()
                sb.flows.clear()
            self.resolver.forget(sandbox_id)
            self._applied.pop(sandbox_id, None)
            await firewall.remove_sandbox(self.table, _key(sandbox_id), host_if)
            self._ifindex.clear()
        self._locks.pop(sandbox_id, None)

    def _stamped(self, sink: AuditSink) -> AuditSink:
        """Events leave the node with their sandbox's audit settings on
        them: the store keeps them (or not) without asking the node."""
        def emit(event: AuditEvent) -> None:
            record, days = self.audit_settings(event.sandbox_id)
            sink(dataclasses.replace(event, record=record, retention_days=days))
        return emit

    def audit_settings(self, sandbox_id: str) -> tuple[bool, int]:
        """(record, retention_days) for the sandbox's audit events."""
        sb = self.registry.by_id(sandbox_id)
        if sb is None:
            return True, DEFAULT_RETENTION_DAYS
        return sb.policy.guard.audit, sb.policy.guard.retention_days

    def attached(self) -> set[str]:
        return self.registry.ids()

    async def firewall_ids(self) -> set[str]:
        return {"sbx-" + k for k in await firewall.sandbox_keys(self.table)}

    def trust_init(self, sandbox_id: str) -> dict[str, str]:
        """envd's /init `trust`: the CA, which envd adds to the sandbox's own
        system bundle (no 200 KB bundle sent on every create)."""
        sb = self.registry.by_id(sandbox_id)
        if sb is None:
            raise RuntimeError(f"{sandbox_id} has no egress state")
        return {"pem": sb.ca.cert_pem.decode(), "bundle": trust.SYSTEM_BUNDLE,
                "caFile": trust.CA_FILE}

    def trust_files(self, sandbox_id: str, rootfs: Path) -> dict[str, bytes]:
        sb = self.registry.by_id(sandbox_id)
        if sb is None:
            raise RuntimeError(f"{sandbox_id} has no egress state")
        return trust.files(rootfs, sb.ca.cert_pem)

    # -- lookups for the resolver and the packet log -------------------------------------------
    def _asker(self, ip: str) -> Asker | None:
        sb = self.registry.by_ip(ip)
        return Asker(sb.sandbox_id, sb.policy) if sb is not None else None

    def _sandbox_of_ifindex(self, index: int) -> str | None:
        hit = self._ifindex.get(index)
        if hit is not None:
            return hit
        try:
            name = socket.if_indextoname(index)
        except OSError:
            return None
        for sandbox_id in self.registry.ids():
            sb = self.registry.by_id(sandbox_id)
            if sb is not None and sb.host_if == name:
                self._ifindex[index] = sandbox_id
                return sandbox_id
        return None

    @staticmethod
    def _rules(net: SandboxNet, policy: NetworkPolicy) -> firewall.SandboxRules:
        return firewall.SandboxRules(
            key=net.key, host_if=net.host_if, sandbox_ip=net.sandbox_ip,
            mode=policy.mode.value, cidrs=tuple(policy.allow_cidrs),
        )

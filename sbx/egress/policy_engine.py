"""What a sandbox may reach: one pure function per question (a connection,
a DNS name), over a policy compiled once per change.

The order of the checks is the security model, so it lives in one place:
1. never: IPv6, the node's own sandbox subnet, link-local/metadata,
   loopback, multicast/reserved, the host itself. No rule unlocks these.
2. deny-all refuses the rest.
3. custom: an `allow_cidrs` range allows the address on any port, even a
   private one (it names it).
4. private ranges (RFC 1918, CGNAT, the host's own LAN) are refused unless a
   CIDR named them: an allowed *domain* never unlocks a private address,
   so DNS rebinding cannot turn a public name into an inside address.
5. allow-all allows what is left.
6. custom: a web port (80/443) to a host name matching `allow_domains`;
   the caller then checks that the address really belongs to that name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sbx.egress.guard import NO_GUARD, Guard, compile_guard
from sbx.shared.policy import NetworkPolicy, PolicyMode, Transform
from sbx.shared.security import SecurityPolicy

IPv4Net = ipaddress.IPv4Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

WEB_PORTS = frozenset({80, 443})

# Destinations no policy can open.
NEVER: tuple[str, ...] = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/3",  # multicast, reserved and broadcast
)
# Destinations only an allow_cidrs entry can open.
PRIVATE: tuple[str, ...] = (
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
)


@dataclass(frozen=True)
class Ranges:
    """The node's view of where sandboxes must not go."""

    never: tuple[IPv4Net, ...]
    private: tuple[IPv4Net, ...]

    @classmethod
    def for_node(cls, subnet: str, extra_private: Iterable[str] = ()) -> Ranges:
        never = [ipaddress.IPv4Network(n) for n in (*NEVER, subnet)]
        private = [ipaddress.IPv4Network(n, strict=False) for n in (*PRIVATE, *extra_private)]
        return cls(tuple(never), tuple(private))


@dataclass(frozen=True)
class Decision:
    allow: bool
    # Which rule decided, for the audit log: "never:169.254.0.0/16",
    # "cidr:10.1.0.0/16", "domain:*.example.com", "not-allowed", ...
    rule: str
    # Allowed because of the host name: the address must be one the name
    # resolves to, or a forged SNI/Host would open any address.
    by_domain: bool = False


@dataclass(frozen=True)
class CompiledPolicy:
    mode: PolicyMode
    exact: frozenset[str]
    # "*.example.com" kept as ".example.com"
    suffixes: tuple[str, ...]
    cidrs: tuple[tuple[IPv4Net | ipaddress.IPv6Network, str], ...]
    transforms: tuple[Transform, ...]
    ranges: Ranges
    source: NetworkPolicy = field(compare=False)
    # The seed-002 security policy's guardrails and audit settings.
    guard: Guard = NO_GUARD
    security: SecurityPolicy | None = field(default=None, compare=False)

    def intercepts(self, host: str | None) -> bool:
        """Whether TLS to host is opened by the proxy (transforms to apply,
        or content to inspect) rather than spliced through untouched."""
        return self.guard.inspects or bool(self.transforms_for(host))

    def domain_rule(self, host: str | None) -> str | None:
        """The allow_domains entry that names host, or None."""
        if not host:
            return None
        if host in self.exact:
            return host
        for suffix in self.suffixes:
            if host.endswith(suffix) and len(host) > len(suffix):
                return "*" + suffix
        return None

    def cidr_rule(self, ip: IPAddr) -> str | None:
        for net, text in self.cidrs:
            if ip.version == net.version and ip in net:
                return text
        return None

    def transforms_for(self, host: str | None) -> list[Transform]:
        """Every transform whose domain names host, in policy order."""
        if not host:
            return []
        found = []
        for t in self.transforms:
            d = normalise_host(t.domain)
            if d is None:
                continue
            if d.startswith("*."):
                if host.endswith(d[1:]) and len(host) > len(d) - 1:
                    found.append(t)
            elif host == d:
                found.append(t)
        return found


def normalise_host(value: str | None) -> str | None:
    """Lower-case ASCII host name without a trailing dot; None when the value
    is not a plausible DNS name (IP literals, empty, odd bytes)."""
    if not value:
        return None
    host = value.strip().lower().rstrip(".")
    if not host or len(host) > 253:
        return None
    if host.startswith("*."):
        rest = host[2:]
        return "*." + rest if _is_dns_name(rest) else None
    if not _is_dns_name(host) or is_ip_literal(host):
        return None
    return host


def _is_dns_name(host: str) -> bool:
    labels = host.split(".")
    return all(
        0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    )


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def compile_policy(policy: NetworkPolicy, ranges: Ranges,
                   security: SecurityPolicy | None = None) -> CompiledPolicy:
    exact: set[str] = set()
    suffixes: list[str] = []
    for d in policy.allow_domains:
        n = normalise_host(d)
        if n is None:
            continue
        if n.startswith("*."):
            suffixes.append(n[1:])
        else:
            exact.add(n)
    cidrs = tuple(
        (ipaddress.ip_network(c, strict=False), c) for c in policy.allow_cidrs
    )
    # The security policy's transformation rules broker credentials like
    # the network policy's transforms, after them.
    rules = tuple(security.transformation_rules) if security is not None else ()
    return CompiledPolicy(
        mode=policy.mode, exact=frozenset(exact), suffixes=tuple(suffixes), cidrs=cidrs,
        transforms=tuple(policy.transforms) + rules, ranges=ranges, source=policy,
        guard=compile_guard(security), security=security,
    )


def _in(ip: ipaddress.IPv4Address, nets: Sequence[IPv4Net]) -> IPv4Net | None:
    for net in nets:
        if ip in net:
            return net
    return None


def decide(policy: CompiledPolicy, host: str | None, ip: str | IPAddr, port: int) -> Decision:
    """May this sandbox open a connection to ip:port asking for host (TLS
    SNI or HTTP Host, None when unknown)?"""
    try:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return Decision(False, "bad-address")
    if addr.version != 4:
        return Decision(False, "never:ipv6")
    assert isinstance(addr, ipaddress.IPv4Address)
    never = _in(addr, policy.ranges.never)
    if never is not None:
        return Decision(False, f"never:{never}")
    if policy.mode == PolicyMode.DENY_ALL:
        return Decision(False, "deny-all")
    cidr = policy.cidr_rule(addr)
    if cidr is not None:
        return Decision(True, f"cidr:{cidr}")
    private = _in(addr, policy.ranges.private)
    if private is not None:
        return Decision(False, f"private:{private}")
    if policy.mode == PolicyMode.ALLOW_ALL:
        return Decision(True, "allow-all")
    name = normalise_host(host)
    rule = policy.domain_rule(name)
    if rule is None:
        return Decision(False, "not-allowed" if name else "no-host")
    if port not in WEB_PORTS:
        return Decision(False, "domain-port")
    return Decision(True, f"domain:{rule}", by_domain=True)


def decide_dns(policy: CompiledPolicy, qname: str) -> Decision:
    """May this sandbox have an answer for qname? A refused name is answered
    locally and never reaches the upstream resolver (no DNS tunnel)."""
    name = normalise_host(qname)
    if policy.mode == PolicyMode.DENY_ALL:
        return Decision(False, "deny-all")
    if name is None:
        return Decision(False, "bad-name")
    if name.endswith(".in-addr.arpa") or name.endswith(".ip6.arpa"):
        # Reverse lookups name addresses, not hosts; only allow-all may ask,
        # and never about an address a sandbox may not reach.
        if policy.mode != PolicyMode.ALLOW_ALL:
            return Decision(False, "reverse")
        ip = _reverse_ip(name)
        if ip is None or not decide(policy, None, ip, 443).allow:
            return Decision(False, "reverse")
        return Decision(True, "allow-all")
    if policy.mode == PolicyMode.ALLOW_ALL:
        return Decision(True, "allow-all")
    rule = policy.domain_rule(name)
    if rule is None:
        return Decision(False, "not-allowed")
    return Decision(True, f"domain:{rule}", by_domain=True)


def _reverse_ip(name: str) -> str | None:
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name.removesuffix(".in-addr.arpa").split(".")
    if len(parts) != 4:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts))))
    except ValueError:
        return None

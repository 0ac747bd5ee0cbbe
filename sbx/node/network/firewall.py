"""The host's nftables rules for this node's sandboxes, in one table that
sbx owns (`inet sbx_<tag>`); nothing else on the host is touched, and the
ruleset is never flushed.

The base table (installed at start, replaced atomically):
- guard (prerouting, raw): no IPv6 at all; each sandbox interface jumps to
  its own chain `g_<key>` that drops any source address but the sandbox's,
  so every later decision (and the proxy and resolver, which know a sandbox
  by its source address) can trust it. An unknown interface is dropped.
- input: sandboxes never reach the host itself (API, gateway, SSH...): only
  replies, and connections the nat chain redirected to the egress resolver
  or proxy, pass.
- forward (`from_sandbox`): never the node's subnet (other sandboxes), the
  link-local/metadata range, loopback or multicast; then the sandbox's own
  chain `f_<key>` decides by its policy; an unknown interface is refused.
  Nothing from outside may open a connection into a sandbox.
- nat prerouting: DNS from a sandbox, to whatever address, goes to the
  egress resolver; then the sandbox's `n_<key>` chain redirects TCP 80/443
  to the egress proxy (except where the destination is refused anyway).
- nat postrouting: egress is masqueraded.

Per sandbox: the three chains and one element in each verdict map, added,
replaced and removed in single nft transactions, so a policy change is
atomic. Refusals are `reject`, so they fail fast: TCP gets a reset, UDP an
ICMP port-unreachable (gVisor's netstack turns only that one into an error
on the socket; admin-prohibited is silently ignored and the sender would
wait for its timeout), the rest ICMP admin-prohibited. They and allowed
direct connections are logged to an NFLOG group (rate-limited) for the
audit log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sbx.node.proc import CommandError, run

DNS_VIP = "169.254.53.53"
WEB_PORTS = "{ 80, 443 }"
_LOG_LIMIT = "limit rate 50/second burst 100 packets"
_SB_LOG_LIMIT = "limit rate 20/second burst 40 packets"


@dataclass(frozen=True)
class EgressPorts:
    """Where the node's egress resolver and proxy listen, and the NFLOG
    group its audit reader is bound to (None: no packet log)."""

    dns: int
    proxy: int
    log_group: int | None = None


@dataclass(frozen=True)
class SandboxRules:
    """What the firewall needs to know of one sandbox's policy."""

    key: str  # the sandbox ID without "sbx-": names its chains
    host_if: str
    sandbox_ip: str
    mode: str  # allow-all, deny-all, custom
    cidrs: tuple[str, ...] = ()


def _elements(nets: Iterable[str]) -> str:
    # Overlapping intervals are an error to nft: merge them first.
    v4 = [ipaddress.IPv4Network(n, strict=False) for n in nets]
    return ", ".join(str(n) for n in ipaddress.collapse_addresses(v4))


def _log(group: int | None, decision: str, rule: str, limit: str = _LOG_LIMIT) -> str:
    """A log statement (or nothing without NFLOG); the audit reader parses
    the prefix "sbx <a|d> <rule>" and attributes by input interface."""
    if group is None:
        return ""
    return f'{limit} log prefix "sbx {decision} {rule} " group {group}'


def ruleset(table: str, if_prefix: str, subnet: str, ports: EgressPorts,
            never: Sequence[str], private: Sequence[str]) -> str:
    sb = f'"{if_prefix}*"'
    g = ports.log_group
    never_elems = _elements([*never, subnet])

    def logged(decision: str, rule: str, match: str = "") -> str:
        stmt = _log(g, decision, rule)
        return f"    {match} {stmt}\n" if stmt else ""

    return f"""table inet {table} {{
  set never4 {{
    type ipv4_addr; flags interval;
    elements = {{ {never_elems} }}
  }}
  set private4 {{
    type ipv4_addr; flags interval;
    elements = {{ {_elements(private)} }}
  }}
  map guard_map {{ type ifname : verdict; }}
  map fwd_map {{ type ifname : verdict; }}
  map nat_map {{ type ifname : verdict; }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    meta l4proto udp reject with icmpx port-unreachable
    reject with icmpx admin-prohibited
  }}
  chain guard {{
    type filter hook prerouting priority raw; policy accept;
    iifname {sb} meta nfproto ipv6 drop
    iifname {sb} iifname vmap @guard_map
    iifname {sb} drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname {sb} ct state established,related accept
    iifname {sb} ct status dnat meta l4proto {{ tcp, udp }} th dport {ports.dns} accept
    iifname {sb} ct status dnat tcp dport {ports.proxy} accept
{logged("d", "never:host", f"iifname {sb}")}    iifname {sb} jump refuse
  }}
  chain from_sandbox {{
{logged("d", "never", "ip daddr @never4")}    ip daddr @never4 jump refuse
    iifname vmap @fwd_map
{logged("d", "unknown-sandbox")}    jump refuse
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname {sb} jump from_sandbox
    oifname {sb} ct state established,related accept
    oifname {sb} drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat - 10; policy accept;
    iifname {sb} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{ports.dns}
    iifname {sb} iifname vmap @nat_map
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 10; policy accept;
    ip saddr {subnet} oifname != {sb} masquerade
  }}
}}
"""


def _chains(key: str) -> tuple[str, str, str]:
    return f"g_{key}", f"f_{key}", f"n_{key}"


def sandbox_script(table: str, r: SandboxRules, ports: EgressPorts) -> str:
    """Add or replace one sandbox's chains and map elements (idempotent)."""
    g, f, n = _chains(r.key)
    t = f"inet {table}"
    grp = ports.log_group
    v4 = [c for c in r.cidrs if ":" not in c]
    lines = [f"add chain {t} {c}" for c in (g, f, n)]
    lines += [f"flush chain {t} {c}" for c in (g, f, n)]
    lines.append(f"add rule {t} {g} ip saddr != {r.sandbox_ip} drop")
    # A verdict, not a return: the guard chain drops what no sandbox claims.
    lines.append(f"add rule {t} {g} accept")

    def rule(chain: str, text: str) -> None:
        lines.append(f"add rule {t} {chain} {text}")

    def log(chain: str, match: str, decision: str, name: str) -> None:
        if grp is not None:
            rule(chain, f"{match} {_log(grp, decision, name, _SB_LOG_LIMIT)}".strip())

    redirect = f"tcp dport {WEB_PORTS} redirect to :{ports.proxy}"
    if r.mode == "deny-all":
        log(f, "", "d", "deny-all")
        rule(f, "jump refuse")
    elif r.mode == "allow-all":
        log(f, "ip daddr @private4", "d", "private")
        rule(f, "ip daddr @private4 jump refuse")
        log(f, "ct state new", "a", "allow-all")
        rule(f, "accept")
        rule(n, "fib daddr type local return")
        rule(n, "ip daddr @never4 return")
        rule(n, "ip daddr @private4 return")
        rule(n, redirect)
    else:
        for c in v4:
            log(f, f"ip daddr {c} ct state new", "a", f"cidr:{c}")
            rule(f, f"ip daddr {c} accept")
        log(f, "", "d", "not-allowed")
        rule(f, "jump refuse")
        rule(n, "fib daddr type local return")
        rule(n, "ip daddr @never4 return")
        for c in v4:
            rule(n, f"ip daddr {c} {redirect}")
        rule(n, "ip daddr @private4 return")
        rule(n, redirect)
    lines += [
        f'add element {t} guard_map {{ "{r.host_if}" : jump {g} }}',
        f'add element {t} fwd_map {{ "{r.host_if}" : jump {f} }}',
        f'add element {t} nat_map {{ "{r.host_if}" : jump {n} }}',
    ]
    return "\n".join(lines) + "\n"


def remove_script(table: str, key: str, host_if: str) -> str:
    """Remove one sandbox's chains and elements, whether or not they exist:
    each is added first (a no-op when present), then deleted, in one
    transaction."""
    g, f, n = _chains(key)
    t = f"inet {table}"
    lines = [f"add chain {t} {c}" for c in (g, f, n)]
    for m, c in (("guard_map", g), ("fwd_map", f), ("nat_map", n)):
        lines.append(f'add element {t} {m} {{ "{host_if}" : jump {c} }}')
        lines.append(f'delete element {t} {m} {{ "{host_if}" }}')
    lines += [f"flush chain {t} {c}" for c in (g, f, n)]
    lines += [f"delete chain {t} {c}" for c in (g, f, n)]
    return "\n".join(lines) + "\n"


async def install(table: str, if_prefix: str, subnet: str, ports: EgressPorts,
                  never: Sequence[str], private: Sequence[str]) -> None:
    """(Re)create the table atomically: delete and add in one transaction.
    Sandboxes' own chains go with it; the caller puts them back."""
    script = ruleset(table, if_prefix, subnet, ports, never, private)
    exists = await run("nft", "list", "table", "inet", table, check=False)
    prefix = f"delete table inet {table}\n" if exists.code == 0 else ""
    await run("nft", "-f", "-", input=prefix + script)
    await enable_forwarding()


async def apply_sandbox(table: str, rules: SandboxRules, ports: EgressPorts) -> None:
    await run("nft", "-f", "-", input=sandbox_script(table, rules, ports))


async def remove_sandbox(table: str, key: str, host_if: str) -> None:
    """No error when the sandbox (or the whole table) is already gone."""
    res = await run("nft", "-f", "-", input=remove_script(table, key, host_if), check=False)
    if res.code != 0:
        # Listing the table only now: the usual case costs one nft run.
        exists = await run("nft", "list", "table", "inet", table, check=False)
        if exists.code == 0:
            raise CommandError(("nft", "-f", "-"), res.code, res.stderr)


_CHAIN_RE = re.compile(r"^\s*chain ([gfn])_([a-z0-9]+) \{", re.M)


async def sandbox_keys(table: str) -> set[str]:
    """Keys of the sandboxes that have chains in the table."""
    res = await run("nft", "list", "table", "inet", table, check=False)
    if res.code != 0:
        return set()
    return {m.group(2) for m in _CHAIN_RE.finditer(res.stdout)}


async def remove(table: str) -> None:
    with contextlib.suppress(CommandError):
        await run("nft", "delete", "table", "inet", table)


async def enable_forwarding() -> None:
    # sbx needs IPv4 forwarding for sandbox egress; nothing else is changed.
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1\n")

"""The host's nftables rules for this node's sandboxes, in one table that
sbx owns (`inet sbx_<tag>`); nothing else on the host is touched.

What the table does, for every sandbox interface (prefix match):
- input: sandboxes never reach the host itself (API, gateway, SSH...):
  only replies to connections the host opened pass.
- forward: no sandbox-to-sandbox traffic, no link-local/metadata range, no
  IPv6; nothing from outside may open a connection into a sandbox.
- nat: DNS from a sandbox, to whatever address, goes to the node's resolver;
  egress is masqueraded.
Refusals are `reject` (RST / ICMP unreachable), so they fail fast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sbx.node.proc import CommandError, run

DNS_VIP = "169.254.53.53"


def ruleset(table: str, if_prefix: str, subnet: str, resolver: str | None) -> str:
    sb = f'"{if_prefix}*"'
    dns = ""
    if resolver:
        dns = (
            f"    iifname {sb} udp dport 53 dnat ip to {resolver}\n"
            f"    iifname {sb} tcp dport 53 dnat ip to {resolver}\n"
        )
    return f"""table inet {table} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname {sb} ct state established,related accept
    iifname {sb} reject with icmpx admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname {sb} oifname {sb} reject with icmpx admin-prohibited
    iifname {sb} meta nfproto ipv6 reject with icmpx admin-prohibited
    iifname {sb} ip daddr 169.254.0.0/16 reject with icmpx admin-prohibited
    iifname {sb} accept
    oifname {sb} ct state established,related accept
    oifname {sb} drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat - 10; policy accept;
{dns}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 10; policy accept;
    ip saddr {subnet} oifname != {sb} masquerade
  }}
}}
"""


def host_resolver() -> str | None:
    """The first IPv4 name server of the host, which sandbox DNS is sent to
    until sbx runs a resolver of its own."""
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                if parts[1].startswith("127."):
                    return None
                return parts[1]
    except OSError:
        return None
    return None


async def install(table: str, if_prefix: str, subnet: str) -> None:
    """(Re)create the table atomically: delete and add in one transaction."""
    script = ruleset(table, if_prefix, subnet, host_resolver())
    exists = await run("nft", "list", "table", "inet", table, check=False)
    prefix = f"delete table inet {table}\n" if exists.code == 0 else ""
    await run("nft", "-f", "-", input=prefix + script)
    await enable_forwarding()


async def remove(table: str) -> None:
    with contextlib.suppress(CommandError):
        await run("nft", "delete", "table", "inet", table)


async def enable_forwarding() -> None:
    # sbx needs IPv4 forwarding for sandbox egress; nothing else is changed.
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1\n")

"""Network namespaces and veth pairs, through iproute2."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sbx.node.proc import CommandError, run
from sbx.shared.ipam import Addressing

NETNS_DIR = Path("/var/run/netns")
# The same two MACs on every veth pair (each pair is an L2 segment of its
# own): a sandbox restored from a snapshot into a new netns keeps finding
# its gateway at the MAC its restored netstack remembers.
HOST_MAC = "02:73:62:78:00:01"
SANDBOX_MAC = "02:73:62:78:00:02"


async def create(netns: str, host_if: str, addr: Addressing) -> None:
    """A fresh netns with one veth pair: `eth0` inside, `host_if` outside.
    runsc's netstack takes over eth0 and its address."""
    # addrgenmode none: no IPv6 link-local address, so there is no v6 path
    # between the sandbox and the host at all. The netns is made in the same
    # ip run as the veth (one command fewer on the create path).
    host_batch = "\n".join(
        [
            f"netns add {netns}",
            f"link add {host_if} address {HOST_MAC} type veth "
            f"peer name eth0 address {SANDBOX_MAC} netns {netns}",
            f"link set dev {host_if} addrgenmode none",
            f"addr add {addr.host_ip}/{addr.prefixlen} dev {host_if}",
            f"link set {host_if} up",
            # Static: the first packet to a restored sandbox (envd's
            # readiness probe) does not wait for an ARP round trip.
            f"neigh replace {addr.sandbox_ip} lladdr {SANDBOX_MAC} dev {host_if} nud permanent",
        ]
    )
    ns_batch = "\n".join(
        [
            "link set dev eth0 addrgenmode none",
            f"addr add {addr.sandbox_ip}/{addr.prefixlen} dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add default via {addr.host_ip}",
        ]
    )
    await run("ip", "-batch", "-", input=host_batch + "\n")
    await run("ip", "-n", netns, "-batch", "-", input=ns_batch + "\n")


async def move(netns: str, host_if: str, addr: Addressing) -> None:
    """Give a made netns and its veth another sandbox's addresses (a spare
    runtime taking on a resumed sandbox, which keeps its own address). runsc
    reads them from the netns when it restores, not before."""
    await run("ip", "-batch", "-", input="\n".join([
        f"addr flush dev {host_if}",
        f"neigh flush dev {host_if}",
        f"addr add {addr.host_ip}/{addr.prefixlen} dev {host_if}",
        f"neigh replace {addr.sandbox_ip} lladdr {SANDBOX_MAC} dev {host_if} nud permanent",
    ]) + "\n")
    await run("ip", "-n", netns, "-batch", "-", input="\n".join([
        "addr flush dev eth0",
        f"addr add {addr.sandbox_ip}/{addr.prefixlen} dev eth0",
        f"route replace default via {addr.host_ip}",
    ]) + "\n")


async def destroy(netns: str, host_if: str) -> None:
    """Remove both; either may already be gone."""
    with contextlib.suppress(CommandError):
        await run("ip", "link", "del", host_if)
    if (NETNS_DIR / netns).exists():
        with contextlib.suppress(CommandError):
            await run("ip", "netns", "del", netns)


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def list_links(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))


async def foreign_routes(subnet: str, own_prefix: str) -> list[str]:
    """Routes into subnet on interfaces that are not this node's: another
    server (or anything else) already uses the address pool."""
    import ipaddress

    pool = ipaddress.ip_network(subnet)
    out = (await run("ip", "-4", "-o", "route", "show")).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if not parts or parts[0] == "default" or "dev" not in parts:
            continue
        try:
            net = ipaddress.ip_network(parts[0], strict=False)
        except ValueError:
            continue
        dev = parts[parts.index("dev") + 1]
        if net.overlaps(pool) and not dev.startswith(own_prefix):
            found.append(f"{net} dev {dev}")
    return found

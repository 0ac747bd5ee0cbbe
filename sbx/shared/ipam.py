"""The node's address pool: one /30 per sandbox (pure)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Addressing:
    slot: int
    host_ip: str
    sandbox_ip: str
    prefixlen: int = 30


class AddressPool:
    """Slot 0 stays unused so that the pool's first address never names a
    sandbox; slot N covers addresses [4N, 4N+3] of the pool."""

    def __init__(self, subnet: str) -> None:
        self.network = ipaddress.IPv4Network(subnet)
        self.size = self.network.num_addresses // 4

    def addressing(self, slot: int) -> Addressing:
        if not 1 <= slot < self.size:
            raise ValueError(f"slot {slot} outside the pool")
        base = int(self.network.network_address) + 4 * slot
        return Addressing(
            slot, str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
        )

    # The last slots are the node's own: template snapshots being made and
    # template build steps.
    RESERVED = 8

    def first_free(self, used: set[int]) -> int:
        for slot in range(1, self.size - self.RESERVED):
            if slot not in used:
                return slot
        raise LookupError("address pool exhausted")

    def reserved(self, index: int) -> int:
        return self.size - 1 - (index % self.RESERVED)

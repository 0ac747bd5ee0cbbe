"""The node's address slots: which /30 of its subnet each holder has (a
sandbox, a spare runtime, a template snapshot or build step being made).

In memory only: the store records each sandbox's slot, and the control
plane's reconcile hands the live ones back (`bind`) after a restart,
before any create asks for a new one. The node's own work (template
snapshots, build steps) takes from the reserved slots at the pool's end."""

from __future__ import annotations

import logging
import time

from sbx.shared.ipam import AddressPool

log = logging.getLogger(__name__)


class SlotsExhausted(Exception):
    pass


class Slots:
    def __init__(self, pool: AddressPool) -> None:
        self.pool = pool
        self._held: dict[str, int] = {}
        self._own: dict[str, int] = {}
        # When each reservation was made (monotonic): a fresh one is a create
        # under way, whichever control plane replica asked.
        self._since: dict[str, float] = {}

    def take(self, holder: str) -> int:
        """A free slot for holder (its own again if it has one)."""
        if holder in self._held:
            return self._held[holder]
        try:
            slot = self.pool.first_free(set(self._held.values()))
        except LookupError as exc:
            raise SlotsExhausted("the node's address pool is exhausted") from exc
        self._held[holder] = slot
        self._since[holder] = time.monotonic()
        return slot

    def bind(self, holder: str, slot: int) -> None:
        """holder has slot (known from the store)."""
        other = next((h for h, s in self._held.items() if s == slot and h != holder), None)
        if other is not None:
            # Two records on one address can only come from a store edited by
            # hand; the newer claim wins, and the log says so.
            log.warning("address slot %d of %s is also held by %s", slot, holder, other)
            del self._held[other]
        self._held[holder] = slot

    def release(self, holder: str) -> None:
        self._held.pop(holder, None)
        self._since.pop(holder, None)

    def reserved_within(self, seconds: float) -> set[str]:
        """Holders whose slot was reserved here less than seconds ago."""
        cut = time.monotonic() - seconds
        return {h for h, at in self._since.items() if at > cut and h in self._held}

    def of(self, holder: str) -> int | None:
        return self._held.get(holder)

    def holders(self) -> set[str]:
        return set(self._held)

    def take_own(self, holder: str) -> int:
        """One of the slots at the pool's end, for the node's own sandboxes."""
        used = set(self._own.values())
        for index in range(self.pool.RESERVED):
            slot = self.pool.reserved(index)
            if slot not in used:
                self._own[holder] = slot
                return slot
        raise SlotsExhausted("every address of the node's own is in use (builds, snapshots)")

    def release_own(self, holder: str) -> None:
        self._own.pop(holder, None)

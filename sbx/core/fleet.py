"""The nodes a control plane has, and where a new sandbox goes.

A sandbox's record names its node (`node_id`; None for the one node inside
`sbx server`), and every call about it goes to that node. `Fleet` is how
core finds nodes: `OneNode` for the all-in-one server; a cluster's fleet
(nodes registered in the store, reached over the wire) is in
core/cluster.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sbx.core.errors import Unavailable
from sbx.nodeapi.contract import Node


@dataclass(frozen=True)
class Shape:
    """What a placement weighs: the sandbox's size and its template."""

    vcpu: int
    memory_mib: int
    disk_mib: int
    rootfs: str


class NoRoom(Unavailable):
    """No ready node has room for the sandbox (503)."""

    def __init__(self, message: str = "No node has room for this sandbox now; retry later"
                 ) -> None:
        super().__init__(message, retry_after=5)


class NodeGone(Unavailable):
    """The sandbox's node is lost or unknown: it answers again when the node
    comes back (or the sandbox is deleted)."""


class Fleet(Protocol):
    def node(self, node_id: str | None) -> Node:
        """The node of that id (NodeGone if it is not reachable now)."""
        ...

    async def place(self, shape: Shape) -> str | None:
        """The node a new sandbox of that shape goes to (NoRoom if none)."""
        ...

    def accepts(self, node_id: str | None) -> bool:
        """Whether the node takes sandboxes now (not draining, not lost)."""
        ...

    def address(self, node_id: str | None, slot: int) -> str:
        """A sandbox's address on its node (known also while it is lost)."""
        ...

    def via(self, node_id: str | None) -> tuple[str, str] | None:
        """Where the gateway sends a request for a sandbox of that node: the
        node's service (URL, control key), which forwards it; None: straight
        to the sandbox's address (it is on this host)."""
        ...

    async def members(self) -> dict[str | None, Node]:
        """The nodes to reconcile and resync now (lost ones left out)."""
        ...


class OneNode:
    """The fleet of `sbx server`: its own node, for every sandbox."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def node(self, node_id: str | None) -> Node:
        return self._node

    async def place(self, shape: Shape) -> str | None:
        return None

    def accepts(self, node_id: str | None) -> bool:
        return True

    def address(self, node_id: str | None, slot: int) -> str:
        return self._node.address(slot)

    def via(self, node_id: str | None) -> tuple[str, str] | None:
        return None

    async def members(self) -> dict[str | None, Node]:
        return {None: self._node}

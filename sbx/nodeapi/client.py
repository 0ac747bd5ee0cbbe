"""A node on another host, behind the same interface as one in process:
each call of the contract is one HTTP request to the node's service
(sbx/node/service.py, bodies in wire.py), authenticated by the node's
control key. A node that cannot be reached raises NodeUnreachable (a
StartFailed, so a create that meets it changes nothing)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from sbx.nodeapi import wire
from sbx.nodeapi.contract import (
    OnUp,
    Paused,
    RuntimeState,
    SandboxPlan,
    SpareClaim,
    StartFailed,
)
from sbx.shared.ipam import AddressPool
from sbx.shared.policy import NetworkPolicy
from sbx.shared.security import SecurityPolicy

M = TypeVar("M", bound=BaseModel)

# Long calls (a cold boot, a pause of a large sandbox, a template snapshot)
# answer when done; the connect timeout is what tells a dead node.
TIMEOUT = httpx.Timeout(600.0, connect=3.0)


class NodeError(Exception):
    """The node answered with a failure of its own."""


class NodeUnreachable(StartFailed):
    """The node did not answer."""


class RemoteNode:
    def __init__(self, url: str, control_key: str, subnet: str,
                 client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self._pool = AddressPool(subnet)
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT)
        self._headers = {"Authorization": f"Bearer {control_key}"}

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, name: str, body: BaseModel, answer: type[M]) -> M:
        try:
            resp = await self._client.post(f"{self.url}{wire.PREFIX}/{name}",
                                           content=body.model_dump_json(),
                                           headers={**self._headers,
                                                    "Content-Type": "application/json"})
        except httpx.TransportError as exc:
            raise NodeUnreachable(f"node {self.url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            _raise(resp.status_code, resp.content)
        return answer.model_validate_json(resp.content)

    # -- address slots -----------------------------------------------------------
    async def reserve_slot(self, holder: str) -> int:
        return (await self._call("reserve_slot", wire.Holder(holder=holder), wire.Slot)).slot

    async def release_slot(self, holder: str) -> None:
        await self._call("release_slot", wire.Holder(holder=holder), wire.Done)

    def address(self, slot: int) -> str:
        return self._pool.addressing(slot).sandbox_ip

    # -- sandboxes -----------------------------------------------------------------
    async def start(self, plan: SandboxPlan, on_up: OnUp | None = None) -> bool:
        try:
            async with self._client.stream(
                    "POST", f"{self.url}{wire.PREFIX}/start",
                    content=wire.PlanBody.of(plan).model_dump_json(),
                    headers={**self._headers, "Content-Type": "application/json"}) as resp:
                if resp.status_code != 200:
                    _raise(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if "up" in event:
                        if on_up is not None:
                            await on_up(bool(event["up"]))
                    elif "done" in event:
                        return bool(event["done"])
                    else:
                        _raise(409, json.dumps(event).encode())
        except httpx.TransportError as exc:
            raise NodeUnreachable(f"node {self.url} unreachable: {exc}") from exc
        raise StartFailed(f"node {self.url} ended the start without an answer")

    async def adopt(self, plan: SandboxPlan, pool_token: str) -> None:
        await self._call("adopt", wire.AdoptBody(plan=wire.PlanBody.of(plan),
                                                 pool_token=pool_token), wire.Done)

    async def pause(self, sandbox_id: str, slot: int, envd_token: str) -> Paused:
        answer = await self._call("pause", wire.PauseBody(
            sandbox_id=sandbox_id, slot=slot, envd_token=envd_token), wire.Size)
        return Paused(answer.size)

    async def resume(self, plan: SandboxPlan) -> None:
        await self._call("resume", wire.PlanBody.of(plan), wire.Done)

    async def _on(self, name: str, sandbox_id: str) -> None:
        await self._call(name, wire.SandboxRef(sandbox_id=sandbox_id), wire.Done)

    async def discard_spent(self, sandbox_id: str) -> None:
        await self._on("discard_spent", sandbox_id)

    async def stop(self, sandbox_id: str) -> None:
        await self._on("stop", sandbox_id)

    async def forget(self, sandbox_id: str) -> None:
        await self._on("forget", sandbox_id)

    async def unfreeze(self, sandbox_id: str) -> None:
        await self._on("unfreeze", sandbox_id)

    async def drop_snapshot(self, sandbox_id: str) -> None:
        await self._on("drop_snapshot", sandbox_id)

    async def runtime_state(self, sandbox_id: str) -> RuntimeState:
        answer = await self._call("runtime_state", wire.SandboxRef(sandbox_id=sandbox_id),
                                  wire.State)
        return RuntimeState(answer.state)

    async def is_alive(self, sandbox_id: str, slot: int) -> bool:
        return (await self._call("is_alive", wire.AliveQuery(sandbox_id=sandbox_id, slot=slot),
                                 wire.Flag)).value

    async def snapshot_sealed(self, sandbox_id: str) -> bool:
        return (await self._call("snapshot_sealed", wire.SandboxRef(sandbox_id=sandbox_id),
                                 wire.Flag)).value

    async def reconcile(self, keep: Mapping[str, int | None],
                        in_flight: Collection[str] = ()) -> set[str]:
        answer = await self._call("reconcile", wire.ReconcileBody(
            keep=dict(keep), in_flight=sorted(in_flight)), wire.Ids)
        return set(answer.ids)

    # -- spares and templates -----------------------------------------------------
    async def take_spare(self, rootfs: Path, vcpu: int, memory_mib: int,
                         disk_mib: int) -> SpareClaim | None:
        answer = await self._call("take_spare", wire.Shape(
            rootfs=str(rootfs), vcpu=vcpu, memory_mib=memory_mib, disk_mib=disk_mib),
            wire.MaybeClaim)
        return SpareClaim(answer.claim.id, answer.claim.slot) if answer.claim else None

    async def put_back(self, claim: SpareClaim) -> None:
        await self._call("put_back", wire.Claim(id=claim.id, slot=claim.slot), wire.Done)

    async def want_spares(self, rootfs: Path, vcpu: int, memory_mib: int, disk_mib: int) -> None:
        await self._call("want_spares", wire.Shape(
            rootfs=str(rootfs), vcpu=vcpu, memory_mib=memory_mib, disk_mib=disk_mib), wire.Done)

    async def forget_template(self, path: Path) -> None:
        await self._call("forget_template", wire.TemplatePath(path=str(path)), wire.Done)

    async def prepare_template(self, rootfs: Path, vcpu: int, memory_mib: int,
                               ready_s: float = 60.0, strict: bool = False) -> bool:
        answer = await self._call("prepare_template", wire.PrepareBody(
            rootfs=str(rootfs), vcpu=vcpu, memory_mib=memory_mib, ready_s=ready_s,
            strict=strict), wire.Flag)
        return answer.value

    # -- egress ---------------------------------------------------------------------
    async def set_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._call("set_policy", wire.PolicyBody(sandbox_id=sandbox_id, policy=policy),
                         wire.Done)

    async def sync_policy(self, sandbox_id: str, slot: int, policy: NetworkPolicy,
                          security: SecurityPolicy | None, envd_token: str,
                          rootfs: Path) -> bool:
        return (await self._call("sync_policy", wire.SyncBody(
            sandbox_id=sandbox_id, slot=slot, policy=policy, security=security,
            envd_token=envd_token, rootfs=str(rootfs)), wire.Flag)).value


def _raise(status: int, content: bytes) -> None:
    kind, message = "node_error", f"HTTP {status}"
    try:
        data: Any = json.loads(content)
        error = data.get("error", data) if isinstance(data, dict) else {}
        kind = str(error.get("kind", kind))
        message = str(error.get("message", message))
    except (ValueError, AttributeError):
        pass
    if kind == "start_failed":
        raise StartFailed(message)
    raise NodeError(message)

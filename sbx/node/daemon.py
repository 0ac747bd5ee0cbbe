"""`sbx node`: the privileged agent of one host in a cluster.

It builds (or updates) the base template's rootfs on its host, sets the
host up (runtime, nftables, egress resolver and proxy), joins the control
plane with a join token, serves the node interface for it
(node/service.py) with the control key it was given, heartbeats with
what it has ready (template snapshots, spare runtimes: placement prefers
such a node), and sends its sandboxes' egress audit events to the control
plane in batches. A restarted node joins again under the same id and
adopts the sandboxes it still runs (the control plane's reconcile tells it
which). A revoked token ends it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sbx.config import Settings
from sbx.node import rootfs
from sbx.node.agent import NodeAgent
from sbx.node.service import SandboxForwarder, node_app
from sbx.shared.audit import AuditEvent

log = logging.getLogger(__name__)

HEARTBEAT_S = 3.0
AUDIT_FLUSH_S = 0.5
AUDIT_MAX_QUEUE = 50_000


class Refused(Exception):
    """The control plane refused the node (wrong or revoked join token)."""


@dataclass(frozen=True)
class NodeOptions:
    node_id: str
    control_plane: str
    join_token: str
    listen_host: str
    listen_port: int
    # The URL the control plane reaches this node at.
    advertise_url: str
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None


def capacity(settings: Settings, opts: NodeOptions) -> tuple[int, int, int]:
    """(vCPUs, memory MiB, disk MiB) the node offers: the host's, or the
    operator's figures (several nodes on one test host share it)."""
    vcpu = opts.vcpu or os.cpu_count() or 1
    memory = opts.memory_mib
    if memory is None:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    disk = opts.disk_mib or shutil.disk_usage(settings.data_dir).total // (1024 * 1024)
    return vcpu, memory or 1024, disk


class NodeDaemon:
    def __init__(self, settings: Settings, opts: NodeOptions) -> None:
        self.settings = settings
        self.opts = opts
        self.agent = NodeAgent(settings, audit=self._audit)
        self._client = httpx.AsyncClient(base_url=opts.control_plane.rstrip("/"), timeout=10.0)
        self._node_key: str | None = None
        self._events: list[AuditEvent] = []
        self._dropped = 0
        self._wake = asyncio.Event()

    def _audit(self, event: AuditEvent) -> None:
        if len(self._events) >= AUDIT_MAX_QUEUE:
            self._dropped += 1
            return
        self._events.append(event)

    async def run(self) -> None:
        base = self.settings.templates_dir / "base" / "rootfs"
        await rootfs.ensure_base(base, lambda line: log.info("[template] %s", line))
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.agent.setup()
        control_key = await self._register()
        app = node_app(self.agent, control_key, self.locate)
        server = uvicorn.Server(uvicorn.Config(
            app, host=self.opts.listen_host,
            port=self.opts.listen_port, log_level="warning", access_log=False, lifespan="off"))
        serving = asyncio.create_task(server.serve(), name="node-api")
        # Ready (the first heartbeat) only once it listens (uvicorn's
        # Server tells that by a flag only, no event to wait on).
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        tasks = [serving,
                 asyncio.create_task(self._heartbeats(), name="heartbeat"),
                 asyncio.create_task(self._audit_flush(), name="audit"),
                 asyncio.create_task(self._prewarm(base), name="prewarm")]
        try:
            done, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            server.should_exit = True
            for task in tasks[1:]:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self._flush()
            if isinstance(app, SandboxForwarder):
                await app.aclose()
            await self.agent.close()
            await self._client.aclose()

    async def _register(self) -> str:
        vcpu, memory, disk = capacity(self.settings, self.opts)
        body = {"node_id": self.opts.node_id, "url": self.opts.advertise_url,
                "subnet": self.settings.subnet, "vcpu_total": vcpu,
                "memory_mib_total": memory, "disk_mib_total": disk}
        for attempt in range(60):
            try:
                resp = await self._client.post(
                    "/internal/nodes/register", json=body,
                    headers={"Authorization": f"Bearer {self.opts.join_token}"})
            except httpx.TransportError as exc:
                log.warning("control plane %s unreachable (%s); retrying",
                            self.opts.control_plane, exc)
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                continue
            if resp.status_code in (401, 403):
                raise Refused(f"the control plane refused this node: {resp.text}")
            resp.raise_for_status()
            creds = resp.json()
            self._node_key = str(creds["node_key"])
            log.info("node %s joined %s (%d vCPU, %d MiB, %d MiB disk)", self.opts.node_id,
                     self.opts.control_plane, vcpu, memory, disk)
            return str(creds["control_key"])
        raise Refused(f"the control plane {self.opts.control_plane} did not answer")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._node_key}"}

    async def _heartbeats(self) -> None:
        while True:
            try:
                resp = await self._client.post(
                    f"/internal/nodes/{self.opts.node_id}/heartbeat",
                    json={"info": self.info()}, headers=self._auth())
                if resp.status_code in (401, 403):
                    raise Refused(f"the control plane refused this node: {resp.text}")
            except httpx.TransportError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    def locate(self, sandbox_id: str) -> str | None:
        """The sandbox's address here, if it holds a slot here."""
        slot = self.agent.slots.of(sandbox_id)
        return self.agent.address(slot) if slot is not None else None

    def info(self) -> dict[str, Any]:
        """What placement may prefer this node for."""
        snaps = sorted({str(p.parent.parent / "rootfs") for p in
                        self.settings.templates_dir.glob("*/snapshots/c*-m*")})
        spares = [[str(s.key.rootfs), s.key.vcpu, s.key.memory_mib]
                  for s in self.agent.runtimes.ready]
        return {"template_snapshots": snaps, "spares": spares}

    async def _audit_flush(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_FLUSH_S)
            try:
                await self._flush()
            except Exception as exc:
                log.warning("sending the egress audit failed (%s); will retry", exc)

    async def _flush(self) -> None:
        while self._events:
            batch, self._events = self._events[:1000], self._events[1000:]
            if self._dropped:
                log.warning("egress audit queue was full: %d events dropped", self._dropped)
                self._dropped = 0
            body = {"events": [
                {**dataclasses.asdict(e), "at": e.at.isoformat()} for e in batch]}
            try:
                resp = await self._client.post(f"/internal/nodes/{self.opts.node_id}/audit",
                                               json=body, headers=self._auth())
                resp.raise_for_status()
            except Exception:
                self._events = batch + self._events
                raise

    async def _prewarm(self, base: Path) -> None:
        """Template snapshots of the usual sizes and a spare runtime of the
        first, as `sbx server` makes at its start."""
        for size in self.settings.prewarm_snapshots:
            vcpu, _, memory = size.partition("x")
            await self.agent.prepare_template(base, int(vcpu), int(memory))
        if self.settings.prewarm_snapshots:
            vcpu, _, memory = self.settings.prewarm_snapshots[0].partition("x")
            await self.agent.want_spares(base, int(vcpu), int(memory),
                                         self.settings.default_disk_mib)

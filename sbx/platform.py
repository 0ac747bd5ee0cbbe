"""The composition root: store, node(s), sandbox service, and their
background duties (template build, timeouts, reconciliation). The API and
the gateway are built on top of it.

Two shapes: `sbx server` (one node, the agent, in this process) and
`sbx api` (a cluster's control plane: nodes registered in the store,
reached over the wire, no root needed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sbx.config import Settings
from sbx.core import accounts, metering, templates, wallet_guard
from sbx.core.audit import AuditWriter
from sbx.core.cluster import Cluster
from sbx.core.egress_control import EgressControl
from sbx.core.errors import Unavailable
from sbx.core.fleet import Fleet, OneNode
from sbx.core.pool import WarmPool
from sbx.core.sandboxes import SandboxService
from sbx.core.template_builds import TemplateBuilds
from sbx.node import interpreter_rootfs
from sbx.node.agent import NodeAgent
from sbx.store import audit as audit_repo
from sbx.store import leases, repo
from sbx.store.db import Database
from sbx.templates_build.builder import Builder
from sbx.templates_build.layers import LayerStore

log = logging.getLogger(__name__)

DEFAULT_ORG = "default"


class Platform:
    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None,
                 cluster: bool = False) -> None:
        self.settings = settings
        self.db = Database(settings.db_url)
        self.audit = AuditWriter(self.db)
        self.agent: NodeAgent | None = None
        self.cluster: Cluster | None = None
        fleet: Fleet
        if cluster:
            self.cluster = fleet = Cluster(self.db, settings)
        else:
            self.agent = NodeAgent(settings, audit=self.audit.submit)
            fleet = OneNode(self.agent)
        self.fleet = fleet
        self.sandboxes = SandboxService(self.db, fleet, settings, sole=not cluster)
        self.egress = EgressControl(self.db, self.sandboxes)
        self.pool = WarmPool(self.db, self.sandboxes, settings)
        layers = LayerStore(settings.data_dir / "layers")
        self.templates = TemplateBuilds(
            self.db, fleet, Builder(self.agent, layers) if self.agent is not None else None,
            layers, settings)
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.progress = progress or (lambda line: log.info("%s", line))
        self._tasks: list[asyncio.Task[None]] = []
        self.bootstrap_key: str | None = None
        # Names this process in the store's leases (a cluster's replicas).
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.db.migrate()
        await self.bootstrap()
        await self.pool.ensure_org()
        self.audit.start()
        if self.agent is not None:
            await self.agent.setup()
        if self.cluster is not None:
            await self.cluster.refresh()
        # The nft table was rebuilt: running sandboxes get their policies back
        # before anything else (until then their traffic is refused).
        await self.egress.resync()
        await self.sandboxes.reconcile()
        await self.templates.recover()
        s = self.settings
        duties: list[tuple[str, Callable[[], object], float]] = [
            ("timeouts", self.sandboxes.expire_due, s.timeout_check_interval_s),
            ("reconcile", self.sandboxes.reconcile, s.reconcile_interval_s),
            ("egress-resync", self.egress.resync, s.reconcile_interval_s),
            ("audit-retention", self._purge_audit, s.audit_purge_interval_s),
            ("metering", self.meter, s.meter_interval_s),
            # Template versions no sandbox needs any more lose their files.
            ("template-versions", self.templates.retire_unused, s.reconcile_interval_s),
        ]
        self._tasks = [
            asyncio.create_task(self._prepare(), name="prepare"),
            *([asyncio.create_task(self.cluster.run(), name="cluster")] if self.cluster else []),
            *(asyncio.create_task(self._loop(name, duty, interval), name=name)
              for name, duty, interval in duties),
        ]

    def check_ready(self) -> None:
        """Creates need the runtime: 503 until the base template is there
        (a first start builds it), and for good if that failed."""
        if self.failure:
            raise Unavailable(f"The runtime is unavailable: {self.failure}")
        if not self.ready.is_set():
            raise Unavailable("The runtime is not ready yet: sbx is preparing the base template",
                              retry_after=10)

    async def bootstrap(self) -> None:
        """First start: a default organisation and an admin key of it
        (its own API and the admin API), written to DATA_DIR/api-key (0600)
        so that the operator can read it again."""
        async with self.db.transaction() as s:
            if await repo.first_org(s) is not None:
                return
            await accounts.create_org(s, DEFAULT_ORG)
            key = await accounts.create_key(s, DEFAULT_ORG, role="admin")
        path = self.settings.data_dir / "api-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.chmod(path, 0o600)
        self.bootstrap_key = key

    async def _prepare(self) -> None:
        try:
            base = await templates.ensure_base(self.db, self.settings, self.progress,
                                               build=self.agent is not None)
        except Exception as exc:
            self.failure = f"building the base template failed: {exc}"
            log.exception("template build failed")
            return
        self.ready.set()
        if self.agent is None:
            # A cluster's nodes build their own template snapshots and spares;
            # one replica at a time fills the warm pool.
            await self._loop("warm-pool", self.pool.fill, self.settings.reconcile_interval_s)
            return
        # Snapshots of the usual sizes, so that first creates are fast too.
        for size in self.settings.prewarm_snapshots:
            vcpu, _, memory = size.partition("x")
            await self.agent.prepare_template(Path(base.rootfs), int(vcpu), int(memory))
        # A spare runtime of the first size, until creates ask for others.
        if self.settings.prewarm_snapshots:
            vcpu, _, memory = self.settings.prewarm_snapshots[0].partition("x")
            await self.agent.want_spares(Path(base.rootfs), int(vcpu), int(memory), base.disk_mib)
        if self.settings.code_interpreter:
            await self._prepare_code_interpreter(self.agent)
        # Then the warm pool, restored from those snapshots; it runs on.
        await self.pool.run()

    async def _prepare_code_interpreter(self, agent: NodeAgent) -> None:
        """The template and its snapshot of its own size (`sbx server` only:
        a cluster's nodes do not build it yet). A failure leaves the server
        serving every other template (creates of this one say it is
        unknown); the reason is logged."""
        t0 = time.monotonic()
        path = self.settings.templates_dir / templates.CODE_INTERPRETER / "rootfs"
        try:
            await interpreter_rootfs.ensure(path, self.progress)
            # Its disk holds the kernels' packages beside the user's files.
            tpl = await templates.register_built_in(
                self.db, templates.CODE_INTERPRETER, path,
                max(self.settings.default_disk_mib, 4096), interpreter_rootfs.RUN_CONFIG)
            await agent.prepare_template(path, tpl.vcpu, tpl.memory_mib,
                                         ready_s=interpreter_rootfs.READY_TIMEOUT_S)
        except Exception:
            log.exception("the %s template could not be made", templates.CODE_INTERPRETER)
            return
        log.info("%s template ready in %.1f s", templates.CODE_INTERPRETER, time.monotonic() - t0)

    async def meter(self) -> None:
        """Charge what ran since the last pass, then act on empty wallets."""
        skip = [self.sandboxes.pool_org] if self.sandboxes.pool_org else []
        await metering.meter(self.db, skip)
        await wallet_guard.enforce(self.db, self.sandboxes)

    async def _purge_audit(self) -> None:
        removed = await audit_repo.purge_expired(self.db)
        if removed:
            log.info("audit retention: %d entries past their retention removed", removed)

    async def _loop(self, name: str, duty: Callable[[], object], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not await self._leads(name, interval):
                continue
            try:
                result = duty()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("background duty failed")

    async def _leads(self, duty: str, interval: float) -> bool:
        """Whether this process does the duty now. With replicas (a
        cluster), one does each, by a lease in the store renewed at every
        round; another takes it over once a holder that died lets it expire."""
        if self.cluster is None:
            return True
        ttl = timedelta(seconds=max(10.0, 3 * interval))
        try:
            return await leases.acquire(self.db, duty, self.instance, ttl)
        except Exception:
            log.exception("taking the lease of %s failed", duty)
            return False

    async def stop(self) -> None:
        """Stop the server's own work. Sandboxes keep running: a restarted
        server picks them up again."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.templates.stop()
        await self.sandboxes.stop_expiring()
        if self.agent is not None:
            await self.agent.close()
        if self.cluster is not None:
            await self.cluster.close()
            with contextlib.suppress(Exception):
                for name in await leases.names(self.db, self.instance):
                    await leases.release(self.db, name, self.instance)
        await self.audit.stop()
        await self.db.close()

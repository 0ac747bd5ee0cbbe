"""The sandbox service: the rules of creating, reading, timing out and
deleting sandboxes, over the store and a node (sbx/nodeapi/contract.py). Every API surface
calls this one service, so a sandbox made on one surface reads the same on
the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from sbx.config import Settings
from sbx.core import billing, limits
from sbx.core.errors import Conflict, FieldError, InvalidRequest, NotFound, Unavailable
from sbx.core.fleet import Fleet, NodeGone, Shape
from sbx.nodeapi.contract import Node, OnUp, RuntimeState, SandboxPlan, SpareClaim, StartFailed
from sbx.shared import ids
from sbx.shared.lifecycle import LIVE, SandboxState
from sbx.shared.policy import NetworkPolicy, default_policy
from sbx.shared.security import stored_security
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import Sandbox, Template

log = logging.getLogger(__name__)
S = SandboxState

# With control plane replicas: a create, pause or resume still unfinished
# after this is one whose replica died (none takes anywhere near as long).
STALE_S = 600.0


@dataclass
class CreateSpec:
    template: str
    vcpu: int | None = None
    memory_mib: int | None = None
    timeout_s: int | None = 300
    auto_pause: bool = False
    network_policy: NetworkPolicy = field(default_factory=default_policy)
    env_vars: dict[str, str] = field(default_factory=dict)
    # Which surface made it ("v1", "sandboxes", "e2b"): it decides how the
    # sandbox reads after its end (seed 002 shows `killed`, E2B a 404).
    surface: str = "v1"
    metadata: dict[str, str] = field(default_factory=dict)
    on_timeout: str = "kill"
    security: dict[str, Any] | None = None
    guardrails: bool = False
    # Seed 002 refuses a session longer than the tier allows; seed 000's
    # timeout_min is bounded by the seed itself.
    check_session: bool = False
    # Which request field names the template, for the error of an unknown one.
    template_field: str = "template_name"


class SandboxService:
    def __init__(self, db: Database, fleet: Fleet, settings: Settings,
                 sole: bool = True) -> None:
        """sole: this process is the only control plane (`sbx server`), so a
        transition it is not making itself is one a crash cut short. With
        replicas (`sbx api`), another one may be making it: only a
        transition left unfinished for STALE_S is recovered."""
        self.db = db
        self.fleet = fleet
        self.sole = sole
        self.settings = settings
        self._org_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sandbox_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Told of every sandbox about to stop running (the gateway drops its
        # cached route at once, so no new connection reaches it).
        self.on_leaving: list[Callable[[str], None]] = []
        # Creates in flight: the reconciler must not take their resources.
        self._starting: set[str] = set()
        # The warm pool's organisation (set by the platform; None: no pool).
        self.pool_org: str | None = None
        # Told when a pooled sandbox was taken (the pool refills).
        self.on_claimed: list[Callable[[], None]] = []
        # Timeouts being acted on: one slow pause must not hold up the others.
        self._expiring: dict[str, asyncio.Task[None]] = {}

    # -- create ----------------------------------------------------------------
    async def create(self, org_id: str, spec: CreateSpec) -> Sandbox:
        async with self.db.session() as s:
            tpl = await repo.template_by_name(s, spec.template, org_id)
        if tpl is None or tpl.status != "ready":
            raise InvalidRequest(
                [FieldError(spec.template_field, f"unknown template {spec.template!r}")]
            )
        vcpu, memory = spec.vcpu or tpl.vcpu, spec.memory_mib or tpl.memory_mib
        node_id = await self.fleet.place(Shape(vcpu, memory, tpl.disk_mib, tpl.rootfs))
        node = self.fleet.node(node_id)
        # A sandbox created ahead for this shape, when there is one: the
        # new sandbox takes its id and address (see spare_runtimes).
        spare = await node.take_spare(Path(tpl.rootfs), vcpu, memory, tpl.disk_mib)
        sandbox_id = spare.id if spare is not None else ids.sandbox_id()
        self._starting.add(sandbox_id)
        try:
            return await self._create(org_id, sandbox_id, tpl, spec, node_id, spare)
        finally:
            self._starting.discard(sandbox_id)

    def node_of(self, row: Sandbox) -> Node:
        """The node that holds the sandbox (NodeGone if it is lost)."""
        return self.fleet.node(row.node_id)

    async def _create(
        self, org_id: str, sandbox_id: str, tpl: Template, spec: CreateSpec,
        node_id: str | None, spare: SpareClaim | None = None,
    ) -> Sandbox:
        t0 = time.perf_counter()
        node = self.fleet.node(node_id)
        try:
            admitted = await self._admit(org_id, sandbox_id, tpl, spec, node_id, spare)
        except BaseException:
            if spare is not None:
                await asyncio.shield(node.put_back(spare))
            else:
                await asyncio.shield(node.release_slot(sandbox_id))
            raise
        if isinstance(admitted, tuple):
            if spare is not None:
                await asyncio.shield(node.put_back(spare))
            pool_token, pooled = admitted
            return await self._adopt(pooled, tpl, pool_token)
        row = admitted
        t1 = time.perf_counter()
        running: list[Sandbox] = []

        async def up(from_snapshot: bool) -> None:
            # Written while envd comes up: nobody knows the id before the
            # 201, and a start that fails after this still deletes the row.
            async with self.db.transaction() as s:
                await repo.set_state(s, sandbox_id, S.STARTING, S.RUNNING,
                                     "from template snapshot" if from_snapshot else "cold boot")
                fresh = await repo.sandbox(s, sandbox_id)
                assert fresh is not None
                if fresh.timeout_s:
                    fresh.timeout_at = repo.now() + timedelta(seconds=fresh.timeout_s)
            running[:] = [fresh]

        try:
            await self._boot(row, tpl, up)
        except StartFailed as exc:
            raise Unavailable(f"The sandbox failed to start: {exc}") from exc
        log.debug("create %s: admitted in %.0f ms, running after %.0f ms", sandbox_id,
                  (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)
        return running[0]

    async def _admit(self, org_id: str, sandbox_id: str, tpl: Template, spec: CreateSpec,
                     node_id: str | None, spare: SpareClaim | None
                     ) -> Sandbox | tuple[str, Sandbox]:
        """The create's checks and its row (state starting), or a pooled
        sandbox taken for it (the pool's token and the row)."""
        # The count and the insert happen under one lock per organisation
        # (in this process, and in the store across processes), so
        # concurrent creates never pass the limit together.
        async with self._org_locks[org_id], self.db.transaction() as s:
            org = await repo.lock_org(s, org_id)
            assert org is not None
            tier = await limits.tier_of(s, org)
            want = limits.template_request(
                tpl, spec.vcpu, spec.memory_mib, spec.timeout_s, spec.guardrails
            )
            limits.check_size(tier, want, spec.check_session)
            await billing.check_wallets(s, org, want.guardrails)
            await limits.check_concurrency(s, org, tier)
            await limits.take_create_slot(s, org, tier)
            taken = await self._take_pooled(s, org_id, tpl, spec)
            if taken is not None:
                return taken
            return await self._insert(s, org_id, sandbox_id, tpl, spec, node_id,
                                      slot=spare.slot if spare is not None else None)

    async def _insert(self, s: AsyncSession, org_id: str, sandbox_id: str, tpl: Template,
                      spec: CreateSpec, node_id: str | None, detail: str | None = None,
                      slot: int | None = None) -> Sandbox:
        """A new row in state starting on node_id, with a free address slot
        of that node or the one given (a spare runtime's)."""
        if slot is None:
            slot = await self.fleet.node(node_id).reserve_slot(sandbox_id)
        row = Sandbox(
            id=sandbox_id, org_id=org_id, template_id=tpl.id, state=S.STARTING,
            vcpu=spec.vcpu or tpl.vcpu, memory_mib=spec.memory_mib or tpl.memory_mib,
            disk_mib=tpl.disk_mib, timeout_at=None, ip_slot=slot, created_at=repo.now(),
            rootfs=tpl.rootfs, node_id=node_id,
            **_owned(spec),
        )
        s.add(row)
        repo.add_event(s, sandbox_id, None, S.STARTING, detail)
        return row

    async def _boot(self, row: Sandbox, tpl: Template, on_up: OnUp) -> None:
        """Start the row's sandbox (on_up marks it running). A failure
        (StartFailed, or the caller going away) leaves nothing: the row goes
        with the resources."""
        try:
            await asyncio.shield(self.node_of(row).start(self._plan(row, tpl), on_up))
        except (StartFailed, asyncio.CancelledError):
            await self._forget(row.id)
            raise

    # -- the warm pool ------------------------------------------------------------
    async def _take_pooled(self, s: AsyncSession, org_id: str, tpl: Template, spec: CreateSpec
                           ) -> tuple[str, Sandbox] | None:
        """In the create's transaction: a pooled sandbox of this template and
        size becomes the caller's row (its own tokens, env, policy, running);
        answers the pool's token, which envd still holds."""
        if self.pool_org is None or org_id == self.pool_org:
            return None
        vcpu, memory = spec.vcpu or tpl.vcpu, spec.memory_mib or tpl.memory_mib
        for row in await repo.pooled(s, self.pool_org, tpl.id, vcpu, memory, [S.POOLED],
                                     to_claim=True):
            if row.id in self._starting:
                continue
            pool_token = row.envd_token
            created = repo.now()
            row.org_id = org_id
            for name, value in _owned(spec).items():
                setattr(row, name, value)
            row.created_at = created
            # Running at once (one transaction less): nobody knows the id
            # before the 201, which comes only once envd has the identity;
            # a failed adoption deletes the row.
            row.state = S.RUNNING
            if spec.timeout_s:
                row.timeout_at = created + timedelta(seconds=spec.timeout_s)
            repo.add_event(s, row.id, S.POOLED, S.RUNNING, "from warm pool")
            self._starting.add(row.id)
            return pool_token, row
        return None

    async def _adopt(self, row: Sandbox, tpl: Template, pool_token: str) -> Sandbox:
        sandbox_id = row.id
        try:
            try:
                await asyncio.shield(self.node_of(row).adopt(self._plan(row, tpl), pool_token))
            except Exception as exc:
                await asyncio.shield(self.node_of(row).stop(sandbox_id))
                await self._forget(sandbox_id)
                raise Unavailable(f"The sandbox failed to start: {exc}") from exc
            return row
        finally:
            self._starting.discard(sandbox_id)
            for listener in self.on_claimed:
                listener()

    def _leaving(self, sandbox_id: str) -> None:
        for listener in self.on_leaving:
            listener(sandbox_id)

    def _plan(self, row: Sandbox, tpl: Template) -> SandboxPlan:
        surface = (row.extra or {}).get("surface")
        return SandboxPlan(
            id=row.id, rootfs=Path(row.rootfs or tpl.rootfs), slot=row.ip_slot or 0,
            vcpu=row.vcpu,
            memory_mib=row.memory_mib, disk_mib=row.disk_mib, env=row.env_vars,
            envd_token=row.envd_token,
            network_policy=NetworkPolicy.model_validate(row.network_policy, strict=False),
            security=stored_security((row.extra or {}).get("security")),
            # E2B's sandboxes run commands as `user` (home /home/user) unless
            # told otherwise; code written for them expects it.
            init={"defaultUser": "user"} if surface == "e2b" else None,
        )

    async def _forget(self, sandbox_id: str) -> None:
        async with self.db.transaction() as s:
            row = await repo.sandbox(s, sandbox_id)
            state: str = S.STARTING
            if row is not None:
                # Running already, when the start failed after on_up.
                state = row.state
                await s.delete(row)
            repo.add_event(s, sandbox_id, state, S.DELETED, "failed to start")

    # -- read ------------------------------------------------------------------
    async def get(self, org_id: str | None, sandbox_id: str) -> Sandbox:
        async with self.db.session() as s:
            row = await repo.sandbox(s, sandbox_id)
        if row is None or (org_id is not None and row.org_id != org_id):
            raise NotFound(f"Sandbox {sandbox_id} not found")
        return row

    async def list(
        self, org_id: str, states: Sequence[str] | None = None
    ) -> Sequence[Sandbox]:
        async with self.db.session() as s:
            return await repo.sandboxes(s, org_id, states)

    def address(self, row: Sandbox) -> str:
        assert row.ip_slot is not None
        return self.fleet.address(row.node_id, row.ip_slot)

    # -- change ----------------------------------------------------------------
    async def set_timeout(self, org_id: str | None, sandbox_id: str, seconds: int) -> Sandbox:
        async with self._sandbox_locks[sandbox_id]:
            row = await self.get(org_id, sandbox_id)
            if row.state not in LIVE or row.state == S.DELETING:
                raise Conflict(f"Sandbox {sandbox_id} is {row.state}")
            async with self.db.transaction() as s:
                fresh = await repo.sandbox(s, sandbox_id)
                assert fresh is not None
                fresh.timeout_s = seconds or None
                running = fresh.state in (S.RUNNING, S.STARTING)
                fresh.timeout_at = (
                    repo.now() + timedelta(seconds=seconds) if seconds and running else None
                )
                repo.add_event(s, sandbox_id, fresh.state, fresh.state, f"timeout={seconds}s")
            return fresh

    async def delete(
        self, org_id: str | None, sandbox_id: str, final: SandboxState = S.DELETED,
        reason: str | None = None, only_if_lost: bool = False,
    ) -> Sandbox:
        """only_if_lost: the reconciler's delete, done only if, under the
        sandbox's lock, it is still meant to run and its runtime does not
        (a pause may have ended it in between, rightly)."""
        async with self._sandbox_locks[sandbox_id]:
            row = await self.get(org_id, sandbox_id)
            if row.state in (S.DELETED, S.KILLED):
                return row
            if only_if_lost and (
                row.state not in (S.RUNNING, S.DELETING, S.POOLED)
                or await self.node_of(row).runtime_state(sandbox_id) == RuntimeState.RUNNING
            ):
                return row
            if row.state == S.STARTING:
                raise Conflict(f"Sandbox {sandbox_id} is still starting")
            try:
                node: Node | None = self.node_of(row)
            except NodeGone:
                # Deleted all the same: the record goes now, and the node
                # removes what it still holds when it is back (reconcile).
                node = None
            if row.state != S.DELETING:
                self._leaving(sandbox_id)
                async with self.db.transaction() as s:
                    if not await repo.set_state(s, sandbox_id, row.state, S.DELETING, reason):
                        raise Conflict(f"Sandbox {sandbox_id} changed state; retry")
            if node is not None:
                await asyncio.shield(node.forget(sandbox_id))
            async with self.db.transaction() as s:
                await repo.set_state(s, sandbox_id, S.DELETING, final, reason)
                fresh = await repo.sandbox(s, sandbox_id)
            assert fresh is not None
            self._sandbox_locks.pop(sandbox_id, None)
            return fresh

    # -- snapshots ----------------------------------------------------------------
    async def pause(self, org_id: str | None, sandbox_id: str, reason: str | None = None
                    ) -> Sandbox:
        """running → snapshotting → paused: memory, processes and disk in a
        sealed snapshot; no CPU, RAM, runsc process or netns left on the host."""
        async with self._sandbox_locks[sandbox_id]:
            row = await self.get(org_id, sandbox_id)
            if row.state == S.PAUSED:
                raise Conflict(f"Sandbox {sandbox_id} is already paused")
            if row.state != S.RUNNING:
                raise Conflict(f"Sandbox {sandbox_id} is {row.state}; only a running one pauses")
            node = self.node_of(row)  # before any write: a lost node changes nothing
            self._leaving(sandbox_id)
            async with self.db.transaction() as s:
                if not await repo.set_state(s, sandbox_id, S.RUNNING, S.SNAPSHOTTING, reason):
                    raise Conflict(f"Sandbox {sandbox_id} changed state; retry")
            try:
                snap = await asyncio.shield(
                    node.pause(sandbox_id, row.ip_slot or 0, row.envd_token)
                )
            except Exception as exc:
                # The agent unfroze it: the sandbox runs on as before.
                async with self.db.transaction() as s:
                    await repo.set_state(s, sandbox_id, S.SNAPSHOTTING, S.RUNNING,
                                         f"pause failed: {exc}")
                raise Unavailable(f"Pausing sandbox {sandbox_id} failed: {exc}") from exc
            async with self.db.transaction() as s:
                await repo.set_state(s, sandbox_id, S.SNAPSHOTTING, S.PAUSED,
                                     f"snapshot {snap.size} bytes")
                fresh = await repo.sandbox(s, sandbox_id)
                assert fresh is not None
                # A paused sandbox has no timeout running.
                fresh.timeout_at = None
            return fresh

    async def resume(self, org_id: str | None, sandbox_id: str,
                     timeout_s: int | None = None) -> tuple[Sandbox, bool]:
        """paused → unpausing → running, same id, tokens, env, policy and
        address. Answers the sandbox and whether it was resumed (False: it
        was running already). In a cluster, a sandbox whose node no longer
        takes sandboxes (draining, lost) resumes on another one (its
        snapshot is on storage every node reads), at an address there."""
        async with self._sandbox_locks[sandbox_id]:
            async with self.db.session() as s:
                row = await repo.sandbox(s, sandbox_id)
            moved = await self._move_if_needed(row) if row is not None and \
                row.state == S.PAUSED else None
            async with self.db.transaction() as s:
                # One transaction for every check (a resume is timed to the ms).
                row = await repo.sandbox(s, sandbox_id)
                if row is None or (org_id is not None and row.org_id != org_id):
                    raise NotFound(f"Sandbox {sandbox_id} not found")
                if row.state == S.RUNNING:
                    return row, False
                if row.state != S.PAUSED:
                    raise Conflict(
                        f"Sandbox {sandbox_id} is {row.state}; only a paused one resumes")
                tpl = await repo.template_by_id(s, row.template_id)
                if tpl is None:
                    raise Unavailable(f"template {row.template_id} of {sandbox_id} is gone")
                org = await repo.org_by_id(s, row.org_id)
                assert org is not None
                # An empty enforced wallet paused it, or would at once.
                try:
                    await billing.check_wallets(s, org, guardrails=False)
                    if moved is not None:
                        row.node_id, row.ip_slot = moved
                    node = self.node_of(row)
                except BaseException:
                    if moved is not None:
                        await asyncio.shield(
                            self.fleet.node(moved[0]).release_slot(sandbox_id))
                    raise
                if not await repo.set_state(s, sandbox_id, S.PAUSED, S.UNPAUSING,
                                            f"on node {moved[0]}" if moved else None):
                    raise Conflict(f"Sandbox {sandbox_id} changed state; retry")
                plan = self._plan(row, tpl)
            try:
                await asyncio.shield(node.resume(plan))
            except (StartFailed, Exception) as exc:
                async with self.db.transaction() as s:
                    await repo.set_state(s, sandbox_id, S.UNPAUSING, S.PAUSED,
                                         f"resume failed: {exc}")
                raise Unavailable(f"Resuming sandbox {sandbox_id} failed: {exc}") from exc
            async with self.db.transaction() as s:
                await repo.set_state(s, sandbox_id, S.UNPAUSING, S.RUNNING)
                fresh = await repo.sandbox(s, sandbox_id)
                assert fresh is not None
                if (fresh.extra or {}).get("paused_for"):
                    fresh.extra = {k: v for k, v in fresh.extra.items() if k != "paused_for"}
                if timeout_s is not None:
                    fresh.timeout_s = timeout_s or None
                if fresh.timeout_s:
                    fresh.timeout_at = repo.now() + timedelta(seconds=fresh.timeout_s)
            await self.node_of(fresh).discard_spent(sandbox_id)
            return fresh, True

    async def _move_if_needed(self, row: Sandbox) -> tuple[str | None, int] | None:
        """(node, slot) a paused sandbox resumes on when its own node takes
        no sandboxes now; None: it stays where it is."""
        if self.fleet.accepts(row.node_id):
            return None
        node_id = await self.fleet.place(Shape(row.vcpu, row.memory_mib, row.disk_mib,
                                               row.rootfs or ""))
        slot = await self.fleet.node(node_id).reserve_slot(row.id)
        with contextlib.suppress(Exception):
            # Its old node (if it answers) lets the address go; else its
            # reconcile does, once the record names another node.
            await self.fleet.node(row.node_id).release_slot(row.id)
        log.info("sandbox %s resumes on node %s (its node %s takes no sandboxes)", row.id,
                 node_id, row.node_id)
        return node_id, slot

    # -- background duties -------------------------------------------------------
    async def expire_due(self) -> None:
        """Every sandbox whose timeout has passed is paused (auto_pause,
        on_timeout=pause) or killed, each in its own task so that a slow
        snapshot does not delay the kill of another sandbox."""
        async with self.db.session() as s:
            due = await repo.due_for_timeout(s, repo.now(), [S.RUNNING])
        for sandbox_id in due:
            if sandbox_id in self._expiring:
                continue
            task = asyncio.create_task(self._expire(sandbox_id), name=f"expire-{sandbox_id}")
            self._expiring[sandbox_id] = task
            task.add_done_callback(self._expired)

    def _expired(self, task: asyncio.Task[None]) -> None:
        self._expiring.pop(task.get_name().removeprefix("expire-"), None)

    async def _expire(self, sandbox_id: str) -> None:
        try:
            row = await self.get(None, sandbox_id)
            if row.auto_pause:
                await self.pause(None, sandbox_id, "timeout")
            else:
                final = S.KILLED if row.extra.get("surface") != "v1" else S.DELETED
                await self.delete(None, sandbox_id, final, "timeout")
        except Conflict:
            pass  # a user call got there first
        except Exception:
            log.exception("timeout of %s failed", sandbox_id)

    async def stop_expiring(self) -> None:
        """Server shutdown: in-flight timeouts finish (their agent work is
        shielded) so nothing is left half done."""
        tasks = list(self._expiring.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile(self) -> None:
        """Make the host and the store agree: resources of no live sandbox
        are removed; a live sandbox whose runtime is gone is marked."""
        async with self.db.session() as s:
            rows = await repo.sandboxes(s, None, LIVE)
            stale = await self._stale(s, rows)
        in_flight = set(self._starting)
        busy = {k for k, lock in self._sandbox_locks.items() if lock.locked()}
        for r in rows:
            if r.id not in busy and r.id in stale and r.state in (S.SNAPSHOTTING, S.UNPAUSING):
                try:
                    await self._recover(r)
                except Exception:
                    # Its node is lost or failed: the next pass tries again.
                    log.exception("recovering %s failed", r.id)
        async with self.db.session() as s:
            rows = await repo.sandboxes(s, None, LIVE)
        members = await self.fleet.members()
        # A sandbox left starting by a dead server never got its 201.
        for r in rows:
            # (_starting as it is now: a create that began during this pass
            # has its row starting and is no leftover.)
            if r.state == S.STARTING and r.id not in self._starting and r.id in stale and \
                    r.node_id in members:
                await members[r.node_id].stop(r.id)
                await self._forget(r.id)
        dead: set[str] = set()
        for node_id, node in members.items():
            keep = {r.id: r.ip_slot for r in rows if r.node_id == node_id
                    and (r.state != S.STARTING or r.id in in_flight)}
            # Creates under way on any node (their rows may not be written yet).
            keep.update((sid, None) for sid in in_flight if sid not in keep)
            try:
                dead |= await node.reconcile(keep, self._starting) - in_flight
            except Exception as exc:
                # An unreachable node is not reconciled (its sandboxes are not
                # lost because it did not answer); the next pass tries again.
                log.warning("reconciling node %s failed: %s", node_id or "local", exc)
        for r in rows:
            if r.id in dead and r.state in (S.RUNNING, S.DELETING, S.POOLED):
                log.warning("sandbox %s seems gone from the host; marking it if so", r.id)
                final = S.KILLED if r.extra.get("surface") not in ("v1", "pool") else S.DELETED
                try:
                    await self.delete(None, r.id, final, "lost: runtime not running",
                                      only_if_lost=True)
                except Exception:
                    log.exception("marking %s failed", r.id)

    async def _stale(self, s: AsyncSession, rows: Sequence[Sandbox]) -> set[str]:
        """Which rows in a transitional state (starting, snapshotting,
        unpausing) nobody is moving any more: all of them but this
        process's own when it is the sole control plane; else those whose
        last transition is older than STALE_S."""
        moving = [r.id for r in rows if r.state in (S.STARTING, S.SNAPSHOTTING, S.UNPAUSING)]
        if self.sole:
            return set(moving)
        since = await repo.last_transition(s, moving)
        cut = repo.now() - timedelta(seconds=STALE_S)
        return {sid for sid in moving if sid not in since or since[sid] < cut}

    async def _recover(self, row: Sandbox) -> None:
        """A pause or resume cut short by a crash: end up paused (with a
        complete, verified snapshot) or running, never lost."""
        node = self.node_of(row)
        sealed = await node.snapshot_sealed(row.id)
        state = await node.runtime_state(row.id)
        if row.state == S.SNAPSHOTTING:
            if sealed:
                await node.stop(row.id)
                dst, why = S.PAUSED, "recovered: snapshot complete"
            else:
                # The image never got sealed; the frozen sandbox is intact.
                await node.unfreeze(row.id)
                await node.drop_snapshot(row.id)
                dst, why = S.RUNNING, "recovered: pause did not complete"
        else:  # UNPAUSING
            if state == RuntimeState.RUNNING and row.ip_slot is not None and \
                    await node.is_alive(row.id, row.ip_slot):
                dst, why = S.RUNNING, "recovered: resume had completed"
            else:
                await node.stop(row.id)
                dst, why = S.PAUSED, "recovered: resume did not complete"
        log.warning("sandbox %s: %s", row.id, why)
        async with self.db.transaction() as s:
            await repo.set_state(s, row.id, row.state, dst, why)
            if dst == S.RUNNING:
                fresh = await repo.sandbox(s, row.id)
                if fresh is not None and fresh.timeout_s:
                    fresh.timeout_at = repo.now() + timedelta(seconds=fresh.timeout_s)
        if dst == S.RUNNING:
            await node.discard_spent(row.id)


def _owned(spec: CreateSpec) -> dict[str, Any]:
    """The fields of a sandbox row that are its owner's: a new row gets
    them, and so does a pooled row when it is claimed."""
    return {
        "auto_pause": spec.auto_pause, "timeout_s": spec.timeout_s,
        "network_policy": spec.network_policy.model_dump(mode="json"),
        "env_vars": dict(spec.env_vars),
        "extra": {"surface": spec.surface, "metadata": dict(spec.metadata),
                  "on_timeout": spec.on_timeout, "security": spec.security},
        "envd_token": ids.token(), "proxy_token": ids.token("spt_"),
    }

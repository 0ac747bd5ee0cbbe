"""What must hold when several processes write one store at once, on SQLite
and on PostgreSQL: each "process" here is a service or a handle of its own
(its own connections, its own in-process locks), so only the store's locks
stand between them; one test runs real processes. Creates never pass an
organisation's sandbox limit or create rate together, nor claim one warm
pool member twice; wallet settings, organisation names and guardrail
counts are never doubled or lost; a lease has one holder."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select

from sbx.config import Settings
from sbx.core import accounts, billing
from sbx.core.errors import Conflict, RateLimited
from sbx.core.fleet import OneNode
from sbx.core.limits import LimitReached
from sbx.core.sandboxes import CreateSpec, SandboxService
from sbx.shared.lifecycle import LIVE
from sbx.store import audit as audit_store
from sbx.store import leases, repo
from sbx.store.db import Database
from sbx.store.models import GuardrailUsage, Sandbox
from tests.unit.fake_node import FakeNode
from tests.unit.store_rows import seeded

PROCESSES = 4
T = TypeVar("T")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[tuple[list[Database], str]]:
    """PROCESSES handles on one seeded store (organisation "race"), and the
    organisation's id."""
    first, org_id = await seeded(db_url, "race", [])
    handles = [first] + [Database(db_url) for _ in range(PROCESSES - 1)]
    try:
        # Connected beforehand, so that the racers' transactions overlap
        # instead of one finishing while the next still connects.
        for db in handles:
            async with db.session() as s:
                await s.execute(select(1))
        yield handles, org_id
    finally:
        for db in handles:
            await db.close()


async def _outcomes(racers: list[Awaitable[T]]) -> list[T | BaseException]:
    """Results (or errors) of racers run at once."""
    return await asyncio.gather(*racers, return_exceptions=True)


async def _set_tier(db: Database, **limits: int) -> None:
    async with db.transaction() as s:
        await accounts.set_tier(s, "race", **limits)
        await accounts.set_org(s, "race", tier="race")


async def _creates(handles: list[Database], tmp_path: Path, org_id: str, per_process: int
                   ) -> list[Sandbox | BaseException]:
    """per_process creates from each process at once, each process with a
    node of its own (in memory)."""
    services = []
    for i, db in enumerate(handles):
        settings = Settings(data_dir=tmp_path / f"p{i}", database_url=db.url)
        services.append(SandboxService(db, OneNode(FakeNode()), settings))
    return await _outcomes([svc.create(org_id, CreateSpec(template="base"))
                            for svc in services for _ in range(per_process)])


async def _live(db: Database, org_id: str) -> int:
    async with db.session() as s:
        return await repo.count_in_states(s, org_id, LIVE)


async def test_creates_from_several_processes_never_pass_the_limit(
        store: tuple[list[Database], str], tmp_path: Path) -> None:
    handles, org_id = store
    await _set_tier(handles[0], max_sandboxes=3, creates_per_minute=1000)
    out = await _creates(handles, tmp_path, org_id, per_process=4)
    admitted = [o for o in out if isinstance(o, Sandbox)]
    assert len(admitted) == 3, out
    assert all(isinstance(o, LimitReached) for o in out if not isinstance(o, Sandbox)), out
    assert await _live(handles[0], org_id) == 3


CREATOR = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from sqlalchemy import select
    from sbx.config import Settings
    from sbx.core.fleet import OneNode
    from sbx.core.sandboxes import CreateSpec, SandboxService
    from sbx.store.db import Database
    from tests.unit.fake_node import FakeNode

    async def main():
        url, org_id, data_dir, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        db = Database(url)
        settings = Settings(data_dir=data_dir, database_url=url)
        service = SandboxService(db, OneNode(FakeNode()), settings)
        async with db.session() as s:
            await s.execute(select(1))
        print("ready", flush=True)
        sys.stdin.readline()
        out = await asyncio.gather(*(service.create(org_id, CreateSpec(template="base"))
                                     for _ in range(n)), return_exceptions=True)
        print(" ".join(type(o).__name__ for o in out), flush=True)
        await db.close()

    asyncio.run(main())
""")


def test_creates_from_real_processes_never_pass_the_limit(db_url: str, tmp_path: Path) -> None:
    """Four processes, four creates each, let go at once, against a limit
    of three."""
    async def prepare() -> str:
        db, org_id = await seeded(db_url, "race", [])
        await _set_tier(db, max_sandboxes=3, creates_per_minute=1000)
        await db.close()
        return org_id

    org_id = asyncio.run(prepare())
    root = str(Path(__file__).resolve().parents[2])
    procs = [subprocess.Popen(
        [sys.executable, "-c", CREATOR, db_url, org_id, str(tmp_path / f"p{i}"), "4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root,
        env={**os.environ, "PYTHONPATH": root}) for i in range(PROCESSES)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outcomes = [name for p in procs for name in p.communicate(timeout=120)[0].split()]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert sorted(outcomes) == ["LimitReached"] * 13 + ["Sandbox"] * 3, outcomes


async def test_create_rate_holds_across_processes(
        store: tuple[list[Database], str], tmp_path: Path) -> None:
    handles, org_id = store
    await _set_tier(handles[0], max_sandboxes=100, creates_per_minute=5)
    out = await _creates(handles, tmp_path, org_id, per_process=4)
    assert sum(isinstance(o, Sandbox) for o in out) == 5, out
    refused = [o for o in out if not isinstance(o, Sandbox)]
    assert all(isinstance(o, RateLimited) for o in refused), refused
    assert await _live(handles[0], org_id) == 5


async def test_a_pooled_sandbox_goes_to_one_create(db_url: str, tmp_path: Path) -> None:
    """Creates of different organisations (no lock in common) from several
    processes claim the warm pool's one member: one gets it, the others
    new sandboxes."""
    db, pool_org = await seeded(db_url, "pool", [])
    handles = [db] + [Database(db_url) for _ in range(PROCESSES - 1)]
    try:
        orgs = []
        async with db.transaction() as s:
            for i in range(PROCESSES):
                orgs.append((await accounts.create_org(s, f"org-{i}")).id)
        services = []
        for i, h in enumerate(handles):
            svc = SandboxService(h, OneNode(FakeNode()), Settings(data_dir=tmp_path / f"p{i}",
                                                         database_url=db_url))
            svc.pool_org = pool_org
            services.append(svc)
        for round_ in range(2):
            member = f"sbx-pool{round_:04d}"
            async with db.transaction() as s:
                s.add(Sandbox(id=member, org_id=pool_org, template_id="tpl-base", state="pooled",
                              vcpu=1, memory_mib=512, disk_mib=512, network_policy={},
                              env_vars={}, extra={}, envd_token="t", proxy_token="p",
                              created_at=repo.now()))
            out = await _outcomes([svc.create(org, CreateSpec(template="base"))
                                   for svc, org in zip(services, orgs, strict=True)])
            assert all(isinstance(o, Sandbox) for o in out), out
            claimed = [o.org_id for o in out if isinstance(o, Sandbox) and o.id == member]
            assert len(claimed) == 1, out
            async with db.session() as s:
                row = await repo.sandbox(s, member)
            assert row is not None and row.org_id == claimed[0] and row.state == "running"
    finally:
        for h in handles:
            await h.close()


async def test_setting_a_balance_at_once_sets_it_once(store: tuple[list[Database], str]) -> None:
    """Each setter reads the balance and writes the difference: two that
    read the same balance would both add it."""
    handles, org_id = store

    async def set_to_5(db: Database) -> int | None:
        async with db.transaction() as s:
            return await billing.set_balance(s, "race", "sandbox", "5")

    for _ in range(3):
        out = await _outcomes([set_to_5(db) for db in handles])
        assert out == [5_000_000] * PROCESSES
        async with handles[0].session() as s:
            assert await billing.balance(s, org_id, "sandbox") == 5_000_000


async def test_one_organisation_of_a_name_and_a_conflict_for_the_others(
        store: tuple[list[Database], str]) -> None:
    handles, _ = store

    async def create(db: Database) -> str:
        async with db.transaction() as s:
            return (await accounts.create_org(s, "twin")).id

    out = await _outcomes([create(db) for db in handles])
    assert sum(isinstance(o, str) for o in out) == 1, out
    assert all(isinstance(o, Conflict) for o in out if not isinstance(o, str)), out


async def test_guardrail_checks_counted_at_once_are_all_counted(
        store: tuple[list[Database], str]) -> None:
    """Several writers count the first checks of a day at once (an insert
    each, were it not one upsert)."""
    handles, org_id = store

    async def count(db: Database, n: int) -> None:
        async with db.transaction() as s:
            await audit_store.add_guardrail_checks(s, org_id, "2026-12-01", n)

    racers = [count(db, n) for n in range(1, 4) for db in handles]
    assert await _outcomes(racers) == [None] * len(racers)
    async with handles[0].session() as s:
        total = (await s.execute(select(func.sum(GuardrailUsage.checks)))).scalar_one()
    assert total == 6 * PROCESSES


# -- leases ---------------------------------------------------------------------
TTL = timedelta(seconds=30)


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(
        store: tuple[list[Database], str]) -> None:
    db = store[0][0]
    t0 = repo.now()
    assert await leases.acquire(db, "metering", "a", TTL, now=t0)
    assert not await leases.acquire(db, "metering", "b", TTL, now=t0 + TTL / 2)
    # The holder renews it: b must now wait for the new expiry.
    assert await leases.acquire(db, "metering", "a", TTL, now=t0 + TTL / 2)
    assert not await leases.acquire(db, "metering", "b", TTL, now=t0 + TTL)
    held = await leases.held(db, "metering", now=t0 + TTL)
    assert held is not None and (held.holder, held.since) == ("a", t0)
    assert held.expires_at == t0 + TTL / 2 + TTL
    # Expired: b takes it over, and a cannot give away what it lost.
    t1 = t0 + TTL / 2 + TTL
    assert await leases.acquire(db, "metering", "b", TTL, now=t1)
    held = await leases.held(db, "metering", now=t1)
    assert held is not None and (held.holder, held.since) == ("b", t1)
    assert not await leases.release(db, "metering", "a")
    assert await leases.held(db, "metering", now=t1 + TTL) is None
    assert await leases.release(db, "metering", "b")
    assert await leases.held(db, "metering", now=t1) is None
    # Leases of other names are independent; a new holder takes a free one.
    assert await leases.acquire(db, "metering", "c", TTL, now=t1)
    assert await leases.acquire(db, "timeouts", "a", TTL, now=t1)
    with pytest.raises(ValueError):
        await leases.acquire(db, "timeouts", "a", timedelta(0))


async def test_holders_racing_for_a_lease_one_wins(store: tuple[list[Database], str]) -> None:
    """Racing for a lease nobody has had, then for one that expired: one
    winner each time."""
    handles, _ = store
    t0 = repo.now()
    for round_ in range(5):
        name = f"duty-{round_}"
        for now in (t0, t0 + TTL):
            out = await _outcomes([leases.acquire(db, name, f"replica-{i}", TTL, now=now)
                                   for i, db in enumerate(handles)])
            assert sorted(out, key=str) == [False] * (PROCESSES - 1) + [True], out
            held = await leases.held(handles[0], name, now=now)
            assert held is not None
            assert held.holder == f"replica-{out.index(True)}"

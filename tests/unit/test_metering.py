"""Metering against a real store (SQLite and PostgreSQL): running time (and only running
time) charged exactly once, also when the metering process is killed in
the middle of a pass; wallets as sums of the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from sbx.core import billing, metering, money
from sbx.core.errors import PaymentRequired
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import GuardrailUsage, LedgerEntry, Sandbox, SandboxEvent
from tests.unit.store_rows import seeded

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def ev(sid: str, to: str, at: datetime) -> SandboxEvent:
    return SandboxEvent(sandbox_id=sid, from_state=None, to_state=to, at=at)


def test_running_between_counts_running_time_only() -> None:
    s = "sbx-x"
    events = [ev(s, "starting", T0), ev(s, "running", T0 + timedelta(seconds=1)),
              ev(s, "snapshotting", T0 + timedelta(seconds=11)),
              ev(s, "paused", T0 + timedelta(seconds=12)),
              ev(s, "unpausing", T0 + timedelta(seconds=100)),
              ev(s, "running", T0 + timedelta(seconds=101))]
    until = T0 + timedelta(seconds=131)
    got = metering.running_between(events, T0, until)
    assert [iv.seconds for iv in got] == [10.0, 30.0]
    # Clipped to the window.
    got = metering.running_between(events, T0 + timedelta(seconds=6), T0 + timedelta(seconds=111))
    assert [iv.seconds for iv in got] == [5.0, 10.0]
    assert metering.running_between(events[:2], until, until) == []


def test_amounts_are_exact_micro_credits() -> None:
    assert money.to_micro("12.5") == 12_500_000
    assert money.to_micro("0.000001") == 1
    assert money.to_credits(-1_500_000) == "-1.500000"
    assert money.charge(10.0, 14) == 140
    assert money.charge(0.5, 5) == 2  # half to even
    for bad in ("x", "nan", "inf"):
        with pytest.raises(ValueError):
            money.to_micro(bad)


async def _store(url: str, sandboxes: int = 1) -> tuple[Database, str, list[str]]:
    ids = [f"sbx-{i:08d}" for i in range(sandboxes)]
    db, org_id = await seeded(url, "meter-test", ids,
                              vcpu=2, memory_mib=1024, created_at=T0)
    async with db.transaction() as s:
        for sid in ids:
            s.add(ev(sid, "running", T0))
    return db, org_id, ids


async def _vcpu_seconds(db: Database, sid: str) -> float:
    async with db.session() as s:
        q = select(func.coalesce(func.sum(LedgerEntry.quantity), 0.0)).where(
            LedgerEntry.sandbox_id == sid, LedgerEntry.item == "vcpu_s")
        return float((await s.execute(q)).scalar_one())


async def test_each_second_charged_once_and_paused_time_free(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db, org_id, (sid,) = await _store(db_url)
    clock = [T0 + timedelta(seconds=30)]
    monkeypatch.setattr(repo, "now", lambda: clock[0])
    try:
        assert (await metering.meter(db))[org_id] == money.charge(60.0, 14) + \
            money.charge(30.0, 5)
        await metering.meter(db)  # nothing new: nothing charged
        assert await _vcpu_seconds(db, sid) == 60.0
        # Paused from 40 s to 100 s, running again until 130 s.
        async with db.transaction() as s:
            s.add(ev(sid, "paused", T0 + timedelta(seconds=40)))
            s.add(ev(sid, "running", T0 + timedelta(seconds=100)))
        clock[0] = T0 + timedelta(seconds=130)
        await metering.meter(db)
        assert await _vcpu_seconds(db, sid) == 2 * (40 + 30)
        # Killed at 140 s; a pass much later charges up to the end only.
        # (As a timeout does: running -> deleting -> killed.)
        async with db.transaction() as s:
            assert await repo.set_state(s, sid, "running", "deleting")
            assert await repo.set_state(s, sid, "deleting", "killed")
        row_end = T0 + timedelta(seconds=140)
        async with db.transaction() as s:
            row = await repo.sandbox(s, sid)
            assert row is not None
            row.ended_at = row_end
            for event in (await s.execute(select(SandboxEvent).where(
                    SandboxEvent.to_state.in_(["deleting", "killed"])))).scalars():
                event.at = row_end
        clock[0] = T0 + timedelta(hours=5)
        await metering.meter(db)
        await metering.meter(db)
        assert await _vcpu_seconds(db, sid) == 2 * (40 + 40)
    finally:
        await db.close()


async def test_guardrail_checks_charged_once(db_url: str) -> None:
    db, org_id, _ = await _store(db_url, sandboxes=0)
    try:
        async with db.transaction() as s:
            s.add(GuardrailUsage(org_id=org_id, day="2026-11-30", checks=7))
        await metering.meter(db)
        async with db.transaction() as s:
            (await s.get(GuardrailUsage, (org_id, "2026-11-30"))).checks = 10  # type: ignore[union-attr]
        await metering.meter(db)
        await metering.meter(db)
        async with db.session() as s:
            assert await billing.balance(s, org_id, "guardrails") == -10 * 100
    finally:
        await db.close()


async def test_wallets_are_sums_of_the_ledger(db_url: str) -> None:
    db, org_id, _ = await _store(db_url, sandboxes=0)
    try:
        async with db.transaction() as s:
            org = await repo.org_by_id(s, org_id)
            assert org is not None
            await billing.check_wallets(s, org, guardrails=True)  # not enforced: no 402
            assert await billing.set_balance(s, "meter-test", "sandbox", "0") == 0
            with pytest.raises(PaymentRequired):
                await billing.check_wallets(s, org, guardrails=False)
            assert await billing.topup(s, "meter-test", "sandbox", "2.5") == 2_500_000
            await billing.check_wallets(s, org, guardrails=False)
            billing.post(s, org_id, "sandbox", "usage", -2_600_000)
            await s.flush()
            with pytest.raises(PaymentRequired):
                await billing.check_wallets(s, org, guardrails=False)
            assert await billing.set_balance(s, "meter-test", "sandbox", "1") == 1_000_000
            assert await billing.set_balance(s, "meter-test", "sandbox", None) is None
            await billing.check_wallets(s, org, guardrails=False)
            with pytest.raises(ValueError):
                await billing.topup(s, "meter-test", "sandbox", "-1")
        async with db.session() as s:
            kinds = [e.kind for e in (await s.execute(
                select(LedgerEntry).order_by(LedgerEntry.id))).scalars()]
            assert kinds == ["topup", "usage", "adjust"]  # setting 0 on 0 adds nothing
            assert await billing.balance(s, org_id, "sandbox") == 1_000_000
    finally:
        await db.close()


METER_LOOP = textwrap.dedent("""
    import asyncio, sys
    from sbx.core import metering
    from sbx.store.db import Database

    async def main():
        db = Database(sys.argv[1])
        print("ready", flush=True)
        while True:
            await metering.meter(db)

    asyncio.run(main())
""")


async def _torn_or_inexact(url: str) -> bool:
    """Checks every sandbox's charge against its cursor; answers whether
    the cursors disagree (a pass applied in part)."""
    db = Database(url)
    try:
        async with db.session() as s:
            rows = (await s.execute(select(Sandbox))).scalars().all()
            for row in rows:
                if row.metered_until is None:
                    continue
                q = select(func.coalesce(func.sum(LedgerEntry.quantity), 0.0)).where(
                    LedgerEntry.sandbox_id == row.id, LedgerEntry.item == "vcpu_s")
                charged = float((await s.execute(q)).scalar_one())
                ran = (row.metered_until - row.created_at).total_seconds()
                assert charged == pytest.approx(2 * ran, abs=1e-5), row.id
            return len({r.metered_until for r in rows}) > 1
    finally:
        await db.close()


async def _started_ago(db: Database, seconds: float) -> datetime:
    """Every sandbox created, and running, that long before now."""
    start = repo.now() - timedelta(seconds=seconds)
    async with db.transaction() as s:
        for row in (await s.execute(select(Sandbox))).scalars():
            row.created_at = start
        for e in (await s.execute(select(SandboxEvent))).scalars():
            e.at = start
    return start


async def _start_at_now(url: str) -> str:
    db, _, _ = await _store(url, sandboxes=40)
    await _started_ago(db, 5)
    await db.close()
    return db.url


def test_exact_after_the_meter_is_killed_mid_pass(db_url: str) -> None:
    """A process metering 40 sandboxes in a loop is SIGKILLed at eight
    different moments: after each, every sandbox's charged vCPU-seconds
    equal its running time up to its cursor, and the cursors agree (each
    pass is all or nothing)."""
    url = asyncio.run(_start_at_now(db_url))
    passes = []
    for round_ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", METER_LOOP, url],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(0.3 + (round_ * 37 % 11) / 8)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        assert not asyncio.run(_torn_or_inexact(url))
        passes.append(asyncio.run(_entries(url)))
    # The meter was working when it was killed: entries kept growing (on a
    # slow host the first kill may come before the first pass is done).
    assert passes[-1] > passes[0]


async def _entries(url: str) -> int:
    db = Database(url)
    try:
        async with db.session() as s:
            return int((await s.execute(select(func.count(LedgerEntry.id)))).scalar_one())
    finally:
        await db.close()


async def test_passes_at_once_charge_once(db_url: str) -> None:
    """The metering loop and a usage request may run a pass at the same time:
    each second is still charged once (the pass holds the write lock from
    its first read)."""
    db, _, ids = await _store(db_url, sandboxes=5)
    try:
        start = await _started_ago(db, 10)
        others = [Database(db.url) for _ in range(3)]
        try:
            await asyncio.gather(metering.meter(db), *(metering.meter(o) for o in others))
        finally:
            for o in others:
                await o.close()
        async with db.session() as s:
            for sid in ids:
                row = await repo.sandbox(s, sid)
                assert row is not None and row.metered_until is not None
                ran = (row.metered_until - start).total_seconds()
                assert await _vcpu_seconds(db, sid) == pytest.approx(2 * ran, abs=1e-5)
    finally:
        await db.close()

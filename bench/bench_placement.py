"""Placement with 50 nodes and 5,000 sandboxes in PostgreSQL (synthetic rows):
how long the control plane takes to choose a node for a create (the
cluster's `place()`: one aggregate query over the live sandboxes, then the
choice), against the floor of one trivial query on the same connection
pool in the same run.

Run as root:  .venv/bin/python -m bench.bench_placement [--nodes 50] [--sandboxes 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import timedelta

from sqlalchemy import text

from bench.stats import ms, pct, summary
from sbx.config import Settings
from sbx.core import accounts
from sbx.core.cluster import Cluster
from sbx.core.fleet import Shape
from sbx.store import nodes as node_repo
from sbx.store import repo
from sbx.store.db import Database
from sbx.store.models import JoinToken, NodeRow, Sandbox, Template
from tests.postgres import running_postgres

STATES = ["running"] * 6 + ["paused"] * 3 + ["deleted"] * 4 + ["pooled", "starting"]


async def seed(db: Database, nodes: int, sandboxes: int) -> None:
    rnd = random.Random(7)
    now = repo.now()
    async with db.transaction() as s:
        org = await accounts.create_org(s, "bench")
        s.add(Template(id="tpl-base", name="base", org_id=None, vcpu=1, memory_mib=512,
                       disk_mib=2048, rootfs="/t/base/rootfs", status="ready", created_at=now))
        s.add(JoinToken(id="bench", secret_hash="x" * 64, created_at=now))
        await s.flush()
        for i in range(nodes):
            s.add(NodeRow(id=f"node-{i:02d}", url=f"http://10.0.0.{i}:3100",
                          subnet=f"10.{100 + i}.0.0/16", control_key="k", node_key_hash="h",
                          join_token_id="bench", draining=i % 10 == 9, vcpu_total=512,
                          memory_mib_total=1_048_576, disk_mib_total=40_000_000,
                          registered_at=now, last_seen=now,
                          info={"template_snapshots": ["/t/base/rootfs"] if i % 3 else [],
                                "spares": [["/t/base/rootfs", 1, 512]] if i % 5 == 0 else []}))
        await s.flush()
        for j in range(sandboxes):
            s.add(Sandbox(id=f"sbx-{j:08d}", org_id=org.id, template_id="tpl-base",
                          state=rnd.choice(STATES), vcpu=rnd.choice([1, 2]),
                          memory_mib=rnd.choice([512, 1024, 2048]), disk_mib=2048,
                          network_policy={}, env_vars={}, extra={}, envd_token="t",
                          proxy_token="p", created_at=now - timedelta(seconds=j),
                          node_id=f"node-{rnd.randrange(nodes):02d}", ip_slot=j % 4000 + 1))


async def run(nodes: int, sandboxes: int, rounds: int) -> dict[str, object]:
    with running_postgres() as pg:
        settings = Settings(database_url=pg.url())
        db = Database(settings.db_url)
        await db.migrate()
        await seed(db, nodes, sandboxes)
        cluster = Cluster(db, settings)

        async def beat() -> None:
            # The nodes heartbeat and the replica reads them (every second
            # in a real one; here every 100 decisions, outside the timing).
            async with db.transaction() as s:
                for i in range(nodes):
                    await node_repo.heartbeat(s, f"node-{i:02d}", repo.now(), None)
            await cluster.refresh()

        await beat()
        shape = Shape(1, 512, 2048, "/t/base/rootfs")
        place, floor = [], []
        chosen: dict[str, int] = {}
        for _ in range(20):  # warm the pool and the plans
            await cluster.place(shape)
        for i in range(rounds):
            if i % 100 == 0:
                await beat()
            t0 = time.perf_counter()
            node = await cluster.place(shape)
            place.append(time.perf_counter() - t0)
            chosen[str(node)] = chosen.get(str(node), 0) + 1
            t0 = time.perf_counter()
            async with db.session() as s:
                await s.execute(text("SELECT 1"))
            floor.append(time.perf_counter() - t0)
        await cluster.close()
        await db.close()
    return {"nodes": nodes, "sandboxes": sandboxes, "place": summary(place),
            "place_p99": pct(place, 99), "floor_select_1": summary(floor),
            "ratio_p50": summary(place)["p50"] / summary(floor)["p50"], "chosen": chosen}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--sandboxes", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=500)
    args = ap.parse_args()
    out = asyncio.run(run(args.nodes, args.sandboxes, args.rounds))
    place = out["place"]
    assert isinstance(place, dict)
    print(f"placement, {args.nodes} nodes, {args.sandboxes} sandboxes (PostgreSQL): "
          f"p50 {ms(place['p50'])}, p99 {ms(float(out['place_p99']))} "  # type: ignore[arg-type]
          f"(a SELECT 1 on the same pool: p50 "
          f"{ms(out['floor_select_1']['p50'])}; ratio {out['ratio_p50']:.1f})")  # type: ignore[index]
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

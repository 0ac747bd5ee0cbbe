"""A cluster's overhead, against the all-in-one server in the same run:

- create -> running through `POST /v1/sandbox/` of an `sbx api` replica onto
  an `sbx node` (its node interface over HTTP on loopback), against the same
  create on an `sbx server`; both with spare runtimes as they ship;
- `commands.run("true")` through the replica's gateway, against the same
  through the server's (paced, one every --exec-gap s).

The control plane's store is a PostgreSQL the benchmark starts itself;
creates and commands are interleaved so that noise hits both alike.

Run as root:  .venv/bin/python -m bench.bench_cluster [--creates 20] [--execs 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.client import timed_create
from bench.stats import ms, summary
from sbx import Sandbox
from tests.integration.cluster import running_cluster
from tests.integration.server import SBX, Server, free_subnet
from tests.postgres import running_postgres

SHIPPED = {"SBX_SPARE_RUNTIMES": "2"}


def _fast_tier(admin: Callable[..., object]) -> None:
    admin("tier", "set", "bench", "--max-sandboxes", "10", "--creates-per-minute", "1000")
    admin("org", "set", "default", "--tier", "bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=20)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--exec-gap", type=float, default=0.2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-", dir="/var/tmp"))
    server = Server(work / "one", subnet=free_subnet(), extra_env=SHIPPED)
    with running_postgres() as pg, pg.database() as url:
        try:
            server.start()
            _fast_tier(server.admin)
            with running_cluster(pg, url, nodes=("n1",), replicas=1, env=SHIPPED) as c:
                def cluster_admin(*a: str) -> None:
                    subprocess.run([SBX, "admin", *a, "--database-url", url], check=True,
                                   capture_output=True)
                _fast_tier(cluster_admin)
                one = httpx.Client(base_url=server.url, headers={"X-API-Key": server.api_key},
                                   timeout=60)
                rep = httpx.Client(base_url=c.url, headers={"X-API-Key": c.key}, timeout=60)
                for api in (one, rep):  # the first create of a shape fills spares
                    timed_create(api)
                    time.sleep(2)
                made_one, made_rep = [], []
                for _ in range(args.creates):
                    made_one.append(timed_create(one))
                    time.sleep(1.0)  # the spare taken is remade
                    made_rep.append(timed_create(rep))
                    time.sleep(1.0)
                results: dict[str, object] = {"create": {
                    "all_in_one": summary(made_one), "through_replica": summary(made_rep),
                    "ratio_p50": summary(made_rep)["p50"] / summary(made_one)["p50"]}}

                sb_one = Sandbox.create(api_url=server.url, api_key=server.api_key, vcpu=1,
                                        memory_mib=512)
                sb_rep = Sandbox.create(api_url=c.url, api_key=c.key, vcpu=1, memory_mib=512)
                try:
                    run_one, run_rep = [], []
                    for _ in range(5):
                        sb_one.commands.run("true")
                        sb_rep.commands.run("true")
                    for _ in range(args.execs):
                        time.sleep(args.exec_gap)
                        t0 = time.perf_counter()
                        sb_one.commands.run("true")
                        run_one.append(time.perf_counter() - t0)
                        time.sleep(args.exec_gap)
                        t0 = time.perf_counter()
                        sb_rep.commands.run("true")
                        run_rep.append(time.perf_counter() - t0)
                    results["commands_run_true"] = {
                        "all_in_one": summary(run_one), "through_replica": summary(run_rep),
                        "ratio_p50": summary(run_rep)["p50"] / summary(run_one)["p50"]}
                finally:
                    sb_one.kill()
                    sb_rep.kill()
                one.close()
                rep.close()
        finally:
            server.teardown()
    create = results["create"]
    runs = results["commands_run_true"]
    assert isinstance(create, dict) and isinstance(runs, dict)
    print(f"create p50: all-in-one {ms(create['all_in_one']['p50'])}, through a replica onto a "
          f"node {ms(create['through_replica']['p50'])} (ratio {create['ratio_p50']:.2f})")
    print(f"commands.run('true') p50: all-in-one {ms(runs['all_in_one']['p50'])}, through a "
          f"replica {ms(runs['through_replica']['p50'])} (ratio {runs['ratio_p50']:.2f})")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

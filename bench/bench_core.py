"""Core benchmarks (issue: core platform), each next to a baseline measured
in the same run:

- create -> running through POST /v1/sandbox/ (answers once envd answers),
  against a bare `runsc run` of the same rootfs until HTTP 200;
- commands.run("true") through the gateway, one call every --exec-gap s
  (an agent's pace) and back to back, with envd's warm shells and without,
  against the same call straight to envd and against `runsc exec /bin/true`;
- host memory of idle sandboxes (sentry + gofer + envd).

Run as root:  .venv/bin/python -m bench.bench_core [--creates 20] [--platform systrap]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.baseline import BareRunsc
from bench.client import timed_create
from bench.stats import ms, summary
from sbx import Sandbox
from tests.integration.server import TEMPLATES, Server, free_subnet


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sandbox_memory(tag: str, sandbox_id: str) -> tuple[float, float]:
    """(PSS of every host process of the sandbox, memcg usage), in MiB."""
    cg = Path("/sys/fs/cgroup/memory") / f"sbx-{tag}" / sandbox_id
    pids = {int(p) for p in (cg / "cgroup.procs").read_text().split()}
    # The gofer runs outside the sandbox's cgroup: find it by its parent.
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "gofer" in line and sandbox_id in line:
            pids.add(int(line.split()[0]))
    pss = sum(pss_kib(p) for p in pids) / 1024
    usage = int((cg / "memory.usage_in_bytes").read_text()) / 2**20
    return pss, usage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=20)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--exec-gap", type=float, default=0.2,
                    help="seconds between paced commands.run calls")
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--platform", default="systrap")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {"platform": args.platform}

    work = Path(tempfile.mkdtemp(prefix="sbx-bench-", dir="/var/tmp"))
    # As sbx ships: with spare runtimes (the test harness turns them off).
    server = Server(work / "data", subnet=free_subnet(),
                    extra_env={"SBX_PLATFORM": args.platform, "SBX_SPARE_RUNTIMES": "2"})
    rootfs = TEMPLATES / "base" / "rootfs"
    try:
        server.start()
        key_org = f"bench-{uuid.uuid4().hex[:6]}"
        key = server.new_org(key_org)
        server.admin("tier", "set", "bench", "--max-sandboxes", str(args.idle + 2),
                     "--creates-per-minute", "1000")
        server.admin("org", "set", key_org, "--tier", "bench")
        idle_key = key
        h = {"X-API-Key": key}
        # One client, as an SDK keeps: a new one per call would add its own
        # set-up (~50 ms of TLS context) to every figure.
        api = httpx.Client(base_url=server.url, headers=h, timeout=60)

        # Interleave baseline and sbx so that noise hits both alike.
        bare, made = [], []
        for i in range(args.creates):
            b = BareRunsc(rootfs, work, i % 200)
            try:
                bare.append(b.boot(args.platform))
            finally:
                b.destroy()
            made.append(timed_create(api))
        results["create"] = {"sbx": summary(made), "bare_runsc_run": summary(bare)}

        sb = Sandbox.create(api_url=server.url, api_key=key, vcpu=1, memory_mib=512)
        b = BareRunsc(rootfs, work, 250)
        try:
            b.boot(args.platform)
            ip = httpx.get(f"{server.url}/sandboxes/{sb.sandbox_id}", headers=h).json()[
                "internal_ip"]
            direct_sb = Sandbox._for_envd(f"http://{ip}:49983", sb.envd_access_token)

            def timed(run: Any, n: int, gap: float) -> list[float]:
                out = []
                for _ in range(n):
                    time.sleep(gap)
                    t0 = time.perf_counter()
                    run()
                    out.append(time.perf_counter() - t0)
                return out

            def warm_shells(n: int) -> None:
                r = httpx.post(f"http://{ip}:49983/init", json={"warmShells": n},
                               headers={"X-Access-Token": sb.envd_access_token or ""})
                assert r.status_code == 204, r.text

            def run_true() -> None:
                sb.commands.run("true")

            def run_true_direct() -> None:
                direct_sb.commands.run("true")

            for _ in range(5):
                run_true()
            gap = args.exec_gap
            # Paced like an agent (a command every `gap` s), interleaved so
            # that noise hits each alike; then back to back.
            via_gw: list[float] = []
            direct: list[float] = []
            for _ in range(args.execs // 10):
                via_gw += timed(run_true, 10, gap)
                direct += timed(run_true_direct, 10, gap)
            burst = timed(run_true, args.execs, 0.0)
            warm_shells(0)
            cold = timed(run_true, min(args.execs, 40), gap)
            warm_shells(1)
            rexec = timed(b.exec_true, min(args.execs, 30), gap)
            results["exec_true"] = {"sbx_gateway": summary(via_gw),
                                    "sbx_direct_envd": summary(direct),
                                    "sbx_gateway_back_to_back": summary(burst),
                                    "sbx_gateway_cold_shell": summary(cold),
                                    "runsc_exec": summary(rexec),
                                    "gap_s": gap}
            direct_sb.close()
        finally:
            b.destroy()
            sb.kill()

        idle = [Sandbox.create(api_url=server.url, api_key=idle_key, vcpu=1, memory_mib=512)
                for _ in range(args.idle)]
        try:
            time.sleep(3)
            mem = [sandbox_memory(server.node_tag, s.sandbox_id) for s in idle]
            results["idle_memory_mib"] = {
                "pss_per_sandbox": summary([m[0] for m in mem]),
                "memcg_per_sandbox": summary([m[1] for m in mem]),
            }
        finally:
            for s in idle:
                s.kill()
    finally:
        server.teardown()
        subprocess.run(["rm", "-rf", str(work)])

    c = results["create"]
    print(f"platform {args.platform}, host CPUs {os.cpu_count()}")
    print(f"create -> running   sbx p50 {ms(c['sbx']['p50'])} p95 {ms(c['sbx']['p95'])} | "
          f"bare runsc run p50 {ms(c['bare_runsc_run']['p50'])} p95 "
          f"{ms(c['bare_runsc_run']['p95'])} | ratio p50 "
          f"{c['sbx']['p50'] / c['bare_runsc_run']['p50']:.2f}")
    e = results["exec_true"]
    print(f"run('true') every {e['gap_s']} s: gateway p50 {ms(e['sbx_gateway']['p50'])} p95 "
          f"{ms(e['sbx_gateway']['p95'])} | direct envd p50 "
          f"{ms(e['sbx_direct_envd']['p50'])} | runsc exec /bin/true p50 "
          f"{ms(e['runsc_exec']['p50'])} | ratio "
          f"{e['sbx_gateway']['p50'] / e['runsc_exec']['p50']:.2f}")
    print(f"run('true') back to back: gateway p50 {ms(e['sbx_gateway_back_to_back']['p50'])} "
          f"p95 {ms(e['sbx_gateway_back_to_back']['p95'])}; warm shells off (every "
          f"{e['gap_s']} s): p50 {ms(e['sbx_gateway_cold_shell']['p50'])}")
    m = results["idle_memory_mib"]
    print(f"idle memory/sandbox PSS p50 {m['pss_per_sandbox']['p50']:.1f} MiB "
          f"(max {m['pss_per_sandbox']['max']:.1f}); memcg p50 "
          f"{m['memcg_per_sandbox']['p50']:.1f} MiB, over {args.idle} sandboxes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

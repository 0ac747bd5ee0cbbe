"""Snapshot benchmarks (issue: memory snapshots), each next to a bare
`runsc checkpoint`/`restore` of a sandbox of the same rootfs in the same run:

- create -> running from a template snapshot (warm pool empty), 30 creates
  with spare runtimes (as sbx ships), 30 without, and a burst back to back,
  against a bare `runsc restore` until HTTP 200 (of a minimal server and of
  sbx's own template snapshot), and the same image restored into a
  `runsc create`d container (what a spare runtime saves, bare);
- create -> running with a warm-pool hit (a second server with a pool of
  one 1x512 sandbox; each create waits for the refill first);
- pause and resume of a sandbox that touched 100 MiB, against bare
  checkpoint/restore of a sandbox holding 100 MiB, with and without
  compression (size on disk and time); with spare runtimes and without.

Run as root:  .venv/bin/python -m bench.bench_snapshots [--creates 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.baseline import BareRunsc, restore_template_image
from bench.client import SMALL, timed_create
from bench.stats import ms, summary
from sbx import Sandbox
from tests.integration.server import TEMPLATES, Server, free_subnet

HOLD = ("nohup python3 -c \"b = bytearray(100 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "import time; time.sleep(10**6)\" >/dev/null 2>&1 &")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bare_cycle(rootfs: Path, work: Path, index: int, ballast: int, compression: str
               ) -> tuple[float, float, int]:
    b = BareRunsc(rootfs, work, index, ballast_mib=ballast)
    image = work / f"img-{index}"
    try:
        b.boot()
        ck = b.checkpoint(image, compression)
        size = du(image)
        rs = b.restore(image)
        return ck, rs, size
    finally:
        b.destroy()
        shutil.rmtree(image, ignore_errors=True)


def pooled(server: Server) -> int:
    with sqlite3.connect(server.data_dir / "sbx.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM sandboxes WHERE state = 'pooled'"
                              ).fetchone()[0])


def bench_org(server: Server) -> tuple[str, httpx.Client]:
    """An organisation with room for the benchmark, its key, and one API
    client, as an SDK keeps (a new one per call would add its own set-up,
    ~50 ms of TLS context, to every figure)."""
    org = f"bench-{uuid.uuid4().hex[:6]}"
    key = server.new_org(org)
    server.admin("tier", "set", "bench", "--max-sandboxes", "20", "--creates-per-minute", "1000")
    server.admin("org", "set", org, "--tier", "bench")
    return key, httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60)


def pool_hits(work: Path, rootfs: Path, n: int) -> dict[str, Any]:
    server = Server(work / "pool-data", subnet=free_subnet(),
                    extra_env={"SBX_WARM_POOL": '{"1x512": 1}',
                               "SBX_PREWARM_SNAPSHOTS": '["1x512"]'})
    try:
        server.start()
        _, api = bench_org(server)
        hits, bare_restores = [], []
        for i in range(n):
            deadline = time.monotonic() + 180
            while pooled(server) < 1:
                assert time.monotonic() < deadline, server.tail()
                time.sleep(0.1)
            time.sleep(0.5)
            hits.append(timed_create(api))
            _, rs, _ = bare_cycle(rootfs, work, 150 + i % 50, 0, "none")
            bare_restores.append(rs)
        return {"sbx": summary(hits), "bare_restore": summary(bare_restores)}
    finally:
        server.teardown()


def template_image() -> Path:
    """The prewarmed template snapshot of 1 vCPU / 512 MiB (waited for)."""
    snaps = TEMPLATES / "base" / "snapshots"
    deadline = time.monotonic() + 120
    while True:
        found = [p for p in (snaps.iterdir() if snaps.exists() else [])
                 if p.name.startswith("c1-m512-") and "." not in p.name]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "no template snapshot"
        time.sleep(0.5)


def creates(api: httpx.Client, n: int, between: Callable[[int], None]) -> list[float]:
    out = []
    for i in range(n):
        between(i)
        out.append(timed_create(api))
    return out


def burst(api: httpx.Client, n: int) -> list[float]:
    """n creates back to back (none deleted until the end): the spares
    are used up and refilled while the next creates run."""
    took, ids = [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            r = api.post("/v1/sandbox/", json=SMALL)
            took.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    finally:
        for sandbox_id in ids:
            api.delete(f"/v1/sandbox/{sandbox_id}")
    return took


def cycles(server: Server, key: str, n: int) -> dict[str, Any]:
    pauses, resumes, sizes = [], [], []
    for _ in range(n):
        with Sandbox.create(api_url=server.url, api_key=key, vcpu=1, memory_mib=512) as sb:
            sb.commands.run(HOLD)
            time.sleep(2)
            t0 = time.perf_counter()
            sb.pause()
            pauses.append(time.perf_counter() - t0)
            sizes.append(du(server.data_dir / "snapshots" / sb.sandbox_id))
            time.sleep(0.5)
            t0 = time.perf_counter()
            sb.resume()
            resumes.append(time.perf_counter() - t0)
            assert sb.commands.run("echo ok").stdout == "ok\n"
    return {"sbx_pause": summary(pauses), "sbx_resume": summary(resumes),
            "sbx_snapshot_mib": summary([s / 2**20 for s in sizes])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=30)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--pool-creates", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-", dir="/var/tmp"))
    rootfs = TEMPLATES / "base" / "rootfs"
    # sbx as it ships (two spare runtimes), and with none: each create
    # then makes its sandbox's processes itself, as a bare restore does.
    server = Server(work / "data", subnet=free_subnet(),
                    extra_env={"SBX_SPARE_RUNTIMES": "2"})
    plain = Server(work / "data-plain", subnet=free_subnet())
    out: dict[str, Any] = {}
    try:
        server.start()
        key, api = bench_org(server)
        image = template_image()
        bare_restores: list[float] = []
        same_restores: list[float] = []
        created_restores: list[float] = []

        def baselines(i: int) -> None:
            _, rs, _ = bare_cycle(rootfs, work, i % 100, 0, "none")
            bare_restores.append(rs)
            same_restores.append(restore_template_image(image, rootfs, work, 200 + i % 50))
            created_restores.append(
                restore_template_image(image, rootfs, work, 200 + i % 50, created=True))

        spared = creates(api, args.creates, baselines)
        bursts = burst(api, args.burst)
        bare: dict[str, tuple[list[float], list[float], list[int]]] = {
            "none": ([], [], []), "flate-best-speed": ([], [], [])}
        for i in range(args.cycles):
            for comp, (cks, rss, szs) in bare.items():
                ck, rs, size = bare_cycle(rootfs, work, 100 + i, 100, comp)
                cks.append(ck)
                rss.append(rs)
                szs.append(size)
        spared_cycles = cycles(server, key, args.cycles)
        server.teardown()

        plain.start()
        plain_key, plain_api = bench_org(plain)
        unspared = creates(plain_api, args.creates, lambda i: same_restores.append(
            restore_template_image(image, rootfs, work, 200 + i % 50)))
        plain_cycles = cycles(plain, plain_key, args.cycles)
        plain.teardown()

        out["create_from_snapshot"] = {
            "sbx": summary(spared), "sbx_burst": summary(bursts),
            "sbx_no_spares": summary(unspared),
            "bare_restore": summary(bare_restores),
            "bare_restore_same_image": summary(same_restores),
            "bare_create_then_restore_same_image": summary(created_restores)}
        out["pause_resume_100mib"] = {
            **spared_cycles,
            **{f"no_spares_{k}": v for k, v in plain_cycles.items()},
            **{f"bare_{c}_checkpoint": summary(v[0]) for c, v in bare.items()},
            **{f"bare_{c}_restore": summary(v[1]) for c, v in bare.items()},
            **{f"bare_{c}_image_mib": summary([s / 2**20 for s in v[2]]) for c, v in bare.items()},
        }
        out["create_pool_hit"] = pool_hits(work, rootfs, args.pool_creates)
    finally:
        server.teardown()
        plain.teardown()
        subprocess.run(["rm", "-rf", str(work)])
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def report(out: dict[str, Any]) -> None:
    c = out["create_from_snapshot"]
    same = c["bare_restore_same_image"]
    for name, label in (("sbx", "spare runtimes (default)"), ("sbx_no_spares", "no spares"),
                        ("sbx_burst", "burst, back to back")):
        print(f"create from template snapshot, {label:26} p50 {ms(c[name]['p50'])} "
              f"p95 {ms(c[name]['p95'])} | ratio p50 to the same image's bare restore "
              f"{c[name]['p50'] / same['p50']:.2f}, to a minimal server's "
              f"{c[name]['p50'] / c['bare_restore']['p50']:.2f}")
    print(f"  bare runsc restore: sbx's template snapshot until envd answers p50 "
          f"{ms(same['p50'])} p95 {ms(same['p95'])}; a minimal server's p50 "
          f"{ms(c['bare_restore']['p50'])}; the same image into a created container "
          f"(restore only) p50 {ms(c['bare_create_then_restore_same_image']['p50'])}")
    c = out["create_pool_hit"]
    print(f"create, warm-pool hit          sbx p50 {ms(c['sbx']['p50'])} p95 {ms(c['sbx']['p95'])}"
          f" | bare restore p50 {ms(c['bare_restore']['p50'])} | ratio p50 "
          f"{c['sbx']['p50'] / c['bare_restore']['p50']:.2f}")
    p = out["pause_resume_100mib"]
    print(f"pause (100 MiB touched)        sbx p50 {ms(p['sbx_pause']['p50'])} (no spares "
          f"{ms(p['no_spares_sbx_pause']['p50'])}) | bare checkpoint none "
          f"{ms(p['bare_none_checkpoint']['p50'])}, flate "
          f"{ms(p['bare_flate-best-speed_checkpoint']['p50'])}")
    print(f"resume                         sbx p50 {ms(p['sbx_resume']['p50'])} p95 "
          f"{ms(p['sbx_resume']['p95'])} (no spares {ms(p['no_spares_sbx_resume']['p50'])})"
          f" | bare restore none {ms(p['bare_none_restore']['p50'])}, flate "
          f"{ms(p['bare_flate-best-speed_restore']['p50'])}")
    print(f"snapshot size                  sbx {p['sbx_snapshot_mib']['p50']:.1f} MiB | bare none "
          f"{p['bare_none_image_mib']['p50']:.1f} MiB, flate "
          f"{p['bare_flate-best-speed_image_mib']['p50']:.1f} MiB")


if __name__ == "__main__":
    main()

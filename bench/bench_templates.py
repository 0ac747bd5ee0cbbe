"""Template build benchmarks (issue: custom templates), next to baselines
measured in the same run:

- a build of `FROM base` + `COPY wheels/` + `RUN pip install` of five
  packages (made on the spot, installed with no network), cold (empty layer
  cache), warm (unchanged: every layer cached) and with only the last RUN
  changed; against a bare `runsc run` of the same `pip install` on the same
  rootfs (no sbx: runsc, an overlay in memory, the wheels bind-mounted);
- create -> running from the custom template, next to creates from `base`
  (both from their template snapshots, warm pool off).

Run as root:  .venv/bin/python -m bench.bench_templates [--creates 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.client import timed_create
from bench.stats import ms, summary
from sbx.sdk import Templates
from tests.integration.server import TEMPLATES, Server, free_subnet
from tests.integration.wheels import wheelhouse

PIP = "pip install --no-index --find-links /wheels --break-system-packages sbxdemo0"
DOCKERFILE = f"FROM base\nCOPY wheels/ /wheels/\nRUN {PIP}\nRUN echo {{marker}} > /marker\n"


def bare_pip(rootfs: Path, wheels: Path, work: Path, index: int) -> float:
    """Seconds for `runsc run` of the same pip install, to its exit."""
    bundle = work / f"bare-{index}"
    bundle.mkdir(parents=True)
    spec = {
        "ociVersion": "1.0.0",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": ["/bin/sh", "-c", PIP], "cwd": "/",
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "HOME=/root"]},
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "bare",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                   {"destination": "/wheels", "type": "bind", "source": str(wheels),
                    "options": ["rbind", "ro"]}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount",
                                                        "network")]},
    }
    (bundle / "config.json").write_text(json.dumps(spec))
    root = work / "runsc-root"
    t0 = time.perf_counter()
    subprocess.run(["runsc", "--root", str(root), "--network", "none", "--overlay2",
                    "root:memory", "run", "--bundle", str(bundle), f"bare-pip-{index}"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    subprocess.run(["runsc", "--root", str(root), "delete", "--force", f"bare-pip-{index}"],
                   capture_output=True)
    return took


def timed_build(t: Templates, name: str, ctx: Path) -> tuple[float, dict[str, Any], int]:
    """Seconds from upload to `done`, the outcome, the steps taken from cache."""
    events: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    out = t.build(name, ctx, on_event=events.append, vcpu=1, memory_mib=512)
    took = time.perf_counter() - t0
    cached = sum(1 for e in events if e.get("type") == "step_done" and e.get("cached"))
    return took, out, cached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-tpl-", dir="/var/tmp"))
    rootfs = TEMPLATES / "base" / "rootfs"
    ctx = work / "ctx"
    wheelhouse(ctx / "wheels", count=5, padding_kib=256)
    # As sbx ships: with spare runtimes (the test harness turns them off).
    server = Server(work / "data", subnet=free_subnet(), extra_env={"SBX_SPARE_RUNTIMES": "2"})
    out: dict[str, Any] = {}
    try:
        bare = [bare_pip(rootfs, ctx / "wheels", work, i) for i in range(3)]
        server.start()
        key = server.api_key
        server.admin("tier", "set", "default", "--creates-per-minute", "1000")
        name = f"bench-{uuid.uuid4().hex[:6]}"
        with Templates(server.url, key) as t:
            (ctx / "Dockerfile").write_text(DOCKERFILE.format(marker="one"))
            cold, _, _ = timed_build(t, name, ctx)
            warm, _, warm_cached = timed_build(t, name, ctx)
            (ctx / "Dockerfile").write_text(DOCKERFILE.format(marker="two"))
            last, _, last_cached = timed_build(t, name, ctx)
        out["build"] = {"cold_s": cold, "warm_s": warm, "warm_cached_steps": warm_cached,
                        "last_run_changed_s": last, "last_cached_steps": last_cached,
                        "bare_pip": summary(bare)}
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=120) as api:
            # One create of each first: base's snapshot of this size is made then.
            timed_create(api)
            timed_create(api, template=name)
            time.sleep(3)
            custom, base = [], []
            for _ in range(args.creates):
                base.append(timed_create(api))
                custom.append(timed_create(api, template=name))
        out["create"] = {"custom": summary(custom), "base": summary(base)}
    finally:
        server.teardown()
        shutil.rmtree(work, ignore_errors=True)

    b = out["build"]
    print(f"build, cold (pip install of 5 packages)  {b['cold_s']:.1f} s | bare runsc run of "
          f"the same pip install p50 {ms(b['bare_pip']['p50'])} | ratio "
          f"{b['cold_s'] / b['bare_pip']['p50']:.1f}")
    print(f"build, warm (unchanged, {b['warm_cached_steps']} steps cached)  {b['warm_s']:.1f} s")
    print(f"build, last RUN changed ({b['last_cached_steps']} cached)  "
          f"{b['last_run_changed_s']:.1f} s")
    c = out["create"]
    print(f"create -> running, custom template  p50 {ms(c['custom']['p50'])} p95 "
          f"{ms(c['custom']['p95'])} | base p50 {ms(c['base']['p50'])} p95 "
          f"{ms(c['base']['p95'])} | ratio p50 {c['custom']['p50'] / c['base']['p50']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

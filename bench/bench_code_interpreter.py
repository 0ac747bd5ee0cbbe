"""Code interpreter benchmarks, with their baselines measured in the same run
and through the same real SDK (`e2b-code-interpreter`, whose `e2b`
dependency is the plain SDK), on one server as sbx ships (spare runtimes
on; no warm pool, which serves only `base` at 1x512):

- create -> first `run_code("1+1")` done, against a create of `base` plus
  one `commands.run("true")` (target: ratio of p50s <= 1.3);
- `run_code("1+1")` round trip, against `commands.run("true")` in the same
  sandbox (target: <= the command + 15 ms);
- a 1,000-point matplotlib line chart to PNG (and its chart), round trip
  (target: p50 <= 300 ms).

Creates alternate between the two templates, so host noise hits both.
Run as root:  .venv/bin/python -m bench.bench_code_interpreter [--creates 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.stats import ms, summary
from tests.compat.test_code_interpreter import READY_LINE, sdk_python
from tests.integration.server import Server, free_subnet

# Runs in the SDK's own environment; prints one JSON object.
DRIVER = r"""
import json, sys, time
from e2b import Sandbox as Base
from e2b_code_interpreter import Sandbox

creates, rounds = int(sys.argv[1]), int(sys.argv[2])
out = {"base_create_cmd": [], "ci_create_first": [], "run_code": [], "command": [], "chart": []}
CHART = ("import numpy as np, matplotlib.pyplot as plt\n"
         "plt.figure(); plt.plot(np.arange(1000), np.random.rand(1000)); plt.show()")
for i in range(creates):
    t0 = time.perf_counter()
    b = Base.create("base", timeout=120)
    b.commands.run("true")
    out["base_create_cmd"].append(time.perf_counter() - t0)
    b.kill()
    t0 = time.perf_counter()
    s = Sandbox.create(timeout=300)
    ex = s.run_code("1+1")
    out["ci_create_first"].append(time.perf_counter() - t0)
    assert ex.text == "2", ex
    if i == creates - 1:
        def timed(name, fn):
            t0 = time.perf_counter(); r = fn(); out[name].append(time.perf_counter() - t0)
            return r
        for _ in range(rounds):
            timed("run_code", lambda: s.run_code("1+1"))
            timed("command", lambda: s.commands.run("true"))
        for _ in range(rounds):
            ex = timed("chart", lambda: s.run_code(CHART))
            assert any(r.png for r in ex.results) and any(r.chart for r in ex.results), ex
    s.kill()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    server = Server(Path(f"/var/tmp/sbx-bench-{uuid.uuid4().hex[:8]}"), subnet=free_subnet(22),
                    extra_env={"SBX_CODE_INTERPRETER": "1", "SBX_SPARE_RUNTIMES": "2"})
    try:
        server.start()
        while READY_LINE not in server.tail(1 << 20):
            if server.proc is None or server.proc.poll() is not None:
                raise RuntimeError(server.tail())
            time.sleep(1)
        key = server.new_org(f"bench-{uuid.uuid4().hex[:8]}")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("E2B_")},
               "E2B_API_URL": server.url, "E2B_SANDBOX_URL": server.url, "E2B_API_KEY": key}
        res = subprocess.run([str(sdk_python()), "-c", DRIVER, str(args.creates),
                              str(args.rounds)], capture_output=True, text=True, env=env,
                             timeout=3600)
        if res.returncode != 0:
            sys.exit(res.stderr[-3000:])
        data: dict[str, list[float]] = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        server.teardown()
    stats = {name: summary(values) for name, values in data.items()}
    for name, s in stats.items():
        print(f"{name:18} n={s['n']:3}  p50 {ms(s['p50']):>10}  p95 {ms(s['p95']):>10}  "
              f"min {ms(s['min']):>10}  max {ms(s['max']):>10}")
    first = stats["ci_create_first"]["p50"] / stats["base_create_cmd"]["p50"]
    extra = stats["run_code"]["p50"] - stats["command"]["p50"]
    print(f"create -> first run_code / (base create + command): {first:.2f} (target <= 1.3)")
    print(f"run_code('1+1') - commands.run('true'): {ms(extra)} (target <= 15 ms)")
    print(f"1,000-point chart p50: {ms(stats['chart']['p50'])} (target <= 300 ms)")


if __name__ == "__main__":
    main()

"""Egress proxy cost, next to a direct connection in the same run.

A sandbox (gVisor) talks to a server in the tests' fake internet (a netns
on the host). The same server listens on 443 (which sbx redirects through
its transparent proxy) and on 8443 (which sbx forwards straight, no proxy
in the path): the difference is the proxy's cost. Measured from inside
the sandbox with curl (its own timer: no process start-up in the figure):

- latency of one HTTPS request on a new connection (TCP + TLS + GET),
  pass-through (SNI checked, bytes spliced) and intercepted (a transform on
  the domain: TLS terminated with the sandbox's CA, headers injected);
  added p50 = p50(proxied) - p50(direct); runs interleaved;
- throughput of a 100 MiB HTTPS download through the proxy as a ratio of
  the direct one (and the intercepted and plain-HTTP relay paths, for
  information).

Run as root:  .venv/bin/python -m bench.bench_egress [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.stats import summary
from sbx import Sandbox
from tests.integration.egress import inet as n
from tests.integration.server import Server, free_subnet, leaks

MIB = 1 << 20


def curl_times(sb: Sandbox, url: str, count: int, resolve: str) -> list[float]:
    """time_total of count curl runs, each on a new connection."""
    cmd = (f"for i in $(seq {count}); do curl -sS --http1.1 -o /dev/null "
           f"--resolve {resolve} -w '%{{time_total}}\\n' '{url}'; done")
    r = sb.commands.run(cmd, timeout=600)
    assert r.exit_code == 0, r.stderr
    return [float(x) for x in r.stdout.split()]


def download(sb: Sandbox, url: str, resolve: str, size: int) -> float:
    """Bytes per second of one download."""
    r = sb.commands.run(f"curl -sS --http1.1 -o /dev/null --resolve {resolve} "
                        f"-w '%{{size_download}} %{{speed_download}}' '{url}?n={size}'",
                        timeout=600)
    assert r.exit_code == 0, r.stderr
    got, speed = r.stdout.split()
    assert int(float(got)) == size, r.stdout
    return float(speed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200, help="latency samples per path")
    ap.add_argument("--rounds", type=int, default=3, help="downloads per path")
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    size = args.size_mib * MIB

    work = Path(tempfile.mkdtemp(prefix="sbx-bench-egress-", dir="/var/tmp"))
    try:
        results = run(work, args, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def run(work: Path, args: argparse.Namespace, size: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with n.fake_internet(work) as net:
        server = Server(work / "data", subnet=free_subnet(), extra_env={
            "SBX_EGRESS_UPSTREAM_DNS": net.dns, "SBX_EGRESS_UPSTREAM_CA": str(net.ca_path)})
        try:
            server.start()
            key = server.new_org(f"bench-{uuid.uuid4().hex[:6]}")
            policy = {"mode": "allow-all", "transforms": [
                {"domain": "echo.test", "inject_headers": {"Authorization": "Bearer bench-secret"}}
            ]}
            sb = Sandbox.create(api_url=server.url, api_key=key, vcpu=2, memory_mib=1024,
                                network_policy=policy)
            try:
                # The test CA for the direct path (8443 is not intercepted).
                sb.files.write("/tmp/test-ca.pem", net.ca_path.read_text())
                sb.commands.run("cat /etc/ssl/certs/ca-certificates.crt /tmp/test-ca.pem "
                                "> /tmp/all.pem", timeout=30)
                opts = "--cacert /tmp/all.pem"
                bench_r = f"bench.test:443:{n.BENCH_IP} --resolve bench.test:8443:{n.BENCH_IP}"
                echo_r = f"echo.test:443:{n.ECHO_IP} --resolve echo.test:8443:{n.ECHO_IP}"
                paths = {
                    "direct": ("https://bench.test:8443/x", bench_r),
                    "passthrough": ("https://bench.test/x", bench_r),
                    "intercepted": ("https://echo.test/x", echo_r),
                }
                for url, resolve in paths.values():  # warm caches, leaves, sessions
                    curl_times(sb, url, 5, f"{resolve} {opts}")
                lat: dict[str, list[float]] = {k: [] for k in paths}
                step = 20
                for _ in range(max(1, args.requests // step)):
                    for name, (url, resolve) in paths.items():
                        lat[name] += curl_times(sb, url, step, f"{resolve} {opts}")
                p50 = {k: statistics.median(v) for k, v in lat.items()}
                results["latency_ms"] = {
                    k: {m: round(x, 3) for m, x in summary([t * 1000 for t in v]).items()}
                    for k, v in lat.items()}
                results["added_p50_ms"] = {
                    "passthrough": round((p50["passthrough"] - p50["direct"]) * 1000, 3),
                    "intercepted": round((p50["intercepted"] - p50["direct"]) * 1000, 3),
                }
                downloads = {
                    "direct_https": ("https://bench.test:8443/bytes", bench_r),
                    "proxied_https": ("https://bench.test/bytes", bench_r),
                    "intercepted_https": ("https://echo.test/bytes", echo_r),
                    "direct_http": (f"http://{n.BENCH_IP}:8080/bytes", bench_r),
                    "relayed_http": (f"http://{n.BENCH_IP}/bytes", bench_r),
                }
                speeds: dict[str, list[float]] = {k: [] for k in downloads}
                for _ in range(args.rounds):
                    for name, (url, resolve) in downloads.items():
                        speeds[name].append(download(sb, url, f"{resolve} {opts}", size))
                med = {k: statistics.median(v) for k, v in speeds.items()}
                results["download_MiB_per_s"] = {k: round(v / MIB, 1) for k, v in med.items()}
                results["throughput_ratio"] = {
                    "proxied_https": round(med["proxied_https"] / med["direct_https"], 3),
                    "intercepted_https": round(med["intercepted_https"] / med["direct_https"], 3),
                    "relayed_http": round(med["relayed_http"] / med["direct_http"], 3),
                }
            finally:
                sb.kill()
        finally:
            tag = server.node_tag
            server.teardown()
            assert leaks(tag) == {}, leaks(tag)
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(json.dumps(results, indent=2))
    lp = results["latency_ms"]
    print(f"\nHTTPS request on a new connection, p50: direct {lp['direct']['p50']} ms, "
          f"pass-through {lp['passthrough']['p50']} ms, intercepted {lp['intercepted']['p50']} ms")
    print(f"added p50: pass-through {results['added_p50_ms']['passthrough']} ms (target <= 2), "
          f"intercepted {results['added_p50_ms']['intercepted']} ms (target <= 10)")
    d = results["download_MiB_per_s"]
    print(f"{args.size_mib} MiB HTTPS download: direct {d['direct_https']} MiB/s, proxied "
          f"{d['proxied_https']} MiB/s, ratio {results['throughput_ratio']['proxied_https']} "
          "(target >= 0.5)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

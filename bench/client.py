"""The sbx API calls the benchmarks time."""

from __future__ import annotations

import time

import httpx

SMALL = {"template_name": "base", "vcpu": 1, "memory_mib": 512}


def timed_create(api: httpx.Client, template: str = "base") -> float:
    """Seconds for one `POST /v1/sandbox/` (1 vCPU, 512 MiB) to answer 201;
    the sandbox is deleted again, untimed."""
    t0 = time.perf_counter()
    r = api.post("/v1/sandbox/", json={**SMALL, "template_name": template})
    took = time.perf_counter() - t0
    assert r.status_code == 201, r.text
    api.delete(f"/v1/sandbox/{r.json()['id']}")
    return took

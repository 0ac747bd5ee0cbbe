"""The escape probes, against real gVisor sandboxes in each mode. A probe
escaped if it got an answer from the far side or its token reached the
fake internet; each refusal must also be fast and audited."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sbx import Sandbox
from tests.integration.egress import inet as n
from tests.integration.egress.conftest import EgressEnv, Outcome, Report, run_probes
from tests.integration.egress.probes import Context, Probe, catalogue

pytestmark = pytest.mark.integration

MODES = ("deny-all", "custom", "allow-all")


def _matches(entry: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(entry.get(k) == v for k, v in want.items())


@pytest.fixture(scope="session")
def probe_results(egress_env: EgressEnv, mode_sandboxes: dict[str, Sandbox],
                  probe_report: Report) -> dict[str, Outcome]:
    from tests.integration.netfixtures import host_ipv4

    env = egress_env
    neighbour = mode_sandboxes["neighbour"]
    outcomes: dict[str, Outcome] = {}
    for mode in MODES:
        sb = mode_sandboxes[mode]
        gw = env.gateway(sb)
        ctx = Context(gateway=gw, host_ip=host_ipv4(), api_port=env.server.port,
                      proxy_port=env.proxy_port, dns_port=env.dns_port,
                      neighbour_ip=env.ip(neighbour),
                      subnet_other_ip=gw.rsplit(".", 1)[0] + ".250")
        probes = [p for p in catalogue(ctx) if p.mode == mode]
        results = run_probes(sb, [p.spec for p in probes])
        time.sleep(1.0)  # the audit writer batches; the internet's log flushes
        audit = env.audit(sb)
        seen = env.inet.entries()
        for p in probes:
            res = results.get(p.id, {"ok": False, "error": "no result"})
            reason = _escape_reason(p, res, seen, audit)
            outcome = Outcome(p, res, bool(reason), reason)
            outcomes[p.id] = outcome
            probe_report.outcomes.append(outcome)
    return outcomes


def _escape_reason(p: Probe, res: dict[str, Any], seen: list[dict[str, Any]],
                   audit: list[dict[str, Any]]) -> str:
    import json

    if res.get("ok"):
        return f"the far side answered: {res}"
    if p.leak_at is not None:
        seen = [e for e in seen if e.get("local") == p.leak_at]
    hits = [e for e in seen if p.token in json.dumps(e)]
    hits += [e for e in seen for mark in p.leak_marks if mark in json.dumps(e)]
    if hits:
        return f"reached the internet: {hits[0]}"
    return ""


def _all_probes() -> list[str]:
    ctx = Context("10.0.0.1", "10.0.0.1", 1, 2, 3, "10.0.0.6", "10.0.0.250")
    return [p.id for p in catalogue(ctx)]


def test_there_are_at_least_40_probes() -> None:
    assert len(_all_probes()) >= 40


@pytest.mark.parametrize("probe_id", _all_probes())
def test_probe_does_not_escape(probe_results: dict[str, Outcome], egress_env: EgressEnv,
                               mode_sandboxes: dict[str, Sandbox], probe_id: str) -> None:
    o = probe_results[probe_id]
    assert not o.escaped, o.reason
    if o.probe.fast:
        assert o.result["elapsed"] < 2.0, f"refusal too slow: {o.result}"
    if o.probe.audit is not None:
        audit = egress_env.audit(mode_sandboxes[o.probe.mode])
        assert any(_matches(e, o.probe.audit) for e in audit), (
            f"no audit entry like {o.probe.audit}; result {o.result}")


def test_internet_server_is_reachable_from_the_host(egress_env: EgressEnv) -> None:
    """The probes would pass vacuously if the fake internet were down."""
    import httpx

    r = httpx.get(f"http://{n.ALLOWED_IP}/alive", headers={"Host": "allowed.test"}, timeout=5)
    assert r.status_code == 200 and "hello" in r.text

"""Fixtures of the egress conformance suite: its own internet (a netns the
tests create), one sbx server that trusts the internet's CA and resolves
through its DNS, and one sandbox per mode. The probe report is printed at
the end of the session and written into docs/security.md."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sbx import Sandbox
from tests.integration.egress import inet as n
from tests.integration.egress.probes import Probe
from tests.integration.server import Server, free_subnet, leaks, mounts_of

ROOT = Path(__file__).resolve().parents[3]
SECURITY_DOC = ROOT / "docs" / "security.md"
PROBE_SCRIPT = Path(__file__).with_name("probe.py")
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
SECRET = "Bearer sk-live-Zq8wX2vN4mP7rT1y"
SECRET_KEY = "key-Hd93kLm20PqWzX"

CUSTOM = {
    "mode": "custom",
    "allow_domains": ["allowed.test", "*.wild.test", "multi.test", "echo.test"],
    "allow_cidrs": [f"{n.BENCH_IP}/32"],
    "transforms": [{"domain": "echo.test",
                    "inject_headers": {"Authorization": SECRET, "X-Api-Key": SECRET_KEY},
                    "strip_headers": ["X-Sandbox-Secret"]}],
}
POLICIES: dict[str, dict[str, Any]] = {
    "deny-all": {"mode": "deny-all"},
    "custom": CUSTOM,
    "allow-all": {"mode": "allow-all"},
}


@dataclass
class EgressEnv:
    server: Server
    inet: n.FakeInternet
    key: str
    proxy_port: int
    dns_port: int
    made: list[Sandbox] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def create(self, policy: dict[str, Any] | None, **kw: Any) -> Sandbox:
        sb = Sandbox.create(api_url=self.server.url, api_key=self.key, vcpu=1, memory_mib=512,
                            network_policy=policy, **kw)
        self.made.append(sb)
        return sb

    def gateway(self, sb: Sandbox) -> str:
        link = f"s{self.server.node_tag}{sb.sandbox_id[4:]}"
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", link],
                             capture_output=True, text=True, check=True).stdout.split()
        return out[3].split("/")[0]

    def ip(self, sb: Sandbox) -> str:
        parts = self.gateway(sb).split(".")
        parts[-1] = str(int(parts[-1]) + 1)
        return ".".join(parts)

    def audit(self, sb: Sandbox, **params: Any) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.server.url}/v1/sandbox/{sb.sandbox_id}/audit",
                      headers=self.headers, params={"limit": 1000, **params}, timeout=30)
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries

    def put_policy(self, sb: Sandbox, policy: dict[str, Any]) -> httpx.Response:
        return httpx.put(f"{self.server.url}/v1/sandbox/{sb.sandbox_id}/network_policy",
                         headers=self.headers, json=policy, timeout=30)


def run_probes(sb: Sandbox, specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    sb.files.write("/opt/probe.py", PROBE_SCRIPT.read_text())
    sb.files.write("/tmp/probes.json", json.dumps(specs))
    r = sb.commands.run("python3 /opt/probe.py < /tmp/probes.json", timeout=300)
    assert r.exit_code == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return {res["id"]: res for res in results}


@pytest.fixture(scope="session")
def egress_env() -> Iterator[EgressEnv]:
    work = Path(tempfile.mkdtemp(prefix="sbx-egress-", dir="/var/tmp"))
    try:
        with n.fake_internet(work) as net:
            server = Server(work / "data", subnet=free_subnet(), extra_env={
                "SBX_EGRESS_UPSTREAM_DNS": net.dns,
                "SBX_EGRESS_UPSTREAM_CA": str(net.ca_path),
                "SBX_RECONCILE_INTERVAL_S": "2",
            })
            env: EgressEnv | None = None
            try:
                server.start()
                server.admin("tier", "set", "egress-tests", "--max-sandboxes", "12")
                key = server.admin("org", "create", f"egress-{uuid.uuid4().hex[:6]}",
                                   "--tier", "egress-tests").strip().splitlines()[-1]
                m = re.search(r"resolver on :(\d+), proxy on :(\d+)", server.tail(100_000))
                assert m, server.tail()
                env = EgressEnv(server, net, key, int(m.group(2)), int(m.group(1)))
                yield env
            finally:
                if env is not None:
                    for sb in env.made:
                        with contextlib.suppress(Exception):
                            sb.kill()
                tag, data_dir = server.node_tag, server.data_dir
                server.teardown()
                assert leaks(tag) == {}, leaks(tag)
                assert mounts_of(data_dir) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def mode_sandboxes(egress_env: EgressEnv) -> dict[str, Sandbox]:
    boxes = {mode: egress_env.create(policy) for mode, policy in POLICIES.items()}
    boxes["neighbour"] = egress_env.create({"mode": "allow-all"})
    return boxes


# -- the probe report ---------------------------------------------------------------------------
@dataclass
class Outcome:
    probe: Probe
    result: dict[str, Any]
    escaped: bool
    reason: str


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    def markdown(self) -> str:
        modes = sorted({o.probe.mode for o in self.outcomes})
        escapes = [o for o in self.outcomes if o.escaped]
        lines = [
            f"Probes tried: **{len(self.outcomes)}**, escapes: **{len(escapes)}** "
            f"(modes: {', '.join(modes)}; written by `tests/integration/egress`).",
            "",
            "| probe | mode | category | what it tries | result |",
            "|---|---|---|---|---|",
        ]
        for o in self.outcomes:
            verdict = "**ESCAPED**: " + o.reason if o.escaped else "refused"
            rcode = o.result.get("rcode")
            detail = (o.result.get("error") or o.result.get("head", "")[:40]
                      or o.result.get("out", "")[:40]
                      or (RCODES.get(rcode, f"rcode {rcode}") if rcode is not None else ""))
            detail = str(detail).replace("|", "/").replace("\n", " ").strip()
            lines.append(f"| `{o.probe.id}` | {o.probe.mode} | {o.probe.category} | "
                         f"{o.probe.what} | {verdict} ({o.result.get('elapsed', '?')} s"
                         f"{'; ' + detail if detail else ''}) |")
        return "\n".join(lines)


@pytest.fixture(scope="session")
def probe_report() -> Iterator[Report]:
    report = Report()
    yield report
    if not report.outcomes:
        return
    text = report.markdown()
    print("\n\n== egress escape probes ==\n" + text + "\n")
    begin, end = "<!-- egress-probes:begin -->", "<!-- egress-probes:end -->"
    if SECURITY_DOC.exists():
        doc = SECURITY_DOC.read_text()
        if begin in doc and end in doc:
            head, rest = doc.split(begin, 1)
            _, tail = rest.split(end, 1)
            SECURITY_DOC.write_text(f"{head}{begin}\n{text}\n{end}{tail}")

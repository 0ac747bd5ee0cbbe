"""Seed 002 (`POST /sandboxes` and siblings): every field and every status
code, against a real server, tiers and wallets set with `sbx admin`."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.server import Server, leaks, seed002_error

pytestmark = pytest.mark.integration


class Org:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.name = f"o-{uuid.uuid4().hex[:10]}"
        self.key = server.new_org(self.name)
        self.http = httpx.Client(base_url=server.url, headers={"X-API-Key": self.key},
                                 timeout=60)

    def tier(self, **limits: int) -> None:
        """Put the organisation on a tier of its own with these limits."""
        args = []
        for k, v in limits.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.server.admin("tier", "set", self.name, *args)
        self.server.admin("org", "set", self.name, "--tier", self.name)

    def wallet(self, which: str, amount: str) -> None:
        self.server.admin("wallet", "set", self.name, amount, "--wallet", which)

    def create(self, **body: Any) -> httpx.Response:
        return self.http.post("/sandboxes", json=body)

    def cleanup(self) -> None:
        for sb in self.http.get("/sandboxes").json():
            self.http.delete(f"/sandboxes/{sb['id']}")
        self.http.close()


@pytest.fixture
def org(sbx_server: Server) -> Iterator[Org]:
    o = Org(sbx_server)
    yield o
    o.cleanup()


error = seed002_error


def test_create_answer_has_every_field(org: Org) -> None:
    security = {"pii": {"enabled": False, "action": "redact", "types": ["email"]},
                "audit": {"enabled": True, "include_bodies": False, "retention_days": 7}}
    r = org.create(template="base", timeout=120, envs={"A": "1"},
                   metadata={"project": "p", "run_id": "r1"}, security=security,
                   on_timeout="kill", network={"mode": "deny-all"})
    assert r.status_code == 201, r.text
    sb = r.json()
    assert sb["id"].startswith("sbx-") and len(sb["id"]) == 12
    assert sb["template_id"] == "tpl-base" and sb["name"] == "base"
    assert sb["state"] == "running"
    assert sb["envd_access_token"] and sb["security_proxy_token"]
    assert sb["envd_access_token"] != sb["security_proxy_token"]
    assert sb["envd_port"] == 49983
    assert sb["internal_ip"].count(".") == 3
    assert sb["created_at"].endswith("Z")
    assert sb["metadata"] == {"project": "p", "run_id": "r1"}
    assert sb["timeout"] == 120 and sb["on_timeout"] == "kill"
    assert sb["security"] == security
    assert sb["network"]["mode"] == "deny-all"
    # The sandbox really answers at its internal address (envd is up).
    assert httpx.get(f"http://{sb['internal_ip']}:49983/health").status_code in (200, 204)
    got = org.http.get(f"/sandboxes/{sb['id']}").json()
    assert got["security"] == security and got["metadata"] == sb["metadata"]
    # The same sandbox reads on the seed-000 surface.
    v1 = org.http.get(f"/v1/sandbox/{sb['id']}").json()
    assert v1["id"] == sb["id"] and v1["state"] == "running"
    assert org.http.delete(f"/sandboxes/{sb['id']}").status_code == 204


def test_empty_template_is_base_and_envs_are_set(org: Org) -> None:
    r = org.create(envs={"GREETING": "hello"})
    assert r.status_code == 201, r.text
    sb = r.json()
    assert sb["template_id"] == "tpl-base" and sb["name"] == "base"
    from sbx import Sandbox
    with Sandbox.connect(sb["id"], api_url=org.server.url, api_key=org.key) as s:
        assert s.commands.run("echo $GREETING").stdout == "hello\n"


INVALID: list[tuple[str, Any, str]] = [
    ("template not a string", {"template": 5}, "template"),
    ("template unknown", {"template": "no-such"}, "template"),
    ("timeout negative", {"timeout": -1}, "timeout"),
    ("timeout not an integer", {"timeout": "60"}, "timeout"),
    ("envs value not a string", {"envs": {"A": 1}}, "envs"),
    ("metadata value not a string", {"metadata": {"k": 2}}, "metadata"),
    ("metadata not an object", {"metadata": ["k"]}, "metadata"),
    ("network mode unknown", {"network": {"mode": "open"}}, "network"),
    ("network cidr invalid", {"network": {"mode": "custom", "allow_cidrs": ["x"]}}, "network"),
    ("security malformed JSON", {"security": "{not json"}, "security"),
    ("security not an object", {"security": 7}, "security"),
    ("security unknown action", {"security": {"pii": {"action": "nuke"}}}, "security.pii"),
    ("security threshold > 1", {"security": {"injection": {"threshold": 2}}}, "security"),
    ("security unknown key", {"security": {"firewall": True}}, "security"),
    ("on_timeout unknown", {"on_timeout": "explode"}, "on_timeout"),
    ("unknown field", {"template": "base", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_is_400(org: Org, case: str, body: Any, field: str) -> None:
    msg = error(org.create(**body), 400)
    assert field in msg, msg
    assert org.http.get("/sandboxes").json() == []


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null"])
def test_malformed_body_is_400(org: Org, raw: bytes) -> None:
    error(org.http.post("/sandboxes", content=raw), 400)


def test_401(sbx_server: Server) -> None:
    for headers in ({}, {"X-API-Key": "sbx_nope"}):
        error(httpx.post(sbx_server.url + "/sandboxes", json={}, headers=headers), 401)


def test_resources_is_403(org: Org) -> None:
    msg = error(org.create(template="base", resources={"vcpu": 1}), 403)
    assert "resources" in msg
    error(org.create(resources=None), 403)
    assert org.http.get("/sandboxes").json() == []


def test_tier_limits_are_403(org: Org) -> None:
    org.tier(max_vcpu=1)  # the base template has 2 vCPUs
    assert "vcpu" in error(org.create(), 403)
    org.tier(max_vcpu=8, max_memory_mib=512)  # ...and 1024 MiB
    assert "memory" in error(org.create(), 403)
    org.tier(max_memory_mib=8192, max_disk_mib=100)
    assert "disk" in error(org.create(), 403)
    org.tier(max_disk_mib=20480, max_session_s=600)
    assert "timeout" in error(org.create(timeout=601), 403)
    assert "timeout" in error(org.create(timeout=0), 403)
    r = org.create(timeout=600)
    assert r.status_code == 201, r.text


def test_wallets_are_402(org: Org) -> None:
    org.wallet("sandbox", "0")
    assert "sandbox wallet" in error(org.create(), 402)
    org.wallet("sandbox", "5")
    org.wallet("guardrails", "0")
    guarded = {"pii": {"enabled": True}}
    assert "guardrails wallet" in error(org.create(security=guarded), 402)
    # Without guardrails the guardrails wallet does not matter.
    r = org.create(security={"pii": {"enabled": False}})
    assert r.status_code == 201, r.text
    org.server.admin("wallet", "topup", org.name, "3", "--wallet", "guardrails")
    r = org.create(security=guarded)
    assert r.status_code == 201, r.text


def test_concurrency_limit_is_429(org: Org) -> None:
    org.tier(max_sandboxes=1)
    assert org.create().status_code == 201
    r = org.create()
    assert "limit" in error(r, 429).lower()
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers.get("Should-Retry") == "false"


def test_create_rate_is_429(org: Org) -> None:
    org.tier(creates_per_minute=2, max_sandboxes=10)
    for _ in range(2):
        r = org.create()
        assert r.status_code == 201, r.text
        org.http.delete(f"/sandboxes/{r.json()['id']}")
    r = org.create()
    assert "rate" in error(r, 429).lower()
    assert 1 <= int(r.headers["Retry-After"]) <= 60


def test_failed_start_is_503_and_leaves_nothing(org: Org, sbx_server: Server) -> None:
    # A template whose root filesystem cannot boot: the runtime fails for real.
    empty = sbx_server.data_dir / "broken-rootfs"
    empty.mkdir(exist_ok=True)
    name = f"broken{uuid.uuid4().hex[:6]}"
    with sqlite3.connect(sbx_server.data_dir / "sbx.db") as db:
        db.execute(
            "INSERT INTO templates (id, name, org_id, vcpu, memory_mib, disk_mib, rootfs, status,"
            " created_at) VALUES (?, ?, NULL, 1, 512, 512, ?, 'ready', '2026-01-01 00:00:00')",
            (f"tpl-{name}", name, str(empty)),
        )
    before = leaks(sbx_server.node_tag)
    t0 = time.monotonic()
    r = org.create(template=name)
    error(r, 503)
    assert r.headers.get("Should-Retry") == "false"
    assert time.monotonic() - t0 < 15
    assert org.http.get("/sandboxes").json() == []
    assert leaks(sbx_server.node_tag) == before


def test_timeout_kills_and_zero_disables(org: Org, sbx_server: Server) -> None:
    a = org.create(timeout=2).json()
    t_created = time.monotonic()
    b = org.create(timeout=0).json()
    assert b["timeout"] == 0
    # It fires within a second or two of its deadline (the check runs every
    # second; the kill itself takes a moment on a loaded machine).
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        got = org.http.get(f"/sandboxes/{a['id']}").json()
        if got["state"] == "killed":
            break
        time.sleep(0.25)
    assert got["state"] == "killed"
    assert time.monotonic() - t_created < 12
    runsc_root = Path("/run/sbx") / sbx_server.node_tag / "runsc"
    import subprocess
    ids = subprocess.run(["runsc", "--root", str(runsc_root), "list", "-quiet"],
                         capture_output=True, text=True).stdout.split()
    assert a["id"] not in ids and b["id"] in ids
    assert org.http.get(f"/sandboxes/{b['id']}").json()["state"] == "running"
    # Killed sandboxes leave the default list but stay readable.
    listed = [s["id"] for s in org.http.get("/sandboxes").json()]
    assert a["id"] not in listed and b["id"] in listed
    killed = [s["id"] for s in org.http.get("/sandboxes", params={"state": "killed"}).json()]
    assert a["id"] in killed


def test_list_filters_and_siblings(org: Org) -> None:
    org.tier(max_sandboxes=5)
    x = org.create(metadata={"team": "a", "run": "1"}).json()
    y = org.create(metadata={"team": "b"}).json()
    ids = lambda **p: sorted(s["id"] for s in org.http.get("/sandboxes", params=p).json())  # noqa: E731
    assert ids() == sorted([x["id"], y["id"]])
    assert ids(metadata="team=a") == [x["id"]]
    assert ids(metadata="team=a&run=1") == [x["id"]]
    assert ids(metadata="team=c") == []
    assert ids(state="running") == sorted([x["id"], y["id"]])
    assert ids(state="paused") == []
    error(org.http.get("/sandboxes", params={"state": "bogus"}), 400)
    listed = org.http.get("/sandboxes").json()[0]
    assert "envd_access_token" not in listed
    # Timeout.
    assert org.http.post(f"/sandboxes/{x['id']}/timeout", json={"timeout": 900}).status_code == 204
    assert org.http.get(f"/sandboxes/{x['id']}").json()["timeout"] == 900
    error(org.http.post(f"/sandboxes/{x['id']}/timeout", json={"timeout": -5}), 400)
    # Unknown and foreign ids.
    error(org.http.get("/sandboxes/sbx-00000000"), 404)
    error(org.http.delete("/sandboxes/sbx-00000000"), 404)
    other = Org(org.server)
    try:
        error(other.http.get(f"/sandboxes/{x['id']}"), 404)
        error(other.http.delete(f"/sandboxes/{x['id']}"), 404)
    finally:
        other.cleanup()
    # Delete: gone from the list, reads as deleted on seed 002.
    assert org.http.delete(f"/sandboxes/{y['id']}").status_code == 204
    assert org.http.get(f"/sandboxes/{y['id']}").json()["state"] == "deleted"
    assert json.dumps(org.http.get("/sandboxes").json())

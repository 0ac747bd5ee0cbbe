"""Tenancy and money against a real server: running time charged to the
sandbox wallet, an empty wallet pausing the organisation's sandboxes
(nothing lost) and refusing creates, a top-up resuming them; the usage API;
the create limits holding under 50 parallel creates and across a restart,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from tests.integration.server import Server, own_server
from tests.postgres import Postgres

pytestmark = pytest.mark.integration

# Written aside and renamed: a read never sees the file empty (between `>`
# truncating it and echo writing).
COUNTER = "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; " \
          "mv /tmp/n.new /tmp/n; sleep 0.2; done' >/dev/null 2>&1 &"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def metered(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server metering every second, on each store."""
    env = {"SBX_METER_INTERVAL_S": "1"}
    if request.param == "sqlite":
        with own_server(env) as server:
            yield server
        return
    pg: Postgres = request.getfixturevalue("postgres")
    with pg.database() as url, own_server(env, database_url=url) as server:
        yield server


def new_org(server: Server, **tier: str) -> tuple[str, httpx.Client]:
    name = f"b-{uuid.uuid4().hex[:8]}"
    key = server.new_org(name)
    args = []
    for k, v in tier.items():
        args += [f"--{k.replace('_', '-')}", v]
    server.admin("tier", "set", name, *args)
    server.admin("org", "set", name, "--tier", name)
    return name, httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60)


def delete_all(api: httpx.Client) -> None:
    for sb in api.get("/sandboxes").json():
        api.delete(f"/sandboxes/{sb['id']}")
    api.close()


def parallel_creates(api: httpx.Client, n: int) -> list[int]:
    """The status codes of n creates sent all at once."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: api.post("/sandboxes", json={}).status_code, range(n)))


def wait_for(what: str, cond: object, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run(api: httpx.Client, sid: str, cmd: str) -> str:
    from sbx import Sandbox

    sb = Sandbox.connect(sid, api_url=str(api.base_url), api_key=api.headers["X-API-Key"])
    try:
        return sb.commands.run(cmd).stdout
    finally:
        sb.close()


def test_empty_wallet_pauses_and_topup_resumes(metered: Server) -> None:
    # 1 credit per vCPU-second: a 1-vCPU sandbox spends 2 credits in ~2 s.
    name, api = new_org(metered, price_vcpu_s="1", price_gib_s="0", max_sandboxes="5")
    try:
        metered.admin("wallet", "set", name, "2", "--wallet", "sandbox")
        r = api.post("/v1/sandbox/", json={"template_name": "base", "vcpu": 1,
                                            "memory_mib": 512})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        run(api, sid, COUNTER + " echo 'kept' > /home/user/f; sleep 0.5")
        started = int(run(api, sid, "cat /tmp/n"))
        wait_for("the wallet-empty pause",
                 lambda: api.get(f"/v1/sandbox/{sid}").json()["state"] == "paused", 40)
        # Empty: creates are refused, and so is a resume by hand.
        r = api.post("/sandboxes", json={})
        assert r.status_code == 402 and "sandbox wallet" in r.json()["message"]
        assert api.post(f"/v1/sandbox/{sid}/resume").status_code == 402
        usage = api.get("/v1/usage").json()
        balance = Decimal(next(w["balance"] for w in usage["wallets"]
                               if w["wallet"] == "sandbox"))
        assert balance <= 0
        line = next(s for s in usage["by_sandbox"] if s["sandbox_id"] == sid)
        assert line["vcpu_seconds"] >= 2
        assert Decimal(line["sandbox_charges"]) == Decimal(usage["totals"]["sandbox_charges"])
        assert Decimal(usage["totals"]["credits_added"]) == 2
        # A top-up brings it back by itself, with its processes and files.
        metered.admin("wallet", "topup", name, "1000", "--wallet", "sandbox")
        wait_for("the resume after the top-up",
                 lambda: api.get(f"/v1/sandbox/{sid}").json()["state"] == "running", 40)
        first = int(run(api, sid, "cat /tmp/n"))
        time.sleep(1)
        # The same loop, counting on from where it was (not started again).
        assert int(run(api, sid, "cat /tmp/n")) > first > started
        assert run(api, sid, "cat /home/user/f") == "kept\n"
        assert api.post("/sandboxes", json={}).status_code == 201
    finally:
        delete_all(api)


def test_usage_api_shape_and_bad_input(metered: Server) -> None:
    name, api = new_org(metered, price_vcpu_s="0.001", max_sandboxes="5")
    try:
        sid = api.post("/sandboxes", json={"timeout": 60}).json()["id"]
        time.sleep(2)
        api.delete(f"/sandboxes/{sid}")
        u = api.get("/usage").json()
        assert set(u) == {"organization", "from", "to", "wallets", "by_day", "by_sandbox",
                          "totals"}
        assert u["organization"] == name
        assert [s["sandbox_id"] for s in u["by_sandbox"]] == [sid]
        assert len(u["by_day"]) == 1 and u["by_day"][0]["vcpu_seconds"] >= 2 * 2
        # Time after the kill is not charged.
        before = api.get("/usage").json()["totals"]["vcpu_seconds"]
        time.sleep(1.5)
        assert api.get("/usage").json()["totals"]["vcpu_seconds"] == before
        for params in ({"from": "yesterday"}, {"from": "2026-12-02", "to": "2026-12-01"},
                       {"from": "2020-01-01", "to": "2026-01-01"}):
            r = api.get("/usage", params=params)
            assert r.status_code == 400 and r.json()["code"] == 400, params
        assert api.get("/v1/usage", params={"to": "x"}).status_code == 400
        assert httpx.get(metered.url + "/usage").status_code == 401
        # The SDK (sync and async) and the CLI read the same report.
        import asyncio
        import csv
        import io
        import json
        import subprocess

        from sbx.sdk import AuthenticationError, InvalidRequestError, get_usage, get_usage_async
        from tests.integration.server import SBX

        key = api.headers["X-API-Key"]
        report = get_usage(api_url=metered.url, api_key=key)
        assert report["totals"]["vcpu_seconds"] == before
        again = asyncio.run(get_usage_async(api_url=metered.url, api_key=key))
        assert again["by_sandbox"] == report["by_sandbox"]
        with pytest.raises(InvalidRequestError):
            get_usage("bad", api_url=metered.url, api_key=key)
        with pytest.raises(AuthenticationError):
            get_usage(api_url=metered.url, api_key="sbx_wrong")
        env = {"SBX_API_URL": metered.url, "SBX_API_KEY": key, "PATH": "/usr/bin:/bin"}

        def cli(*args: str) -> str:
            res = subprocess.run([SBX, "usage", *args], capture_output=True, text=True,
                                 env=env, timeout=60)
            assert res.returncode == 0, res.stderr
            return res.stdout

        rows = list(csv.DictReader(io.StringIO(cli("--by", "sandbox", "--format", "csv"))))
        assert [r["sandbox_id"] for r in rows] == [sid, "total"]
        assert float(rows[0]["vcpu_seconds"]) == before
        assert json.loads(cli("--format", "json"))["organization"] == name
        table = cli()
        assert "total" in table and "sandbox wallet" in table
    finally:
        api.close()


def test_50_parallel_creates_against_a_limit_of_3(metered: Server) -> None:
    _, api = new_org(metered, max_sandboxes="3", creates_per_minute="1000")
    try:
        codes = parallel_creates(api, 50)
        assert sorted(codes).count(201) == 3, codes
        assert set(codes) == {201, 429}
        assert len(api.get("/sandboxes").json()) == 3
    finally:
        delete_all(api)


def test_create_rate_holds_in_parallel_and_across_a_restart(metered: Server) -> None:
    _, api = new_org(metered, max_sandboxes="10", creates_per_minute="3")
    try:
        codes = parallel_creates(api, 50)
        assert codes.count(201) == 3, codes
        metered.stop()
        metered.start()
        r = api.post("/sandboxes", json={})
        assert r.status_code == 429 and "rate" in r.json()["message"].lower()
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    finally:
        delete_all(api)

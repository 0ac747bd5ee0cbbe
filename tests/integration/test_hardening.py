"""Hostile requests (issue 15): bodies that are not JSON at all, cursors past
SQLite's integers and bodies of hundreds of MiB each get a 4xx in the
called surface's error shape, change nothing, and cost the server no
memory; sandbox file uploads through the gateway stay unbounded."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sbx import Sandbox
from tests.integration.server import Server, seed002_error

pytestmark = pytest.mark.integration

# Bodies that made the standard library's JSON parser raise (issue 15).
NOT_UTF8 = b'\xff\xfe{"template": "base"}'
DEEP = b"[" * 50_000 + b"]" * 50_000
LONG_INT = b'{"timeout": ' + b"9" * 5000 + b"}"
LONG_INT_E2B = b'{"templateID": "base", "timeout": ' + b"9" * 5000 + b"}"
HOSTILE = {"not-utf8": NOT_UTF8, "deep": DEEP, "long-int": LONG_INT,
           "long-int-e2b": LONG_INT_E2B}


@pytest.fixture
def sandbox(sbx_server: Server, org_key: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(api_url=sbx_server.url, api_key=org_key, vcpu=1, memory_mib=512)
    try:
        yield sb
    finally:
        sb.kill()


def _v1_error(r: httpx.Response, status: int) -> str:
    """Seed 000's error shape: `{"message", "errors"?}`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"message", "errors"} and isinstance(body["message"], str), body
    return str(body["message"])


@pytest.mark.parametrize("path", ["/sandboxes", "/v2/sandboxes", "/v1/sandbox/"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_bodies_that_are_not_json_are_400_and_change_nothing(
        api: httpx.Client, path: str, name: str) -> None:
    before = api.get("/sandboxes", params={"state": "running,paused"}).json()
    r = api.post(path, content=HOSTILE[name], headers={"Content-Type": "application/json"})
    if path.startswith("/v1/"):
        assert _v1_error(r, 400) == "Invalid request"
        assert r.json()["errors"][0]["field"] == "body"
        assert "malformed JSON" in r.json()["errors"][0]["error"]
    else:
        assert "malformed JSON" in seed002_error(r, 400)
    assert api.get("/sandboxes", params={"state": "running,paused"}).json() == before


def test_security_policy_as_a_json_string_that_is_not_json_is_400(api: httpx.Client) -> None:
    for text in ["[" * 50_000, '{"audit": {"retention_days": ' + "9" * 5000 + "}}"]:
        r = api.post("/sandboxes", json={"template": "base", "security": text})
        assert "security: malformed security JSON" in seed002_error(r, 400)


@pytest.mark.parametrize("since", ["9999999999999999999999", "9223372036854775808", "²"])
def test_an_audit_cursor_past_sqlites_integers_is_400(
        api: httpx.Client, sandbox: Sandbox, since: str) -> None:
    sid = sandbox.sandbox_id
    r = api.get(f"/sandboxes/{sid}/audit", params={"since": since})
    assert "since" in seed002_error(r, 400)
    r = api.get(f"/v1/sandbox/{sid}/audit", params={"since": since})
    assert _v1_error(r, 400) == "Invalid request"
    assert r.json()["errors"][0]["field"] == "since"
    # The largest id still works: an empty page.
    r = api.get(f"/v1/sandbox/{sid}/audit", params={"since": str(2**63 - 1)})
    assert r.status_code == 200 and r.json()["entries"] == [], r.text


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _post_huge(url: str, path: str, key: str, mib: int, chunked: bool) -> bytes:
    """POST a body of mib MiB over a raw socket (httpx would buffer it),
    stopping when the server answers or closes; answer the response head."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/json\r\n")
    head += ("Transfer-Encoding: chunked\r\n\r\n" if chunked
             else f"Content-Length: {mib << 20}\r\n\r\n")
    chunk = b"[" * (1 << 20)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode())
        try:
            for _ in range(mib):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading: its answer is waiting
        return s.recv(65536)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_body_is_413_without_growing_the_server(
        sbx_server: Server, org_key: str, chunked: bool) -> None:
    assert sbx_server.proc is not None
    pid = sbx_server.proc.pid
    before = _rss_kib(pid)
    for path, shape in [("/v1/sandbox/", "v1"), ("/sandboxes", "002"), ("/v2/sandboxes", "002")]:
        answer = _post_huge(sbx_server.url, path, org_key, 400, chunked)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:300]
        if shape == "v1":
            assert body == b'{"message":"The request body is larger than 1 MiB"}', body
        else:
            assert body == b'{"code":413,"message":"The request body is larger than 1 MiB"}'
    # Three bodies of 400 MiB: the server's memory moved by far less than one.
    assert _rss_kib(pid) - before < 64 * 1024, (before, _rss_kib(pid))
    # Just under the bound is an ordinary (here: invalid) request.
    r = httpx.post(sbx_server.url + "/v1/sandbox/", headers={"X-API-Key": org_key},
                   content=b" " * ((1 << 20) - 2) + b"{}", timeout=30)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "template_name", r.text


def test_uploads_to_a_sandbox_through_the_gateway_are_not_bounded(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * (12 << 12)  # 12 MiB
    sandbox.files.write("/tmp/big.bin", data)
    r = sandbox.commands.run("sha256sum /tmp/big.bin")
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()


# Found by fuzzing (schemathesis and a hostile-value fuzz of every route):
# each was a 500.
@pytest.mark.parametrize("query", [{"to": "0001-01-05"}, {"to": "9999-12-31"},
                                   {"from": "0001-01-01", "to": "0001-01-01"},
                                   {"from": "1969-12-31", "to": "1970-01-01"}])
def test_usage_days_at_the_ends_of_the_calendar_are_400(api: httpx.Client,
                                                        query: dict[str, str]) -> None:
    r = api.get("/v1/usage", params=query)
    assert _v1_error(r, 400) == "Invalid request"
    assert "from 1970-01-01 to 9999-12-30" in r.json()["errors"][0]["error"]
    assert "from 1970-01-01 to 9999-12-30" in seed002_error(api.get("/usage", params=query), 400)


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_audit_times_that_leave_datetimes_range_in_utc_are_400(
        api: httpx.Client, sandbox: Sandbox, since: str) -> None:
    r = api.get(f"/v1/sandbox/{sandbox.sandbox_id}/audit", params={"since": since})
    assert r.json()["errors"][0]["field"] == "since" and r.status_code == 400, r.text
    # The ends themselves, in UTC, are ordinary times.
    r = api.get(f"/v1/sandbox/{sandbox.sandbox_id}/audit", params={"since": "0001-01-01"})
    assert r.status_code == 200 and r.json()["next_since"] == "0001-01-01", r.text


@pytest.mark.parametrize("entry", ["9" * 300, "no spaces allowed.test", "1.2.3.4/33"])
def test_e2b_allow_out_entries_that_are_neither_network_nor_domain_are_400(
        api: httpx.Client, entry: str) -> None:
    body = {"templateID": "base", "network": {"allowOut": [entry], "denyOut": ["0.0.0.0/0"]}}
    before = api.get("/sandboxes").json()
    assert "network.allowOut" in seed002_error(api.post("/v2/sandboxes", json=body), 400)
    assert api.get("/sandboxes").json() == before


# Values that broke parsers, validators or the store somewhere once.
_HOSTILE_VALUES: list[Any] = [
    None, True, -1, 0, 2**63, -(2**63) - 1, 10**30, 1.5, 1e308, "", "x" * 70_000, "\u0000",
    "a\r\nb: c", "ü.test", "*", "..", "*.", "1.2.3.4/33", "::/0", "0.0.0.0/0", "10.0.0.1/8",
    [], {}, [[[[[]]]]], {"a": {"b": {"c": {}}}}, ["x"] * 200, {"k" * 300: "v"}, "9" * 500,
    "NaN", "%00", "../..", "sbx-00000000", {"mode": "custom"},
    {"domain": "x.test", "inject_headers": {"A\r\nB": "v"}},
    {"domain": "x.test", "inject_headers": {"A": "v\r\nX: y"}},
]
_QUERY_VALUES = ["", "0", "-1", "1001", "9" * 25, "9223372036854775808", "²", "\x00",
                 "0001-01-01", "9999-12-31", "0001-01-01T00:00:00+01:00", "2026-13-01",
                 "x" * 5000, "running,paused", "killed", "a=b&c", "٣", " 1"]


def _mutate(rnd: random.Random, value: Any) -> Any:
    """value with one member (at any depth) replaced by a hostile value."""
    if isinstance(value, dict) and value and rnd.random() < 0.8:
        out = dict(value)
        key = rnd.choice(list(out))
        out[key] = _mutate(rnd, out[key])
        return out
    if isinstance(value, list) and value and rnd.random() < 0.7:
        items = list(value)
        i = rnd.randrange(len(items))
        items[i] = _mutate(rnd, items[i])
        return items
    return rnd.choice(_HOSTILE_VALUES)


def test_a_seeded_fuzz_of_every_body_and_query_finds_no_server_error(
        sbx_server: Server) -> None:
    """A bounded, deterministic replay of the fuzzing that found the 500s
    above: hostile values at every depth of every JSON body, and hostile
    query values, on a sandbox of an organisation that may create no more
    (valid creates are refused, not started)."""
    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    key = sbx_server.new_org(name)
    client = httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": key}, timeout=60)
    sb = Sandbox.create(api_url=sbx_server.url, api_key=key, vcpu=1, memory_mib=512)
    try:
        sbx_server.admin("tier", "set", "fuzz-none", "--max-sandboxes", "0")
        sbx_server.admin("org", "set", name, "--tier", "fuzz-none")
        sid = sb.sandbox_id
        policy = {"mode": "custom", "allow_domains": ["a.test"], "allow_cidrs": ["1.2.3.0/24"],
                  "transforms": [{"domain": "a.test", "inject_headers": {"X": "y"},
                                  "strip_headers": ["Z"]}]}
        bodies: dict[tuple[str, str], dict[str, Any]] = {
            ("POST", "/v1/sandbox/"): {"template_name": "base", "vcpu": 1, "memory_mib": 512,
                                       "env_vars": {"A": "b"}, "network_policy": policy},
            ("POST", "/sandboxes"): {"template": "base", "timeout": 60, "envs": {"A": "b"},
                                     "metadata": {"k": "v"}, "network": policy,
                                     "security": {"pii": {"enabled": True},
                                                  "audit": {"retention_days": 3}}},
            ("POST", "/v2/sandboxes"): {"templateID": "base", "timeout": 60,
                                        "network": {"allowOut": ["a.test", "1.2.3.4"],
                                                    "denyOut": ["0.0.0.0/0"]},
                                        "metadata": {"k": "v"}, "envVars": {"A": "b"}},
            ("POST", f"/v1/sandbox/{sid}/timeout"): {"timeout_min": 5},
            ("PUT", f"/v1/sandbox/{sid}/network_policy"): policy,
            ("POST", f"/sandboxes/{sid}/timeout"): {"timeout": 300},
            ("POST", f"/sandboxes/{sid}/connect"): {"timeout": 300},
            ("POST", f"/sandboxes/{sid}/resume"): {"timeout": 300},
        }
        queries = {"/v1/usage": ["from", "to"], "/usage": ["from", "to"],
                   f"/v1/sandbox/{sid}/audit": ["since", "limit"],
                   f"/sandboxes/{sid}/audit": ["since", "limit"],
                   "/sandboxes": ["state", "limit", "metadata", "nextToken"],
                   "/v2/sandboxes": ["state", "limit", "metadata", "nextToken"],
                   "/v1/sandbox/": ["state"]}
        rnd = random.Random(15)
        failures = []
        for _ in range(300):
            method, path = rnd.choice(sorted(bodies))
            raw = json.dumps(_mutate(rnd, bodies[method, path])).encode()
            r = client.request(method, path, content=raw,
                               headers={"Content-Type": "application/json"})
            if r.status_code >= 500:
                failures.append((method, path, raw[:200], r.text))
        for _ in range(150):
            path = rnd.choice(sorted(queries))
            params = {k: rnd.choice(_QUERY_VALUES) for k in queries[path] if rnd.random() < 0.7}
            r = client.get(path, params=params)
            if r.status_code >= 500:
                failures.append(("GET", path, params, r.text))
        assert failures == []
        # Nothing was made (the one made before may have been given a
        # timeout of 0 and be gone).
        assert {s["id"] for s in client.get("/v1/sandbox/").json()} <= {sid}
    finally:
        sb.kill()
        client.close()

"""Seed 000 (`POST /v1/sandbox/` and siblings): every field bound on both
sides, every error code, against a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.server import Server

pytestmark = pytest.mark.integration

BASE: dict[str, Any] = {"template_name": "base", "vcpu": 1, "memory_mib": 512}


def body(**changes: Any) -> dict[str, Any]:
    out = dict(BASE)
    for k, v in changes.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def policy(**kw: Any) -> dict[str, Any]:
    return {"mode": "custom", **kw}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("template missing", body(template_name=...), "template_name"),
    ("template empty", body(template_name=""), "template_name"),
    ("template not a string", body(template_name=5), "template_name"),
    ("template unknown", body(template_name="no-such-template"), "template_name"),
    ("env_vars not an object", body(env_vars="A=1"), "env_vars"),
    ("env_vars value not a string", body(env_vars={"A": 1}), "env_vars.A"),
    ("env_vars bad name", body(env_vars={"A=B": "1"}), "env_vars.A=B"),
    ("vcpu missing", body(vcpu=...), "vcpu"),
    ("vcpu below 1", body(vcpu=0), "vcpu"),
    ("vcpu above 8", body(vcpu=9), "vcpu"),
    ("vcpu as string", body(vcpu="2"), "vcpu"),
    ("vcpu as float", body(vcpu=1.5), "vcpu"),
    ("vcpu as bool", body(vcpu=True), "vcpu"),
    ("memory missing", body(memory_mib=...), "memory_mib"),
    ("memory below 512", body(memory_mib=510), "memory_mib"),
    ("memory above 8192", body(memory_mib=8194), "memory_mib"),
    ("memory odd", body(memory_mib=1025), "memory_mib"),
    ("memory as string", body(memory_mib="1024"), "memory_mib"),
    ("timeout below 1", body(timeout_min=0), "timeout_min"),
    ("timeout above 480", body(timeout_min=481), "timeout_min"),
    ("timeout as string", body(timeout_min="5"), "timeout_min"),
    ("auto_pause not bool", body(auto_pause="yes"), "auto_pause"),
    ("auto_pause as int", body(auto_pause=1), "auto_pause"),
    ("policy not an object", body(network_policy="allow-all"), "network_policy"),
    ("policy mode missing", body(network_policy={}), "network_policy.mode"),
    ("policy mode unknown", body(network_policy={"mode": "open"}), "network_policy.mode"),
    ("allow_domains > 50",
     body(network_policy=policy(allow_domains=[f"d{i}.example.com" for i in range(51)])),
     "network_policy.allow_domains"),
    ("allow_domains bad name", body(network_policy=policy(allow_domains=["ok.com", "bad..com"])),
     "network_policy.allow_domains.1"),
    ("allow_cidrs > 10",
     body(network_policy=policy(allow_cidrs=[f"10.{i}.0.0/16" for i in range(11)])),
     "network_policy.allow_cidrs"),
    ("allow_cidrs invalid", body(network_policy=policy(allow_cidrs=["10.0.0.0/33"])),
     "network_policy.allow_cidrs.0"),
    ("allow_cidrs not a cidr", body(network_policy=policy(allow_cidrs=["10.0.0.0/8", "x"])),
     "network_policy.allow_cidrs.1"),
    ("allow lists outside custom",
     body(network_policy={"mode": "allow-all", "allow_domains": ["a.com"]}), "network_policy"),
    ("transforms > 20",
     body(network_policy=policy(transforms=[{"domain": f"a{i}.com"} for i in range(21)])),
     "network_policy.transforms"),
    ("transform without domain",
     body(network_policy=policy(transforms=[{"inject_headers": {"A": "b"}}])),
     "network_policy.transforms.0.domain"),
    ("transform header not a string",
     body(network_policy=policy(transforms=[{"domain": "a.com", "inject_headers": {"A": 1}}])),
     "network_policy.transforms.0.inject_headers.A"),
    ("transform strip not a list",
     body(network_policy=policy(transforms=[{"domain": "a.com", "strip_headers": "A"}])),
     "network_policy.transforms.0.strip_headers"),
    ("unknown field", body(memory_mb=512), "memory_mb"),
]


def live_ids(api: httpx.Client) -> set[str]:
    return {s["id"] for s in api.get("/v1/sandbox/").json()}


@pytest.mark.parametrize(("case", "payload", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_field_is_400_naming_it(
    api: httpx.Client, case: str, payload: dict[str, Any], field: str
) -> None:
    r = api.post("/v1/sandbox/", json=payload)
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["message"] == "Invalid request"
    fields = [e["field"] for e in data["errors"]]
    assert field in fields, data
    assert all(isinstance(e["error"], str) and e["error"] for e in data["errors"])


def test_every_failing_field_is_listed_and_nothing_changes(api: httpx.Client) -> None:
    before = live_ids(api)
    r = api.post("/v1/sandbox/", json={
        "template_name": 3, "vcpu": 0, "memory_mib": 513, "timeout_min": 999,
        "network_policy": {"mode": "custom", "allow_cidrs": ["nope"]},
    })
    assert r.status_code == 400
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"template_name", "vcpu", "memory_mib", "timeout_min",
                      "network_policy.allow_cidrs.0"}
    for payload, _, _ in [(p, c, f) for c, p, f in INVALID]:
        assert api.post("/v1/sandbox/", json=payload).status_code == 400
    assert live_ids(api) == before


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null", b'"text"'])
def test_malformed_body_is_400(api: httpx.Client, raw: bytes) -> None:
    r = api.post("/v1/sandbox/", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["message"] == "Invalid request"
    assert r.json()["errors"][0]["field"] == "body"


VALID: list[tuple[str, dict[str, Any]]] = [
    ("vcpu 1 memory 512 timeout 1", body(vcpu=1, memory_mib=512, timeout_min=1)),
    ("vcpu 8 memory 8192 timeout 480", body(vcpu=8, memory_mib=8192, timeout_min=480)),
    ("auto_pause and env", body(auto_pause=True, env_vars={"A": "1", "EMPTY": ""})),
    ("custom policy at its limits", body(network_policy=policy(
        allow_domains=[f"d{i}.example.com" for i in range(49)] + ["*.wild.example.com"],
        allow_cidrs=[f"10.{i}.0.0/16" for i in range(9)] + ["192.0.2.7"],
        transforms=[{"domain": f"api{i}.example.com", "inject_headers": {"Authorization": "x"},
                     "strip_headers": ["Cookie"]} for i in range(20)],
    ))),
    ("deny-all", body(network_policy={"mode": "deny-all"})),
]


@pytest.mark.parametrize(("case", "payload"), VALID, ids=[c[0] for c in VALID])
def test_valid_bounds_create(api: httpx.Client, case: str, payload: dict[str, Any]) -> None:
    r = api.post("/v1/sandbox/", json=payload)
    assert r.status_code == 201, r.text
    sb = r.json()
    try:
        assert sb["id"].startswith("sbx-") and len(sb["id"]) == 12
        assert sb["id"][4:].isalnum() and sb["id"][4:] == sb["id"][4:].lower()
        assert sb["template_id"] == "tpl-base"
        assert sb["vcpu"] == payload["vcpu"] and sb["memory_mib"] == payload["memory_mib"]
        assert sb["disk_mib"] >= 1
        assert sb["state"] == "running"
        assert sb["auto_pause"] == payload.get("auto_pause", False)
        assert sb["created_at"].endswith("Z") or sb["created_at"].endswith("+00:00")
        assert sb["envd_access_token"]
        assert sb["timeout_min"] == payload.get("timeout_min", 5)
        want = payload.get("network_policy", {"mode": "allow-all"})
        assert sb["network_policy"]["mode"] == want["mode"]
        for key in ("allow_domains", "allow_cidrs"):
            assert sb["network_policy"][key] == want.get(key, [])
        for t in sb["network_policy"]["transforms"]:
            # Brokered secrets are never shown back.
            assert set(t["inject_headers"].values()) <= {"********"}
        got = api.get(f"/v1/sandbox/{sb['id']}").json()
        assert got["id"] == sb["id"] and got["envd_access_token"] == sb["envd_access_token"]
    finally:
        assert api.delete(f"/v1/sandbox/{sb['id']}").json()["state"] == "deleted"


def test_auth(sbx_server: Server, api: httpx.Client, org_key: str) -> None:
    url = sbx_server.url + "/v1/sandbox/"
    for headers in ({}, {"X-API-Key": "sbx_wrong"}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic " + org_key}):
        r = httpx.post(url, json=BASE, headers=headers)
        assert r.status_code == 401, headers
        assert set(r.json()) == {"message"} and r.json()["message"]
        assert httpx.get(url, headers=headers).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {org_key}"}).status_code == 200
    # 401 comes before validation: a bad body without a key is still 401.
    assert httpx.post(url, content=b"{", headers={}).status_code == 401


def test_limit_of_three_is_409_and_frees_on_delete(api: httpx.Client) -> None:
    ids = []
    try:
        for _ in range(3):
            r = api.post("/v1/sandbox/", json=BASE)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        r = api.post("/v1/sandbox/", json=BASE)
        assert r.status_code == 409
        assert set(r.json()) == {"message"} and "limit" in r.json()["message"].lower()
        assert len(live_ids(api)) == 3
        api.delete(f"/v1/sandbox/{ids.pop()}")
        r = api.post("/v1/sandbox/", json=BASE)
        assert r.status_code == 201
        ids.append(r.json()["id"])
    finally:
        for i in ids:
            api.delete(f"/v1/sandbox/{i}")


def test_not_found_and_other_org(sbx_server: Server, api: httpx.Client) -> None:
    for method, path in [("GET", "/v1/sandbox/sbx-00000000"),
                         ("DELETE", "/v1/sandbox/sbx-00000000"),
                         ("POST", "/v1/sandbox/sbx-00000000/timeout")]:
        r = api.request(method, path, json={"timeout_min": 5})
        assert r.status_code == 404 and "message" in r.json()
    other = sbx_server.new_org("other-" + api.headers["X-API-Key"][-6:])
    sb = api.post("/v1/sandbox/", json=BASE).json()
    try:
        h = {"X-API-Key": other}
        base = sbx_server.url + f"/v1/sandbox/{sb['id']}"
        assert httpx.get(base, headers=h).status_code == 404
        assert httpx.delete(base, headers=h).status_code == 404
        assert httpx.post(base + "/timeout", json={"timeout_min": 9}, headers=h).status_code == 404
        assert sb["id"] not in {s["id"] for s in
                                httpx.get(sbx_server.url + "/v1/sandbox/", headers=h).json()}
        assert api.get(f"/v1/sandbox/{sb['id']}").json()["state"] == "running"
    finally:
        api.delete(f"/v1/sandbox/{sb['id']}")


def test_list_get_delete(api: httpx.Client) -> None:
    sb = api.post("/v1/sandbox/", json=BASE).json()
    listed = api.get("/v1/sandbox/").json()
    assert [s["id"] for s in listed] == [sb["id"]]
    assert "envd_access_token" not in listed[0] or listed[0]["envd_access_token"] is None
    deleted = api.delete(f"/v1/sandbox/{sb['id']}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
    assert api.get(f"/v1/sandbox/{sb['id']}").json()["state"] == "deleted"
    assert api.get("/v1/sandbox/").json() == []
    # Deleting again is harmless.
    assert api.delete(f"/v1/sandbox/{sb['id']}").json()["state"] == "deleted"


def test_set_timeout_validation(api: httpx.Client) -> None:
    sb = api.post("/v1/sandbox/", json=BASE).json()
    try:
        path = f"/v1/sandbox/{sb['id']}/timeout"
        for bad in ({"timeout_min": 0}, {"timeout_min": 481}, {"timeout_min": "5"}, {}):
            r = api.post(path, json=bad)
            assert r.status_code == 400 and r.json()["errors"][0]["field"] == "timeout_min"
        r = api.post(path, json={"timeout_min": 480})
        assert r.status_code == 200 and r.json()["timeout_min"] == 480
    finally:
        api.delete(f"/v1/sandbox/{sb['id']}")


def test_openapi_and_health(sbx_server: Server) -> None:
    assert httpx.get(sbx_server.url + "/health").status_code == 200
    spec = httpx.get(sbx_server.url + "/openapi.json").json()
    assert "/v1/sandbox/" in spec["paths"]
    assert json.dumps(spec)

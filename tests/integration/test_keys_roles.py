"""Keys and roles against a real server: an organisation's key sees and acts
on its organisation alone (an admin key too); the admin API wants an admin
key (the bootstrap key is one); expired and revoked keys are refused at
once; listings show prefixes, never keys. Keys made here are revoked at the
end (organisations cannot be deleted; they go with the server's data dir)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.server import Server, seed002_error

pytestmark = pytest.mark.integration


def client(server: Server, key: str | None) -> httpx.Client:
    headers = {"X-API-Key": key} if key is not None else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


error = seed002_error


def v1_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert "code" not in body and isinstance(body["message"], str), body
    return str(body["message"])


class Admin:
    """The bootstrap key's client, and the organisations a test makes (whose
    keys it revokes at the end)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = client(server, server.api_key)
        self.orgs: list[str] = []

    def new_org(self) -> tuple[str, str]:
        name = f"k-{uuid.uuid4().hex[:10]}"
        self.orgs.append(name)
        return name, self.server.new_org(name)

    def key(self, org: str, **body: Any) -> dict[str, Any]:
        r = self.http.post("/admin/keys", json={"org": org, **body})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def keys(self, org: str | None = None) -> list[dict[str, Any]]:
        r = self.http.get("/admin/keys", params={"org": org} if org else None)
        assert r.status_code == 200, r.text
        return list(r.json())

    def cleanup(self) -> None:
        for name in self.orgs:
            for k in self.keys(name):
                if k["state"] != "revoked":
                    self.http.post(f"/admin/keys/{k['id']}/revoke")
            assert {k["state"] for k in self.keys(name)} <= {"revoked", "expired"}
        self.http.close()


@pytest.fixture
def admin(sbx_server: Server) -> Iterator[Admin]:
    a = Admin(sbx_server)
    try:
        yield a
    finally:
        a.cleanup()


def test_bootstrap_key_is_admin_and_admin_api_manages_orgs_and_keys(admin: Admin) -> None:
    orgs = admin.http.get("/admin/orgs")
    assert orgs.status_code == 200, orgs.text
    default = [o for o in orgs.json() if o["name"] == "default"]
    assert len(default) == 1 and default[0]["tier"] == "default"
    assert default[0]["id"].startswith("org_")
    assert all(not o["name"].startswith("__") for o in orgs.json())  # no warm-pool org
    boot = [k for k in admin.keys("default") if k["prefix"] == admin.server.api_key[:12]]
    assert len(boot) == 1 and boot[0]["role"] == "admin" and boot[0]["state"] == "active"

    # A new organisation and its first key: member, shown once.
    name = f"k-{uuid.uuid4().hex[:10]}"
    admin.orgs.append(name)
    r = admin.http.post("/admin/orgs", json={"name": name})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    made = r.json()
    assert made["name"] == name and made["tier"] == "default" and made["id"].startswith("org_")
    first = made["key"]
    assert first["role"] == "member" and first["org"] == name and first["key"].startswith("sbx_")
    assert first["prefix"] == first["key"][:12] and first["expires_at"] is None
    assert name in {o["name"] for o in admin.http.get("/admin/orgs").json()}
    with client(admin.server, first["key"]) as member:
        assert member.get("/v1/sandbox/").json() == []
        assert error(member.get("/admin/orgs"), 403) == "admin key required"
    error(admin.http.post("/admin/orgs", json={"name": name}), 409)

    # An admin key for it works on the admin API; revoked, it stops at once.
    second = admin.key(name, role="admin", expires_in_s=3600)
    assert second["role"] == "admin" and second["expires_at"]
    with client(admin.server, second["key"]) as other_admin:
        listed = other_admin.get("/admin/keys", params={"org": name})
        assert listed.status_code == 200, listed.text
        assert [k["id"] for k in listed.json()] == [first["id"], second["id"]]
        text = listed.text
        assert first["key"] not in text and second["key"] not in text
        assert first["prefix"] in text and second["prefix"] in text
        assert all("key" not in k and "key_hash" not in k for k in listed.json())
        r = admin.http.post(f"/admin/keys/{second['id']}/revoke")
        assert r.status_code == 204, r.text
        assert error(other_admin.get("/admin/orgs"), 401) == "API key revoked"
        assert v1_error(other_admin.get("/v1/sandbox/"), 401) == "API key revoked"
    # Again: no error, still revoked, revoked_at unchanged.
    before = {k["id"]: k for k in admin.keys(name)}[second["id"]]
    assert admin.http.post(f"/admin/keys/{second['prefix']}/revoke").status_code == 204
    after = {k["id"]: k for k in admin.keys(name)}[second["id"]]
    assert after == before and after["state"] == "revoked"


def test_admin_api_needs_an_admin_key(admin: Admin) -> None:
    name, member_key = admin.new_org()
    [member] = admin.keys(name)
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/admin/orgs", None),
        ("POST", "/admin/orgs", {"name": f"k-{uuid.uuid4().hex[:10]}"}),
        ("GET", f"/admin/keys?org={name}", None),
        ("POST", "/admin/keys", {"org": name, "role": "admin"}),
        ("POST", f"/admin/keys/{member['id']}/revoke", None),
    ]
    for key, status, message in ((None, 401, "Missing API key"),
                                 ("sbx_not-a-key", 401, "Invalid API key"),
                                 (member_key, 403, "admin key required")):
        with client(admin.server, key) as c:
            for method, path, body in calls:
                assert error(c.request(method, path, json=body), status) == message, path
    # None of it changed anything.
    assert admin.keys(name) == [member]
    names = {o["name"] for o in admin.http.get("/admin/orgs").json()}
    assert calls[1][2] is not None and calls[1][2]["name"] not in names


BAD_ORGS: list[Any] = [
    {}, {"name": ""}, {"name": 5}, {"name": "has space"}, {"name": "x" * 201},
    {"name": "ok", "tier": "no-such-tier"}, {"name": "ok", "tier": 1},
    {"name": "ok", "colour": "red"}, [], "name",
]


def test_admin_bodies_are_validated_and_change_nothing(admin: Admin) -> None:
    name, _ = admin.new_org()
    orgs_before = admin.http.get("/admin/orgs").json()
    keys_before = admin.keys()
    for body in BAD_ORGS:
        error(admin.http.post("/admin/orgs", json=body), 400)
    assert "tier" in error(admin.http.post("/admin/orgs",
                                           json={"name": "ok", "tier": "no-such-tier"}), 400)
    bad_keys: list[Any] = [
        {}, {"org": ""}, {"org": "no-such-org"}, {"org": name, "role": "root"},
        {"org": name, "expires_in_s": 0}, {"org": name, "expires_in_s": -5},
        {"org": name, "expires_in_s": "60"}, {"org": name, "expires_in_s": 1.5},
        {"org": name, "expires_in_s": True}, {"org": name, "extra": 1},
        {"org": "__warm_pool__"}, None,
    ]
    for body in bad_keys:
        error(admin.http.post("/admin/keys", json=body), 400)
    for raw in (b"", b"{", b"null"):
        error(admin.http.post("/admin/keys", content=raw), 400)
    assert "org" in error(admin.http.post("/admin/keys", json={"org": "no-such-org"}), 400)
    error(admin.http.get("/admin/keys", params={"org": "no-such-org"}), 404)
    error(admin.http.post("/admin/keys/key_0000000000000000/revoke"), 404)
    assert "8" in error(admin.http.post("/admin/keys/sbx_/revoke"), 400)
    assert admin.http.get("/admin/orgs").json() == orgs_before
    assert admin.keys() == keys_before


def test_expired_key_is_401(admin: Admin) -> None:
    name, _ = admin.new_org()
    # The CLI's key first: starting the CLI takes seconds on a busy host,
    # which must not eat the API key's lifetime before its first use.
    cli = admin.server.admin("key", "create", "--org", name, "--expires-in", "4s")
    api = admin.key(name, expires_in_s=4)
    cli_key = cli.strip().splitlines()[-1]
    assert "expires" in cli
    with client(admin.server, api["key"]) as a, client(admin.server, cli_key) as b:
        assert a.get("/v1/sandbox/").status_code == 200
        assert b.get("/sandboxes").status_code == 200
        time.sleep(4.5)
        assert v1_error(a.get("/v1/sandbox/"), 401) == "API key expired"
        assert error(b.get("/sandboxes"), 401) == "API key expired"
        assert error(b.get("/admin/orgs"), 401) == "API key expired"
    states = {k["prefix"]: k["state"] for k in admin.keys(name)}
    assert states[api["prefix"]] == "expired" and states[cli_key[:12]] == "expired"


def test_revoked_key_is_401_at_once_and_cli_lists_prefixes_only(admin: Admin) -> None:
    name, first = admin.new_org()
    out = admin.server.admin("key", "create", "--org", name, "--admin")
    assert "admin" in out
    second = out.strip().splitlines()[-1]
    with client(admin.server, second) as c:
        assert c.get("/admin/orgs").status_code == 200
        revoked = admin.server.admin("key", "revoke", second[:12])
        assert "Revoked" in revoked and second not in revoked
        assert v1_error(c.get("/v1/sandbox/"), 401) == "API key revoked"
        assert error(c.get("/sandboxes"), 401) == "API key revoked"
    # Revoking again is no error.
    admin.server.admin("key", "revoke", second[:12])
    table = admin.server.admin("key", "list", "--org", name)
    rows = json.loads(admin.server.admin("key", "list", "--org", name, "--json"))
    for text in (table, json.dumps(rows)):
        assert first not in text and second not in text
        assert first[:12] in text and second[:12] in text
    assert [(r["prefix"], r["role"], r["state"]) for r in rows] == [
        (first[:12], "member", "active"), (second[:12], "admin", "revoked")]
    assert all(set(r) == {"id", "org", "prefix", "role", "created_at", "expires_at",
                          "revoked_at", "state"} for r in rows)
    # The organisation's first key is untouched.
    with client(admin.server, first) as c:
        assert c.get("/sandboxes").status_code == 200


def test_an_org_sees_and_acts_only_on_its_own_sandboxes(admin: Admin) -> None:
    _, a_key = admin.new_org()
    b_name, b_key = admin.new_org()
    b_admin = admin.key(b_name, role="admin")["key"]
    with client(admin.server, a_key) as a:
        r = a.post("/sandboxes", json={"template": "base", "timeout": 120})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        try:
            # Neither B's member key nor B's admin key reaches A's sandbox on
            # either surface: the same 404 as for no sandbox at all.
            for key in (b_key, b_admin):
                with client(admin.server, key) as b:
                    assert sid not in {s["id"] for s in b.get("/sandboxes").json()}
                    assert sid not in {s["id"] for s in b.get("/v1/sandbox/").json()}
                    error(b.get(f"/sandboxes/{sid}"), 404)
                    error(b.post(f"/sandboxes/{sid}/timeout", json={"timeout": 5}), 404)
                    error(b.get(f"/sandboxes/{sid}/audit"), 404)
                    error(b.delete(f"/sandboxes/{sid}"), 404)
                    v1_error(b.get(f"/v1/sandbox/{sid}"), 404)
                    v1_error(b.post(f"/v1/sandbox/{sid}/timeout", json={"timeout_min": 1}), 404)
                    v1_error(b.post(f"/v1/sandbox/{sid}/pause"), 404)
                    v1_error(b.delete(f"/v1/sandbox/{sid}"), 404)
            # A's sandbox is as it was, on both surfaces.
            got = a.get(f"/sandboxes/{sid}")
            assert got.status_code == 200 and got.json()["state"] == "running"
            assert got.json()["timeout"] == 120
            assert a.get(f"/v1/sandbox/{sid}").json()["state"] == "running"
        finally:
            assert a.delete(f"/sandboxes/{sid}").status_code == 204
        assert a.get(f"/sandboxes/{sid}").json()["state"] in ("deleted", "killed")

"""Real answers against the models the OpenAPI document declares for them
(issue 15): the models forbid undeclared fields, so an answer that grows,
loses or retypes a field fails here before the contract drifts."""

from __future__ import annotations

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from sbx.api.schemas.answers import (
    AuditPage,
    Error,
    ErrorV1,
    Health,
    KeyCreated,
    KeyOut,
    OrgCreated,
    OrgOut,
    Sandbox002,
    TemplateDetail,
    TemplateOut,
    UsageOut,
)
from sbx.api.schemas.v1 import SandboxOut
from tests.integration.server import Server

pytestmark = pytest.mark.integration


def _valid(model: type[BaseModel] | TypeAdapter[object], r: httpx.Response, status: int
           ) -> None:
    assert r.status_code == status, r.text
    if isinstance(model, TypeAdapter):
        model.validate_python(r.json())
    else:
        model.model_validate(r.json())


def test_answers_match_their_declared_models(sbx_server: Server, api: httpx.Client) -> None:
    _valid(Health, httpx.get(sbx_server.url + "/health"), 200)
    r = api.post("/sandboxes", json={"template": "base", "metadata": {"k": "v"}})
    _valid(Sandbox002, r, 201)
    sid = r.json()["id"]
    try:
        assert r.json()["envd_access_token"]
        _valid(Sandbox002, api.get(f"/sandboxes/{sid}"), 200)
        listed = api.get("/sandboxes")
        _valid(TypeAdapter(list[Sandbox002]), listed, 200)
        assert "envd_access_token" not in listed.json()[0]
        _valid(TypeAdapter(list[Sandbox002]), api.get("/v2/sandboxes"), 200)
        _valid(Sandbox002, api.post(f"/sandboxes/{sid}/connect", json={"timeout": 600}), 200)
        _valid(SandboxOut, api.get(f"/v1/sandbox/{sid}"), 200)
        _valid(AuditPage, api.get(f"/v1/sandbox/{sid}/audit"), 200)
        _valid(AuditPage, api.get(f"/sandboxes/{sid}/audit", params={"since": "1"}), 200)
    finally:
        api.delete(f"/sandboxes/{sid}")
    _valid(UsageOut, api.get("/v1/usage"), 200)
    _valid(UsageOut, api.get("/usage", params={"from": "2026-01-01", "to": "2026-01-31"}), 200)
    _valid(TypeAdapter(list[TemplateOut]), api.get("/templates"), 200)
    _valid(TemplateDetail, api.get("/templates/base"), 200)
    # Errors, in each surface's shape.
    _valid(ErrorV1, api.post("/v1/sandbox/", json={}), 400)
    _valid(ErrorV1, api.get("/v1/sandbox/sbx-00000000"), 404)
    _valid(Error, api.get("/sandboxes/sbx-00000000"), 404)
    _valid(Error, api.get("/admin/orgs"), 403)


def test_admin_answers_match_their_declared_models(sbx_server: Server) -> None:
    with httpx.Client(base_url=sbx_server.url, headers={"X-API-Key": sbx_server.api_key},
                      timeout=30) as admin:
        _valid(TypeAdapter(list[OrgOut]), admin.get("/admin/orgs"), 200)
        name = f"contract-{id(admin):x}"
        created = admin.post("/admin/orgs", json={"name": name})
        _valid(OrgCreated, created, 201)
        key = admin.post("/admin/keys", json={"org": name, "expires_in_s": 60})
        _valid(KeyCreated, key, 201)
        _valid(TypeAdapter(list[KeyOut]), admin.get("/admin/keys", params={"org": name}), 200)
        assert admin.post(f"/admin/keys/{key.json()['id']}/revoke").status_code == 204

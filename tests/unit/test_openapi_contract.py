"""The OpenAPI document is the API's contract (issue 15): every route
declares its answer (a model, a stream of a model, or no content), every
route that takes a body declares the body's model, and errors are declared
in the shape sbx answers them in (400, never FastAPI's 422)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from sbx.api.app import create_app
from sbx.api.routes import admin, egress, nodes, sandboxes, templates, usage, v1_sandbox
from sbx.config import Settings

# POSTs that take no body.
NO_BODY = {"/v1/sandbox/{sandbox_id}/pause", "/v1/sandbox/{sandbox_id}/resume",
           "/sandboxes/{sandbox_id}/pause", "/admin/keys/{key_id}/revoke",
           "/templates/{name}/builds/{build_id}/cancel", "/admin/nodes/{node_id}/drain",
           "/admin/nodes/{node_id}/undrain"}


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[APIRoute], dict[str, Any]]:
    """Every route of the API, and the app's OpenAPI document."""
    data_dir: Path = tmp_path_factory.mktemp("data")
    gateway = create_app(Settings(data_dir=data_dir))
    app = gateway.app.app  # Gateway -> BodyLimit -> FastAPI
    routers = [v1_sandbox.router, sandboxes.router, egress.router, egress.router_002,
               usage.router, admin.router, templates.router, nodes.router]
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    routes += [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    return routes, app.openapi()


def _resolves(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that is, or lists, references to declared components."""
    refs = [schema.get("$ref"), schema.get("items", {}).get("$ref"),
            *(s.get("$ref") for s in schema.get("anyOf", []))]
    names = [r.rsplit("/", 1)[1] for r in refs if r]
    return bool(names) and all(n in doc["components"]["schemas"] for n in names)


def test_every_route_declares_its_answer(contract: tuple[list[APIRoute], dict[str, Any]]
                                         ) -> None:
    routes, doc = contract
    assert len(routes) >= 30
    operations = sum(len(ops) for ops in doc["paths"].values())
    assert operations == sum(len(r.methods) for r in routes)
    for route in routes:
        for method in route.methods:
            op = doc["paths"][route.path_format][method.lower()]
            ok = {c: r for c, r in op["responses"].items() if c.startswith("2")}
            assert ok, (method, route.path)
            for code, response in ok.items():
                if code == "204":
                    assert "content" not in response, (method, route.path)
                    continue
                content = response.get("content", {})
                assert content, (method, route.path, code)
                for media in content.values():
                    assert _resolves(doc, media["schema"]), (method, route.path, media)


def test_every_route_with_a_body_declares_its_model(
        contract: tuple[list[APIRoute], dict[str, Any]]) -> None:
    routes, doc = contract
    for route in routes:
        for method in route.methods & {"POST", "PUT", "PATCH"}:
            op = doc["paths"][route.path_format][method.lower()]
            if route.path_format in NO_BODY:
                assert "requestBody" not in op, route.path
                continue
            body = op.get("requestBody")
            assert body is not None, (method, route.path)
            assert _resolves(doc, body["content"]["application/json"]["schema"]), route.path
            assert "413" in op["responses"], route.path


def test_errors_are_declared_in_each_surfaces_shape(
        contract: tuple[list[APIRoute], dict[str, Any]]) -> None:
    _, doc = contract
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        shape = "ErrorV1" if path.startswith("/v1/") else "Error"
        for op in ops.values():
            assert "422" not in op["responses"], path
            assert "400" in op["responses"], path
            for code, response in op["responses"].items():
                if code[0] in "45" and path != "/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (path, code)

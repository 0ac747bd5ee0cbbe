"""The OpenAPI document as the API's contract. Routes parse their bodies
themselves (`sbx.core.validation.parse`: one error shape per surface, and
a bounded parser), so FastAPI does not see their request models; `body()`
declares them to the document, and `install()` adds those models' schemas
to its components."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from sbx.api.schemas.answers import Error, ErrorV1

_REF = "#/components/schemas/{model}"
_declared: dict[str, type[BaseModel]] = {}


def body(*models: type[BaseModel], required: bool = True,
         extra_content: dict[str, Any] | None = None) -> dict[str, Any]:
    """openapi_extra for a route whose JSON body is one of models."""
    for model in models:
        _declared[model.__name__] = model
    refs = [{"$ref": _REF.format(model=m.__name__)} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    content = {"application/json": {"schema": schema}, **(extra_content or {})}
    return {"requestBody": {"required": required, "content": content}}


def query(**params: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """openapi_extra for a route that reads these query parameters itself
    (name=(schema, description)), to check them in its own words."""
    return {"parameters": [{"name": name, "in": "query", "required": False,
                            "schema": schema, "description": text}
                           for name, (schema, text) in params.items()]}


def stream(model: type[BaseModel], media_type: str) -> dict[str, Any]:
    """openapi_extra for a route that streams model objects, one a line."""
    _declared[model.__name__] = model
    schema = {"$ref": _REF.format(model=model.__name__)}
    return {"responses": {"200": {"content": {media_type: {"schema": schema}}}}}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            _errors(doc)
            shapes: dict[str, type[BaseModel]] = {"Error": Error, "ErrorV1": ErrorV1}
            for name, model in sorted({**_declared, **shapes}.items()):
                schema = model.model_json_schema(ref_template=_REF)
                for sub, sub_schema in schema.pop("$defs", {}).items():
                    schemas.setdefault(sub, sub_schema)
                schemas.setdefault(name, schema)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _errors(doc: dict[str, Any]) -> None:
    """Errors as sbx answers them: 400 (never FastAPI's 422) for a bad
    parameter or body, 413 for a body past its bound, each in its
    surface's shape (sbx.api.errors)."""
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in doc["paths"].items():
        shape = {"$ref": _REF.format(model="ErrorV1" if path.startswith("/v1/") else "Error")}
        for op in operations.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            responses.setdefault("400", {"description": "Invalid request"})
            if path != "/health":
                responses.setdefault("401", {"description": "Missing, unknown, expired or "
                                                            "revoked API key"})
            if path.startswith("/admin"):
                responses.setdefault("403", {"description": "Not an admin key"})
            if "{" in path:
                responses.setdefault("404", {"description": "No such resource (or not the "
                                                            "caller's)"})
            if "requestBody" in op:
                responses.setdefault("413", {"description": "The request body is too large"})
            for code, response in responses.items():
                if code[0] in "45" and "content" not in response:
                    response["content"] = {"application/json": {"schema": shape}}

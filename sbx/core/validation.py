"""Turning pydantic's validation errors into the API's field errors:
dotted paths (``network_policy.allow_cidrs.0``), one entry per failure."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from sbx.core.errors import FieldError, InvalidRequest

M = TypeVar("M", bound=BaseModel)


def field_errors(exc: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if p != "[key]"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            msg = f"malformed JSON: {err.get('ctx', {}).get('error', msg)}"
        elif err["type"] == "model_type" and not loc:
            msg = "the request body must be a JSON object"
        out.append(FieldError(".".join(loc) or "body", msg))
    return out


def parse(model: type[M], body: bytes) -> M:
    if not body.strip():
        raise InvalidRequest([FieldError("body", "the request body must be a JSON object")])
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(field_errors(exc)) from None

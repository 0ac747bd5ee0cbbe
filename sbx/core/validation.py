"""Request bodies into models: pydantic's validation errors become the API's
field errors (dotted paths such as ``network_policy.allow_cidrs.0``, one
entry per failure), and bodies that are not JSON at all (bytes that are not
UTF-8, nesting past the parser's depth, numbers past its range) are a 400
like any other malformed body, never an exception out of the parser."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic_core
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


def load_json(raw: bytes | str, field: str = "body", what: str = "JSON") -> Any:
    """Parse JSON with pydantic's parser: the standard library's recurses
    without a bound (RecursionError), decodes before parsing
    (UnicodeDecodeError) and refuses long integers (ValueError), each a 500
    when it escapes; this one answers all of them as malformed JSON."""
    try:
        return pydantic_core.from_json(raw)
    except ValueError as exc:
        raise InvalidRequest([FieldError(field, f"malformed {what}: {exc}")]) from None


def peek_json(raw: bytes) -> Any:
    """The body's JSON when it is some, else None: for choosing how to parse
    a body, whose own parse then reports what is wrong with it."""
    if not raw.strip():
        return None
    try:
        return pydantic_core.from_json(raw)
    except ValueError:
        return None

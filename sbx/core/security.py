"""Parsing a client's seed-002 security object into the shared
SecurityPolicy (sbx/shared/security.py), with errors in the API's shape."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from sbx.core.errors import FieldError, InvalidRequest
from sbx.core.validation import field_errors, load_json
from sbx.shared.security import SecurityPolicy


def parse_security(value: Any, field: str = "security") -> tuple[dict[str, Any], SecurityPolicy]:
    """Validate a client's security object (or a JSON string holding one);
    answer the object as sent and its parsed form."""
    if isinstance(value, str):
        value = load_json(value, field, what="security JSON")
    if not isinstance(value, dict):
        raise InvalidRequest([FieldError(field, "must be a SecurityPolicy object")])
    try:
        policy = SecurityPolicy.model_validate_json(json.dumps(value))
    except ValidationError as exc:
        raise InvalidRequest(
            [FieldError(f"{field}.{e.field}" if e.field != "body" else field, e.error)
             for e in field_errors(exc)]
        ) from None
    return value, policy

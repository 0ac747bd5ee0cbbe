"""The seed-002 SecurityPolicy: its schema (documented in
docs/security-policy.md), validated strictly; the object itself is stored and
returned exactly as the client sent it (core/security.py parses a client's)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from sbx.shared.policy import Transform


class PiiType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    CREDIT_CARD = "credit_card"
    US_SSN = "us_ssn"
    IBAN = "iban"
    IP_ADDRESS = "ip_address"
    SECRET = "secret"


class PiiAction(StrEnum):
    REDACT = "redact"
    BLOCK = "block"
    LOG = "log"


class InjectionAction(StrEnum):
    BLOCK = "block"
    FLAG = "flag"
    LOG = "log"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_enum_values=True)


class PiiConfig(_Strict):
    enabled: bool = False
    action: PiiAction = PiiAction.REDACT
    types: list[PiiType] = Field(default_factory=lambda: list(PiiType))
    # Values never treated as PII (e.g. a support address the agent may send).
    allow_list: Annotated[list[str], Field(max_length=100)] = Field(default_factory=list)


class InjectionConfig(_Strict):
    enabled: bool = False
    action: InjectionAction = InjectionAction.FLAG
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class AuditConfig(_Strict):
    enabled: bool = True
    include_bodies: bool = False
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30


class SecurityPolicy(_Strict):
    pii: PiiConfig = Field(default_factory=PiiConfig)
    injection: InjectionConfig = Field(default_factory=InjectionConfig)
    transformation_rules: Annotated[list[Transform], Field(max_length=20)] = Field(
        default_factory=list
    )
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @property
    def guardrails(self) -> bool:
        """Whether this policy makes the proxy inspect content (billed to
        the guardrails wallet)."""
        return self.pii.enabled or self.injection.enabled


def stored_security(value: Any) -> SecurityPolicy | None:
    """The security policy kept with a sandbox (validated when it was sent)."""
    if not isinstance(value, dict):
        return None
    return SecurityPolicy.model_validate_json(json.dumps(value))

"""The network egress policy shared by every API surface (seed 000's
``network_policy``, seed 002's ``network``), with its validation rules."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")
# RFC 9110 token characters for header names.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MASK = "********"


class PolicyMode(StrEnum):
    ALLOW_ALL = "allow-all"
    DENY_ALL = "deny-all"
    CUSTOM = "custom"


def check_domain(value: str) -> str:
    if len(value) > 253 or not _DOMAIN_RE.match(value):
        raise ValueError("must be a domain name such as api.example.com or *.example.com")
    return value


def check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"must be a CIDR range such as 10.0.0.0/8 ({exc})") from None
    return value


def check_header_name(value: str) -> str:
    if not _HEADER_NAME_RE.match(value):
        raise ValueError("must be a valid HTTP header name")
    return value


def check_header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return value


DomainStr = Annotated[str, AfterValidator(check_domain)]
CidrStr = Annotated[str, AfterValidator(check_cidr)]
HeaderName = Annotated[str, AfterValidator(check_header_name)]
HeaderValue = Annotated[str, AfterValidator(check_header_value)]


class Transform(BaseModel):
    """A per-domain request transform (credential brokering)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    domain: DomainStr
    inject_headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    strip_headers: list[HeaderName] = Field(default_factory=list)


class NetworkPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mode: PolicyMode
    allow_domains: Annotated[list[DomainStr], Field(max_length=50)] = Field(default_factory=list)
    allow_cidrs: Annotated[list[CidrStr], Field(max_length=10)] = Field(default_factory=list)
    transforms: Annotated[list[Transform], Field(max_length=20)] = Field(default_factory=list)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        # Strict mode refuses a plain string for an enum when validating
        # Python objects; and the default message would not list the choices.
        if isinstance(v, str):
            try:
                return PolicyMode(v)
            except ValueError:
                pass
        if isinstance(v, PolicyMode):
            return v
        raise ValueError("must be one of allow-all, deny-all, custom")

    @model_validator(mode="after")
    def _custom_only(self) -> NetworkPolicy:
        if self.mode != PolicyMode.CUSTOM and (self.allow_domains or self.allow_cidrs):
            raise ValueError("allow_domains and allow_cidrs apply to mode 'custom' only")
        return self

    def public(self) -> dict[str, Any]:
        """The policy as API answers show it: brokered secrets masked."""
        data = self.model_dump(mode="json")
        for t in data["transforms"]:
            t["inject_headers"] = {k: MASK for k in t["inject_headers"]}
        return data


def default_policy() -> NetworkPolicy:
    return NetworkPolicy(mode=PolicyMode.ALLOW_ALL)

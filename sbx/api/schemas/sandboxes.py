"""`/sandboxes` request bodies: seed 002 (snake_case: template, envs,
network, security, on_timeout) and the E2B SDK's (camelCase: templateID,
envVars, autoPause...). The two share `POST /sandboxes`; a body with
`templateID` is the E2B SDK's."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sbx.api.schemas.v1 import EnvVars
from sbx.core.errors import FieldError, InvalidRequest
from sbx.core.validation import field_errors
from sbx.shared.policy import NetworkPolicy, PolicyMode

# A month: beyond that a "timeout" is a mistake, not a plan.
MAX_TIMEOUT_S = 30 * 24 * 3600
MetaKey = Annotated[str, Field(min_length=1, max_length=256)]
MetaValue = Annotated[str, Field(max_length=4096)]
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=100)]


class CreateSandbox002(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    template: Annotated[str, Field(max_length=64)] = ""
    timeout: Annotated[int, Field(ge=0, le=MAX_TIMEOUT_S)] = 300
    envs: EnvVars = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=dict)
    network: NetworkPolicy | None = None
    # Validated against sbx.core.security.SecurityPolicy, stored as sent.
    security: dict[str, Any] | str | None = None
    on_timeout: Literal["kill", "pause"] = "kill"


class E2bNetwork(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    allow_out: list[str] = Field(default_factory=list, alias="allowOut")
    deny_out: list[str] = Field(default_factory=list, alias="denyOut")


class E2bLifecycle(BaseModel):
    model_config = ConfigDict(extra="ignore")

    enabled: bool | None = None


class CreateSandboxE2b(BaseModel):
    """What the e2b SDK sends. Unknown fields are ignored: newer SDKs add
    fields, and none of them may break a create."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    template_id: str = Field(alias="templateID", max_length=64)
    timeout: Annotated[int, Field(ge=0, le=MAX_TIMEOUT_S)] = 300
    auto_pause: bool = Field(False, alias="autoPause")
    allow_internet_access: bool | None = None
    network: E2bNetwork | None = None
    metadata: Metadata | None = None
    env_vars: EnvVars | None = Field(None, alias="envVars")

    def network_policy(self) -> NetworkPolicy:
        """E2B's network options in sbx's policy terms."""
        if self.allow_internet_access is False:
            return NetworkPolicy(mode=PolicyMode.DENY_ALL)
        net = self.network
        if net is None or not (net.allow_out or net.deny_out):
            return NetworkPolicy(mode=PolicyMode.ALLOW_ALL)
        if net.deny_out and set(net.deny_out) != {"0.0.0.0/0"}:
            raise InvalidRequest([FieldError(
                "network.denyOut", "only 0.0.0.0/0 (deny everything not in allowOut) is supported"
            )])
        if not net.deny_out:
            return NetworkPolicy(mode=PolicyMode.ALLOW_ALL)
        cidrs, domains = [], []
        for item in net.allow_out:
            try:
                ipaddress.ip_network(item, strict=False)
                cidrs.append(item)
            except ValueError:
                domains.append(item)
        try:
            return NetworkPolicy.model_validate(
                {"mode": "custom", "allow_domains": domains, "allow_cidrs": cidrs}
            )
        except ValidationError as exc:
            # An entry that is neither a network nor a domain name, or too
            # many of either: the client's allowOut, not a server error.
            raise InvalidRequest([FieldError("network.allowOut", e.error)
                                  for e in field_errors(exc)]) from None


class ConnectE2b(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timeout: Annotated[int, Field(ge=0, le=MAX_TIMEOUT_S)] | None = None


class SetTimeout002(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    timeout: Annotated[int, Field(ge=0, le=MAX_TIMEOUT_S)]

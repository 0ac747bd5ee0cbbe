"""Seed 000 (`/v1/sandbox/`): request and answer bodies, with every bound
the seed states."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sbx.shared.policy import NetworkPolicy


def _env_name(v: str) -> str:
    if not v or "=" in v or "\0" in v:
        raise ValueError("environment variable names must be non-empty, without '=' or NUL")
    return v


def _env_value(v: str) -> str:
    if "\0" in v:
        raise ValueError("environment variable values must not contain NUL")
    return v


def _even(v: int) -> int:
    if v % 2:
        raise ValueError("must be an even number")
    return v


EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(_env_value)]
EnvVars = dict[EnvName, EnvValue]


class CreateSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    template_name: Annotated[str, Field(min_length=1, max_length=64)]
    env_vars: EnvVars = Field(default_factory=dict)
    vcpu: Annotated[int, Field(ge=1, le=8)]
    memory_mib: Annotated[int, Field(ge=512, le=8192), AfterValidator(_even)]
    timeout_min: Annotated[int, Field(ge=1, le=480)] = 5
    auto_pause: bool = False
    network_policy: NetworkPolicy | None = None


class SetTimeout(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    timeout_min: Annotated[int, Field(ge=1, le=480)]


class SandboxOut(BaseModel):
    id: str
    template_id: str
    vcpu: int
    memory_mib: int
    disk_mib: int
    state: str
    auto_pause: bool
    network_policy: dict[str, Any]
    created_at: datetime
    envd_access_token: str | None = None
    timeout_min: int | None = None
    timeout_at: datetime | None = None

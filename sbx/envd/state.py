"""Mutable daemon-wide settings, changed at start and by ``POST /init``."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from .template import TemplateConfig

SECRET_PREFIX = "SBX_ENVD_"
TOKEN_ENV = "SBX_ENVD_ACCESS_TOKEN"


@dataclass
class EnvdState:
    access_token: str | None = None
    # The sandbox's memory_mib, enforced by the memory guard (None: off).
    memory_limit_mib: int | None = None
    # Environment every spawned process starts from: envd's own, minus secrets.
    base_env: dict[str, str] = field(default_factory=dict)
    # Variables set through /init; they apply to processes started afterwards.
    env_vars: dict[str, str] = field(default_factory=dict)
    default_user: str | None = None
    default_workdir: str | None = None
    # Idle shells kept per (user, login) for fast `bash -c` (see warmshell).
    warm_shells: int = 1
    # The custom template's run-time config (None: the built-in template).
    template: TemplateConfig | None = None

    def spawn_env(self) -> dict[str, str]:
        """What every child's environment starts from: envd's own, then the
        template's on top (so a template PATH replaces envd's). The user's
        variables, /init's and the request's come after (process.build_env)."""
        env = dict(self.base_env)
        if self.template is not None:
            env.update(self.template.env)
        return env

    def process_env(self) -> dict[str, str]:
        env = self.spawn_env()
        env.update(self.env_vars)
        return env

    @property
    def template_user(self) -> str | None:
        return self.template.user if self.template is not None else None

    def workdir(self) -> str | None:
        """The default working directory: the template's WORKDIR while it
        exists (the builder makes it; a sandbox may remove it), else /init's,
        else None (the user's home). The template's wins for the same reason
        its USER does (see users.resolve)."""
        template_dir = self.template.workdir if self.template is not None else None
        if template_dir and os.path.isdir(template_dir):
            return template_dir
        return self.default_workdir


def take_secrets(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove every ``SBX_ENVD_*`` variable from ``environ`` and return them.

    envd's environment is inherited by every process it spawns, so the access
    token must not stay in it.
    """
    secrets = {k: v for k, v in environ.items() if k.startswith(SECRET_PREFIX)}
    for key in secrets:
        del environ[key]
    return secrets


def public_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(SECRET_PREFIX)}

"""A custom template's run-time config: ``/opt/sbx/template.json``.

The template builder writes it into the template's root filesystem (the
Dockerfile's ``ENV``, ``WORKDIR``, ``USER`` and ``CMD``/``ENTRYPOINT``).
The built-in template has none, and then envd behaves as without templates.
A file envd cannot use is ignored with a log line: the sandbox must still
come up, only without the template's defaults.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("envd.template")

DEFAULT_PATH = "/opt/sbx/template.json"
# Secrets (SBX_ENVD_*, never passed on to children) that move the files
# elsewhere; only the tests set them.
PATH_ENV = "SBX_ENVD_TEMPLATE_CONFIG"
START_LOG_ENV = "SBX_ENVD_START_LOG"
DEFAULT_START_LOG = "/var/log/sbx-start.log"
VERSION = 1
MAX_SIZE = 1024 * 1024
DEFAULT_READY_TIMEOUT_S = 60.0


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class TemplateConfig:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    # "user[:group]", each a name or a numeric id, as Docker's USER.
    user: str | None = None
    start_cmd: list[str] | None = None
    ready_cmd: str | None = None
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    # Run (and waited for) before each checkpoint: a start command that
    # serves connections drops them and listens anew (see StartCommand).
    prepare_cmd: str | None = None


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TemplateError(f"{key} must be a string or null")
    if "\0" in value:
        raise TemplateError(f"{key} must not contain NUL")
    # An empty value is what a Dockerfile that never set it would mean.
    return value or None


def parse(data: bytes) -> TemplateConfig:
    """The config in ``data``; raises TemplateError when it is not one."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise TemplateError(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise TemplateError("not a JSON object")
    version = obj.get("version")
    if version != VERSION or isinstance(version, bool):
        raise TemplateError(f"unsupported version {version!r} (expected {VERSION})")

    env = obj.get("env") or {}
    if not isinstance(env, dict):
        raise TemplateError("env must be an object of strings")
    for key, value in env.items():
        if not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
            raise TemplateError(f"env: bad variable {key!r}")

    workdir = _opt_str(obj, "workdir")
    if workdir is not None and not os.path.isabs(workdir):
        raise TemplateError("workdir must be an absolute path")

    user = _opt_str(obj, "user")
    if user is not None:
        name, _, group = user.partition(":")
        if not name or ":" in group or user.endswith(":"):
            raise TemplateError("user must be 'user' or 'user:group'")

    start_cmd = obj.get("start_cmd")
    if start_cmd is not None and not (
        isinstance(start_cmd, list)
        and all(isinstance(a, str) and "\0" not in a for a in start_cmd)
        and (not start_cmd or start_cmd[0])
    ):
        raise TemplateError("start_cmd must be a list of strings (argv) or null")

    ready_cmd = _opt_str(obj, "ready_cmd")
    prepare_cmd = _opt_str(obj, "prepare_cmd")

    timeout = obj.get("ready_timeout_s")
    if timeout is None:
        timeout = DEFAULT_READY_TIMEOUT_S
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise TemplateError("ready_timeout_s must be a positive number")

    return TemplateConfig(
        env=dict(env),
        workdir=os.path.normpath(workdir) if workdir else None,
        user=user,
        start_cmd=list(start_cmd) if start_cmd else None,
        ready_cmd=ready_cmd,
        ready_timeout_s=float(timeout),
        prepare_cmd=prepare_cmd,
    )


def load(path: str) -> TemplateConfig | None:
    """The config at ``path``; None when there is none or it is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("template config %s ignored: cannot read it: %s", path, e)
        return None
    if len(data) > MAX_SIZE:
        log.error("template config %s ignored: larger than %d bytes", path, MAX_SIZE)
        return None
    try:
        config = parse(data)
    except TemplateError as e:
        log.error("template config %s ignored: %s", path, e)
        return None
    log.info("template config loaded from %s", path)
    return config

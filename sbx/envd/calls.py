"""Request-scoped helpers shared by the Connect services."""

from __future__ import annotations

from . import users
from .connect import Call, Code, ConnectError
from .state import EnvdState

KEEPALIVE_HEADER = "keepalive-ping-interval"
# Keepalives keep idle streams alive through proxies. The SDK asks for 50 s;
# sending them more often is always safe.
MAX_KEEPALIVE = 15.0


def keepalive_interval(call: Call) -> float:
    raw = call.header(KEEPALIVE_HEADER)
    try:
        value = float(raw) if raw else MAX_KEEPALIVE
    except ValueError:
        value = MAX_KEEPALIVE
    return min(max(value, 0.05), MAX_KEEPALIVE)


def resolve_user(state: EnvdState, call: Call) -> users.User:
    try:
        return users.resolve(call.username, state.default_user, state.template_user)
    except users.UnknownUser as e:
        # E2B's envd rejects unknown users in its authentication layer.
        raise ConnectError(Code.UNAUTHENTICATED, f"invalid username: '{e.args[0]}'") from None


def resolve_path(state: EnvdState, path: str, user: users.User) -> str:
    try:
        return users.expand_path(path, user, state.workdir())
    except ValueError as e:
        raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from None


def os_error(e: OSError, what: str) -> ConnectError:
    """Map a failed file operation to the Connect code E2B's envd uses for it."""
    if isinstance(e, FileNotFoundError):
        return ConnectError(Code.NOT_FOUND, f"{what}: {e.strerror}: {e.filename}")
    if isinstance(e, PermissionError):
        return ConnectError(Code.PERMISSION_DENIED, f"{what}: {e}")
    if isinstance(e, (NotADirectoryError, IsADirectoryError, FileExistsError)):
        return ConnectError(Code.INVALID_ARGUMENT, f"{what}: {e}")
    return ConnectError(Code.INTERNAL, f"{what}: {e}")

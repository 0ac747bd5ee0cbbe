"""Access-token checks, signed file URLs and the Basic-auth username."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from .httpd import Request
from .state import EnvdState

TOKEN_HEADER = "x-access-token"


def token_ok(state: EnvdState, req: Request) -> bool:
    """True when no token is configured or the request carries the right one."""
    if state.access_token is None:
        return True
    sent = req.header(TOKEN_HEADER)
    return hmac.compare_digest(sent.encode(), state.access_token.encode())


def file_signature(
    path: str, operation: str, username: str, token: str, expiration: int | None
) -> str:
    """The ``v1_`` signature the SDK puts on download/upload URLs."""
    parts = [path, operation, username, token]
    if expiration is not None:
        parts.append(str(expiration))
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def files_access_error(state: EnvdState, req: Request, operation: str) -> str | None:
    """Why a /files request may not proceed, or None.

    A token in the header must be right; without one, a signed URL will do.
    """
    token = state.access_token
    if token is None:
        return None
    if req.header(TOKEN_HEADER):
        if token_ok(state, req):
            return None
        return "access token present in header but does not match"
    signature = req.query.get("signature")
    if signature is None:
        return "missing access token or signature"
    raw_exp = req.query.get("signature_expiration")
    expiration: int | None = None
    if raw_exp:
        try:
            expiration = int(raw_exp)
        except ValueError:
            return "invalid signature expiration"
    expected = file_signature(
        req.query.get("path", ""), operation, req.query.get("username", ""), token, expiration
    )
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "invalid signature"
    if expiration is not None and expiration < time.time():
        return "signature is already expired"
    return None


def basic_username(req: Request) -> str | None:
    """The user named by ``Authorization: Basic base64("user:")``, if any."""
    value = req.header("authorization")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username = decoded.partition(":")[0]
    return username or None

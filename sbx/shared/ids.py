"""Identifiers and secrets."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def sandbox_id() -> str:
    # Fixed length on purpose: runsc matches container IDs by prefix.
    return "sbx-" + "".join(secrets.choice(_ALPHABET) for _ in range(8))


def token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def api_key() -> str:
    return "sbx_" + secrets.token_urlsafe(30)


def hash_key(key: str) -> str:
    # Keys are 240 random bits: a fast hash is enough (no brute force).
    return hashlib.sha256(key.encode()).hexdigest()

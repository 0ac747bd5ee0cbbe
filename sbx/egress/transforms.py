"""Credential brokering on intercepted HTTP: request headers set and
stripped per domain, and the injected values masked wherever an upstream
echoes them back towards the sandbox. Pure."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from sbx.shared.policy import Transform

Headers = list[tuple[bytes, bytes]]


def apply(headers: Iterable[tuple[bytes, bytes]], transforms: Sequence[Transform]) -> Headers:
    """The request headers after every transform: stripped names removed,
    injected names replaced (a sandbox cannot send its own value next to
    the injected one), injected values added."""
    strip: set[bytes] = set()
    # lower-case name -> (name as the policy spells it, value)
    inject: dict[bytes, tuple[bytes, bytes]] = {}
    for t in transforms:
        strip.update(h.lower().encode("latin-1") for h in t.strip_headers)
        for name, value in t.inject_headers.items():
            raw = name.encode("latin-1")
            inject[raw.lower()] = (raw, value.encode("latin-1"))
    if not strip and not inject:
        return list(headers)
    drop = strip | set(inject)
    out = [(n, v) for n, v in headers if n.lower() not in drop]
    out += list(inject.values())
    if inject:
        # The masker can only find an echoed secret in an uncompressed body.
        out = [(n, v) for n, v in out if n.lower() != b"accept-encoding"]
        out.append((b"accept-encoding", b"identity"))
    return out


def secrets_of(transforms: Sequence[Transform]) -> list[bytes]:
    """Every byte form an injected value may come back in: as sent, JSON
    escaped (with and without escaped slashes, as some encoders do), and
    URL encoded. Values under 4 bytes are too short to mask without
    garbling ordinary text."""
    out: set[bytes] = set()
    for t in transforms:
        for value in t.inject_headers.values():
            if len(value) < 4:
                continue
            escaped = json.dumps(value)[1:-1]
            forms = (value, escaped, escaped.replace("/", "\\/"), quote(value, safe=""),
                     quote(value, safe="").replace("%20", "+"))
            out.update(f.encode("utf-8") for f in forms)
    return sorted(out, key=len, reverse=True)


class Masker:
    """Replaces secrets in a byte stream with asterisks of the same length,
    so Content-Length and chunk sizes stay right. Holds back the last
    len(longest)-1 bytes of each chunk in case a secret straddles two."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        self.secrets = [s for s in secrets if s]
        self.keep = max((len(s) for s in self.secrets), default=1) - 1
        self.tail = b""

    def feed(self, data: bytes) -> bytes:
        if not self.secrets:
            return data
        buf = self._mask(self.tail + data)
        if self.keep == 0:
            self.tail = b""
            return buf
        cut = max(0, len(buf) - self.keep)
        self.tail = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        out, self.tail = self.tail, b""
        return out

    def _mask(self, buf: bytes) -> bytes:
        for s in self.secrets:
            if s in buf:
                buf = buf.replace(s, b"*" * len(s))
        return buf

    def mask_once(self, data: bytes) -> bytes:
        return self._mask(data) if self.secrets else data


def mask_headers(headers: Iterable[tuple[bytes, bytes]], masker: Masker) -> Headers:
    return [(n, masker.mask_once(v)) for n, v in headers]

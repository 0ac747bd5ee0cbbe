"""The seed-002 security policy as the egress proxy applies it: PII on
requests leaving a sandbox, prompt injection on responses coming back, and
what the audit log keeps. The detectors are in sbx.guard; this module
decides what to inspect and what to do with a finding."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from sbx.guard.injection import score_injection
from sbx.guard.pii import Finding, find_pii, redact
from sbx.shared.audit import DEFAULT_RETENTION_DAYS
from sbx.shared.security import SecurityPolicy

# Bodies are inspected up to this size; beyond it a request is not
# inspectable and a response is judged by this much of its start.
MAX_INSPECT = 1 << 20
# Bodies kept in the audit log (include_bodies) are cut to this.
MAX_AUDIT_BODY = 64 * 1024

TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded",
              "application/xml", "application/graphql", "application/javascript",
              "application/x-ndjson", "multipart/form-data")
# Encodings the proxy can read; a sandbox whose responses are scanned is
# not offered others (br, zstd).
READABLE_ENCODINGS = (b"gzip", b"deflate", b"identity")


@dataclass(frozen=True)
class Guard:
    pii_types: frozenset[str] = frozenset()
    pii_action: str = "redact"
    allow_list: tuple[str, ...] = ()
    injection: bool = False
    injection_action: str = "flag"
    threshold: float = 0.5
    audit: bool = True
    include_bodies: bool = False
    retention_days: int = DEFAULT_RETENTION_DAYS

    @property
    def pii(self) -> bool:
        return bool(self.pii_types)

    @property
    def inspects(self) -> bool:
        """Whether HTTPS of every host must be intercepted for this sandbox."""
        return self.pii or self.injection or self.include_bodies


NO_GUARD = Guard()


def compile_guard(security: SecurityPolicy | None) -> Guard:
    if security is None:
        return NO_GUARD
    pii = security.pii
    inj = security.injection
    return Guard(
        pii_types=frozenset(str(t) for t in pii.types) if pii.enabled else frozenset(),
        pii_action=str(pii.action),
        allow_list=tuple(pii.allow_list),
        injection=inj.enabled,
        injection_action=str(inj.action),
        threshold=inj.threshold,
        audit=security.audit.enabled,
        include_bodies=security.audit.include_bodies,
        retention_days=security.audit.retention_days,
    )


def is_text(content_type: bytes | None) -> bool:
    if not content_type:
        return True
    ct = content_type.decode("latin-1").split(";")[0].strip().lower()
    return ct.startswith(TEXT_TYPES) or ct.endswith(("+json", "+xml"))


def _text(data: bytes) -> str:
    # surrogateescape: any bytes round-trip, so a redacted body differs from
    # the original only where something was redacted.
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def counts(findings: list[Finding]) -> dict[str, int]:
    return dict(Counter(f.type for f in findings))


@dataclass
class RequestVerdict:
    """What to do with one outbound request."""

    block: bool = False
    target: bytes = b""
    body: bytes | None = None  # replaced body (redaction), else None
    findings: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    note: str | None = None


def inspect_request(guard: Guard, target: bytes, body: bytes | None,
                    content_type: bytes | None, encoded: bool) -> RequestVerdict:
    """Scan the request's target (its query) and body for PII. ``body`` is
    None when it was too large to hold; ``encoded`` when it is compressed.
    A body that cannot be read is refused under `block` and `redact` (the
    proxy cannot promise either), passed under `log`."""
    v = RequestVerdict(target=target, checks=1)
    found: list[Finding] = []
    text_target = unquote(target.decode("latin-1"), errors="surrogateescape")
    in_target = find_pii(text_target, guard.pii_types, guard.allow_list)
    found += in_target
    unreadable = None
    if body is None:
        unreadable = "body too large to inspect"
    elif body and (encoded or not is_text(content_type)):
        unreadable = "body not inspectable (binary or compressed)"
    in_body: list[Finding] = []
    if unreadable is None and body:
        text = _text(body)
        in_body = find_pii(text, guard.pii_types, guard.allow_list)
        found += in_body
        if in_body and guard.pii_action == "redact":
            v.body = _bytes(redact(text, in_body))
    if in_target and guard.pii_action == "redact":
        v.target = quote(redact(text_target, in_target), safe="/?&=:;,+@!$'()*~#[]%",
                         errors="surrogateescape").encode("latin-1")
    v.findings = counts(found)
    if unreadable is not None:
        v.note = unreadable
        if guard.pii_action in ("block", "redact"):
            v.block = True
    if found and guard.pii_action == "block":
        v.block = True
    return v


@dataclass
class ResponseVerdict:
    block: bool = False
    score: float = 0.0
    signals: tuple[str, ...] = ()
    checks: int = 0
    note: str | None = None

    @property
    def findings(self) -> dict[str, object]:
        if not self.checks:
            return {}
        out: dict[str, object] = {"injection_score": round(self.score, 3)}
        if self.signals:
            out["injection_signals"] = list(self.signals)
        return out


def decode_body(body: bytes, encoding: bytes | None) -> bytes | None:
    """The body as sent by the application, or None when it cannot be read.
    Output is capped: a decompression bomb costs at most MAX_INSPECT."""
    enc = (encoding or b"identity").strip().lower()
    if enc == b"identity":
        return body
    if enc not in (b"gzip", b"deflate"):
        return None
    wbits = 31 if enc == b"gzip" else 15
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(body, MAX_INSPECT)
    except zlib.error:
        if enc != b"deflate":
            return None
        try:  # raw deflate, as some servers send it
            d = zlib.decompressobj(-15)
            out = d.decompress(body, MAX_INSPECT)
        except zlib.error:
            return None
    return out


def inspect_response(guard: Guard, body: bytes, complete: bool, content_type: bytes | None,
                     encoding: bytes | None) -> ResponseVerdict:
    if not is_text(content_type):
        return ResponseVerdict()
    plain = decode_body(body, encoding)
    if plain is None:
        return ResponseVerdict(checks=0, note="response not inspectable (encoding)")
    result = score_injection(_text(plain))
    v = ResponseVerdict(score=result.score, signals=tuple(result.signals), checks=1)
    if not complete:
        v.note = f"judged by its first {MAX_INSPECT} bytes"
    if result.score >= guard.threshold and guard.injection_action == "block":
        v.block = True
    return v


def audit_body(data: bytes | None) -> str | None:
    if data is None:
        return None
    return _text(data[:MAX_AUDIT_BODY])


def readable_accept_encoding(value: bytes) -> bytes:
    """Accept-Encoding without the codings the proxy cannot read."""
    keep = [t.strip() for t in value.split(b",")
            if t.strip().split(b";")[0].strip().lower() in READABLE_ENCODINGS]
    return b", ".join(keep) or b"identity"

"""Reading what a new connection asks for from its first bytes, without
consuming them: the TLS ClientHello's server name (SNI) and ALPN, or an
HTTP/1 request's method, target and Host, or an HTTP/2 cleartext preface.
Pure functions over a byte prefix."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024
# Any method token, not only the common ones: an unknown method is still a
# request with a Host that must be checked.
_METHOD_RE = re.compile(rb"[A-Z][A-Z-]{0,19} ")
_PARTIAL_METHOD_RE = re.compile(rb"[A-Z][A-Z-]{0,19}")


class Kind(StrEnum):
    TLS = "tls"
    HTTP = "http"
    H2C = "h2c"
    OTHER = "other"


@dataclass(frozen=True)
class Sniffed:
    kind: Kind
    # TLS: SNI; HTTP: the Host header (or the authority of an absolute target).
    host: str | None = None
    alpn: tuple[str, ...] = ()
    method: str | None = None
    target: str | None = None
    # HTTP: Host and the target's authority disagree, or Host appears twice.
    ambiguous: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class NeedMore(Exception):
    """The prefix is a valid start but incomplete; `want` bytes would do."""

    def __init__(self, want: int) -> None:
        super().__init__(want)
        self.want = want


def sniff(data: bytes) -> Sniffed:
    """Classify the connection from its first bytes. Raises NeedMore while a
    ClientHello or request head is incomplete."""
    if not data:
        raise NeedMore(1)
    if data[0] == 0x16:
        return parse_client_hello(data)
    if H2_PREFACE.startswith(data[: len(H2_PREFACE)]):
        if len(data) < len(H2_PREFACE):
            raise NeedMore(len(H2_PREFACE))
        return Sniffed(Kind.H2C)
    if _METHOD_RE.match(data):
        return parse_http_head(data)
    if _PARTIAL_METHOD_RE.fullmatch(data):
        raise NeedMore(len(data) + 1)
    return Sniffed(Kind.OTHER)


def parse_client_hello(data: bytes) -> Sniffed:
    if len(data) < 5:
        raise NeedMore(5)
    ctype, _ver, rlen = struct.unpack_from("!BHH", data)
    if ctype != 0x16 or rlen < 4:
        return Sniffed(Kind.OTHER)
    if len(data) < 5 + rlen:
        raise NeedMore(5 + rlen)
    body = data[5 : 5 + rlen]
    if body[0] != 0x01:
        return Sniffed(Kind.OTHER)
    hlen = int.from_bytes(body[1:4], "big")
    if hlen + 4 > len(body):
        # A ClientHello over several records: rare, and not read here; the
        # caller treats it as carrying no name.
        return Sniffed(Kind.TLS)
    try:
        return _hello(body[4 : 4 + hlen])
    except (IndexError, struct.error, UnicodeDecodeError):
        return Sniffed(Kind.OTHER)


def _hello(h: bytes) -> Sniffed:
    off = 2 + 32  # version, random
    sid = h[off]
    off += 1 + sid
    (cs_len,) = struct.unpack_from("!H", h, off)
    off += 2 + cs_len
    comp = h[off]
    off += 1 + comp
    if off == len(h):
        return Sniffed(Kind.TLS)
    (ext_len,) = struct.unpack_from("!H", h, off)
    off += 2
    end = off + ext_len
    if end > len(h):
        raise IndexError("extensions run past the hello")
    host: str | None = None
    alpn: list[str] = []
    names_seen = 0
    while off + 4 <= end:
        etype, elen = struct.unpack_from("!HH", h, off)
        off += 4
        ext = h[off : off + elen]
        off += elen
        if etype == 0:  # server_name
            (list_len,) = struct.unpack_from("!H", ext)
            p = 2
            while p < 2 + list_len:
                ntype = ext[p]
                (nlen,) = struct.unpack_from("!H", ext, p + 1)
                name = ext[p + 3 : p + 3 + nlen]
                p += 3 + nlen
                if ntype == 0:
                    names_seen += 1
                    host = name.decode("ascii")
        elif etype == 16:  # ALPN
            (list_len,) = struct.unpack_from("!H", ext)
            p = 2
            while p < 2 + list_len:
                n = ext[p]
                alpn.append(ext[p + 1 : p + 1 + n].decode("ascii", "replace"))
                p += 1 + n
    # Two host names in one hello: which one would the server use? Refuse
    # to guess.
    return Sniffed(Kind.TLS, host=host, alpn=tuple(alpn), ambiguous=names_seen > 1)


def parse_http_head(data: bytes) -> Sniffed:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= MAX_HEAD:
            return Sniffed(Kind.OTHER)
        raise NeedMore(len(data) + 1)
    lines = data[:end].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        return Sniffed(Kind.OTHER)
    if not version.startswith("HTTP/1."):
        return Sniffed(Kind.OTHER)
    headers: dict[str, str] = {}
    hosts: list[str] = []
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or name != name.strip():
            return Sniffed(Kind.OTHER)
        key = name.lower()
        if key == "host":
            hosts.append(value.strip())
        headers[key] = value.strip()
    host = hosts[0] if hosts else None
    ambiguous = len(hosts) > 1
    authority = target_authority(target)
    if authority is not None:
        if host is not None and strip_port(host).lower() != strip_port(authority).lower():
            ambiguous = True
        host = host or authority
    return Sniffed(Kind.HTTP, host=strip_port(host) if host else None, method=method,
                   target=target, ambiguous=ambiguous, headers=headers)


def target_authority(target: str) -> str | None:
    """The authority of an absolute-form (`http://h/p`) or authority-form
    (`h:443`, CONNECT) request target."""
    lower = target.lower()
    for scheme in ("http://", "https://", "ws://", "wss://"):
        if lower.startswith(scheme):
            rest = target[len(scheme) :]
            auth = rest.split("/", 1)[0].split("?", 1)[0]
            return auth.rsplit("@", 1)[-1]
    if not target.startswith("/") and target != "*":
        return target
    return None


def strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

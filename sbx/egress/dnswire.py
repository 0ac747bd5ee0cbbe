"""The few parts of the DNS wire format (RFC 1035) the resolver needs:
read a query's question, build refusals and empty answers locally, and
read the A records of an upstream answer. Pure; malformed input raises
DnsFormatError and is never forwarded."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

QTYPE_A = 1
QTYPE_CNAME = 5
QTYPE_AAAA = 28
QTYPE_ANY = 255
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5

_HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    # Where the question ends: additional records (EDNS) follow.
    end: int

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)


def _read_name(msg: bytes, off: int, depth: int = 0) -> tuple[str, int]:
    """A possibly compressed name at off; answers (name, offset after it)."""
    labels: list[str] = []
    jumped_end: int | None = None
    hops = 0
    while True:
        if off >= len(msg):
            raise DnsFormatError("name runs past the message")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsFormatError("truncated pointer")
            hops += 1
            if hops > 32:
                raise DnsFormatError("pointer loop")
            ptr = ((n & 0x3F) << 8) | msg[off + 1]
            if jumped_end is None:
                jumped_end = off + 2
            if ptr >= off:
                raise DnsFormatError("forward pointer")
            off = ptr
            continue
        if n & 0xC0:
            raise DnsFormatError("bad label type")
        off += 1
        if n == 0:
            break
        if off + n > len(msg):
            raise DnsFormatError("label runs past the message")
        raw = msg[off : off + n]
        try:
            label = raw.decode("ascii")
        except UnicodeDecodeError:
            raise DnsFormatError("non-ASCII label") from None
        labels.append(label)
        off += n
    name = ".".join(labels).lower()
    if len(name) > 253:
        raise DnsFormatError("name too long")
    return name, (jumped_end if jumped_end is not None else off)


def parse_query(msg: bytes) -> Question:
    if len(msg) < _HEADER.size:
        raise DnsFormatError("short message")
    qid, flags, qd, _an, _ns, _ar = _HEADER.unpack_from(msg)
    if flags & 0x8000:
        raise DnsFormatError("not a query")
    if (flags >> 11) & 0xF != 0:
        raise DnsFormatError("unsupported opcode")
    if qd != 1:
        raise DnsFormatError("exactly one question expected")
    name, off = _read_name(msg, _HEADER.size)
    if off + 4 > len(msg):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", msg, off)
    return Question(qid, flags, name, qtype, qclass, off + 4)


def response_header_id(msg: bytes) -> int:
    if len(msg) < _HEADER.size:
        raise DnsFormatError("short message")
    return int(struct.unpack_from("!H", msg)[0])


def local_answer(query: bytes, q: Question, rcode: int) -> bytes:
    """An answer made here: the question echoed, no records, the given rcode
    (NXDOMAIN for a refused name, NOERROR for an empty AAAA answer)."""
    # QR, opcode 0, RD copied, RA set.
    flags = 0x8000 | (q.flags & 0x0100) | 0x0080 | (rcode & 0xF)
    header = _HEADER.pack(q.id, flags, 1, 0, 0, 0)
    return header + query[_HEADER.size : q.end]


def format_error(query: bytes) -> bytes | None:
    if len(query) < 2:
        return None
    qid = struct.unpack_from("!H", query)[0]
    return _HEADER.pack(qid, 0x8000 | RCODE_FORMERR, 0, 0, 0, 0)


def with_id(msg: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + msg[2:]


@dataclass(frozen=True)
class Answer:
    rcode: int
    truncated: bool
    question: str | None
    addresses: frozenset[str]
    # The smallest TTL of the address records (0 when there are none).
    ttl: int


def parse_answer(msg: bytes) -> Answer:
    if len(msg) < _HEADER.size:
        raise DnsFormatError("short message")
    _qid, flags, qd, an, _ns, _ar = _HEADER.unpack_from(msg)
    off = _HEADER.size
    question = None
    for _ in range(qd):
        question, off = _read_name(msg, off)
        off += 4
    addrs: set[str] = set()
    ttl: int | None = None
    for _ in range(an):
        _name, off = _read_name(msg, off)
        if off + 10 > len(msg):
            raise DnsFormatError("truncated record")
        rtype, rclass, rttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        off += 10
        if off + rdlen > len(msg):
            raise DnsFormatError("truncated rdata")
        if rtype == QTYPE_A and rclass == CLASS_IN and rdlen == 4:
            addrs.add(str(ipaddress.IPv4Address(msg[off : off + 4])))
            ttl = rttl if ttl is None else min(ttl, rttl)
        off += rdlen
    return Answer(flags & 0xF, bool(flags & 0x0200), question, frozenset(addrs), ttl or 0)


# -- building messages (the resolver's own upstream lookups, and tests) ------------
def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise DnsFormatError("label too long")
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(qid: int, name: str, qtype: int = QTYPE_A) -> bytes:
    return _HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", qtype, CLASS_IN
    )


def build_a_answer(query: bytes, q: Question, addresses: list[str], ttl: int = 60) -> bytes:
    """A NOERROR answer with A records (used by the tests' fake internet)."""
    flags = 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080
    header = _HEADER.pack(q.id, flags, 1, len(addresses), 0, 0)
    records = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", QTYPE_A, CLASS_IN, ttl, 4)
        + ipaddress.IPv4Address(a).packed
        for a in addresses
    )
    return header + query[_HEADER.size : q.end] + records

"""The kernel's packet log (NFLOG over netlink) turned into audit events.

Decisions made by nftables alone (a refused address, an allowed direct
connection on another port, UDP, ICMP) never reach a process of ours; the
firewall's rules log them to an NFLOG group with a prefix that names the
decision and the rule ("sbx a cidr:10.0.0.0/8"), and this reader turns
each into an audit event. The sandbox is known by the packet's input
interface (its veth), which it cannot forge, unlike its source address.
The log rules are rate limited in the kernel, so a flood cannot swamp
this reader."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable

from sbx.shared.audit import AuditEvent, AuditSink

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
PREFIX = "sbx"
_PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def _config(group: int, attrs: list[bytes], seq: int) -> bytes:
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + b"".join(attrs)
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_prefix(text: str) -> tuple[str, str] | None:
    """(decision, rule) of a prefix the firewall wrote: "sbx <a|d> <rule>"."""
    parts = text.strip().split(" ")
    if len(parts) != 3 or parts[0] != PREFIX or parts[1] not in ("a", "d"):
        return None
    return ("allow" if parts[1] == "a" else "deny"), parts[2]


def parse_packet(payload: bytes) -> tuple[str, str, int | None] | None:
    """(protocol, destination address, destination port) of an IPv4 packet."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    dst = str(ipaddress.IPv4Address(payload[16:20]))
    port: int | None = None
    if proto in (6, 17) and len(payload) >= ihl + 4:
        port = struct.unpack_from("!H", payload, ihl + 2)[0]
    return _PROTOS.get(proto, f"ip{proto}"), dst, port


def parse_messages(data: bytes) -> list[tuple[str, bytes, int]]:
    """(prefix, payload, input interface index) of every packet message in
    one netlink read."""
    out: list[tuple[str, bytes, int]] = []
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("IHHII", data, off)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            p = off + 16 + 4
            text, payload, indev = "", b"", 0
            while p + 4 <= off + length:
                alen, atype = struct.unpack_from("HH", data, p)
                if alen < 4:
                    break
                value = data[p + 4 : p + alen]
                atype &= 0x7FFF
                if atype == NFULA_PREFIX:
                    text = value.rstrip(b"\0").decode("ascii", "replace")
                elif atype == NFULA_PAYLOAD:
                    payload = value
                elif atype == NFULA_IFINDEX_INDEV and len(value) >= 4:
                    indev = struct.unpack_from("!I", value)[0]
                p += (alen + 3) & ~3
            out.append((text, payload, indev))
        off += (length + 3) & ~3
    return out


def candidate_groups(tag: str) -> list[int]:
    """NFLOG groups are host-wide: each node tries groups derived from its
    tag, so two servers on one host pick different ones."""
    seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:2], "big")
    # Groups above 32767 bind but never receive a packet (measured on this
    # kernel): stay well below.
    return [1000 + (seed + i * 7919) % 30000 for i in range(16)]


class NflogReader:
    def __init__(self, audit: AuditSink, sandbox_of: Callable[[int], str | None]) -> None:
        # sandbox_of: an interface index -> the sandbox ID behind it.
        self.audit = audit
        self.sandbox_of = sandbox_of
        self.group: int | None = None
        self._sock: socket.socket | None = None

    def bind(self, groups: list[int]) -> int | None:
        """Bind the first free group; None when the kernel has no NFLOG."""
        for group in groups:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            try:
                sock.bind((0, 0))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                self._request(sock, _config(group, [
                    _attr(NFULA_CFG_CMD, struct.pack("BBBB", NFULNL_CFG_CMD_BIND, 0, 0, 0)),
                ], 1))
                # Copy only the headers: addresses and ports are all we log.
                self._request(sock, _config(group, [
                    _attr(NFULA_CFG_MODE, struct.pack(">IBB", 64, NFULNL_COPY_PACKET, 0) + b"\0\0"),
                ], 2))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EBUSY, errno.EPERM, errno.EEXIST):
                    continue
                log.warning("NFLOG unavailable (%s): firewall decisions are not audited", exc)
                return None
            sock.setblocking(False)
            self._sock = sock
            self.group = group
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
            return group
        log.warning("no free NFLOG group: firewall decisions are not audited")
        return None

    @staticmethod
    def _request(sock: socket.socket, msg: bytes) -> None:
        sock.send(msg)
        reply = sock.recv(65536)
        if len(reply) >= 20:
            _len, kind = struct.unpack_from("IH", reply)
            if kind == NLMSG_ERROR:
                code = struct.unpack_from("i", reply, 16)[0]
                if code != 0:
                    raise OSError(-code, os.strerror(-code))

    def _read(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("NFLOG overrun: some firewall decisions were not audited")
                    continue
                return
            for text, payload, indev in parse_messages(data):
                self._event(text, payload, indev)

    def _event(self, text: str, payload: bytes, indev: int) -> None:
        parsed = parse_prefix(text)
        pkt = parse_packet(payload)
        if parsed is None or pkt is None:
            return
        decision, rule = parsed
        sandbox_id = self.sandbox_of(indev)
        if sandbox_id is None:
            return
        proto, ip, port = pkt
        self.audit(AuditEvent(sandbox_id=sandbox_id, protocol=proto, decision=decision,
                              rule=rule, ip=ip, port=port))

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

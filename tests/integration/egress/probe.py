"""Runs inside a sandbox (stdlib only): tries each probe of a JSON list
given on stdin and prints one JSON result per probe. A probe "got through"
when it got an answer from the far side (not a refusal made by sbx)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from typing import Any

TIMEOUT = 4.0


def _tls(sock: socket.socket, sni: str | None, alpn: list[str] | None = None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(sock, server_hostname=sni)


class Reader:
    """Reads responses off one connection, one at a time: the head, then
    a Content-Length body, leaving what follows for the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                break
        if b"\r\n\r\n" not in self.buf:
            return {"ok": False, "error": "closed without an answer",
                    "partial": self.buf[:100].decode("latin-1")}
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return {"ok": False, "error": "not an HTTP answer", "head": text[:300]}
        status = int(parts[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0")) if status != 101 else 0
        while len(self.buf) < length and self._fill():
            pass
        body, self.buf = self.buf[:length], self.buf[length:]
        refused = "x-sbx-egress" in headers
        return {"ok": not refused, "status": status, "refused_by_sbx": refused,
                "head": text[:300], "body": body[:200].decode("latin-1")}


def http(p: dict[str, Any]) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in p["ip"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect((p["ip"], p["port"]))
    s: socket.socket = sock
    if p.get("tls"):
        s = _tls(sock, p.get("sni"), p.get("alpn"))
    results = []
    reader = Reader(s)
    for raw in p["requests"]:
        s.sendall(raw.encode("latin-1"))
        results.append(reader.response())
        if not results[-1].get("ok"):
            break
    s.close()
    last = results[-1]
    # Every request of the probe must have got through for it to count.
    return {**last, "ok": all(r.get("ok") for r in results) and len(results) == len(p["requests"]),
            "answers": len(results)}


def tls(p: dict[str, Any]) -> dict[str, Any]:
    sock = socket.create_connection((p["ip"], p["port"]), timeout=TIMEOUT)
    s = _tls(sock, p.get("sni"), p.get("alpn"))
    s.sendall(p.get("data", "").encode())
    data = s.recv(4096)
    return {"ok": bool(data), "data": data[:100].decode("latin-1")}


def tcp(p: dict[str, Any]) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in p["ip"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect((p["ip"], p["port"]))
    sock.sendall(p.get("data", "x").encode())
    data = sock.recv(4096)
    return {"ok": bool(data), "data": data[:100].decode("latin-1")}


def udp(p: dict[str, Any]) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    sock.connect((p["ip"], p["port"]))
    sock.send(p["data"].encode())
    data = sock.recv(4096)
    return {"ok": bool(data), "data": data[:100].decode("latin-1")}


def icmp(p: dict[str, Any]) -> dict[str, Any]:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    except OSError as e:
        return {"ok": False, "error": f"no ping socket: {e}"}
    sock.settimeout(2.0)
    payload = p["data"].encode()
    sock.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + payload, (p["ip"], 0))
    data = sock.recv(4096)
    return {"ok": bool(data) and data[0] == 0, "data": data[:40].hex()}


def dns(p: dict[str, Any]) -> dict[str, Any]:
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    for label in p["name"].split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", p.get("qtype", 1), 1)
    if p.get("tcp"):
        sock = socket.create_connection((p["server"], p.get("port", 53)), timeout=TIMEOUT)
        sock.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", sock.recv(2))[0]
        reply = sock.recv(n)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2.0)
        sock.connect((p["server"], p.get("port", 53)))
        sock.send(q)
        reply = sock.recv(4096)
    rcode = reply[3] & 0xF
    answers = struct.unpack_from("!H", reply, 6)[0]
    return {"ok": rcode == 0 and answers > 0, "rcode": rcode, "answers": answers}


def spoof(p: dict[str, Any]) -> dict[str, Any]:
    """A UDP packet with a forged source address, through a raw socket."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        return {"ok": False, "error": f"no raw socket: {e}"}
    data = p["data"].encode()
    udp_hdr = struct.pack("!HHHH", 40000, p["port"], 8 + len(data), 0)
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(data), 1, 0, 64, 17, 0,
                         socket.inet_aton(p["src"]), socket.inet_aton(p["ip"]))
    sock.sendto(ip_hdr + udp_hdr + data, (p["ip"], 0))
    return {"ok": False, "sent": True}


def cmd(p: dict[str, Any]) -> dict[str, Any]:
    r = subprocess.run(p["cmd"], shell=True, capture_output=True, text=True, timeout=20)
    out = r.stdout + r.stderr
    ok = r.returncode == 0 and p.get("expect", "") in r.stdout
    return {"ok": ok, "code": r.returncode, "out": out[-300:]}


KINDS = {"http": http, "tls": tls, "tcp": tcp, "udp": udp, "icmp": icmp, "dns": dns,
         "spoof": spoof, "cmd": cmd}


def main() -> None:
    for p in json.loads(sys.stdin.read()):
        t0 = time.monotonic()
        try:
            res = KINDS[p["kind"]](p)
        except Exception as e:
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        res["id"] = p["id"]
        res["elapsed"] = round(time.monotonic() - t0, 3)
        print(json.dumps(res), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
